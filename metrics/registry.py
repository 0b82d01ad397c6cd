"""The metric registry that validation and `eval.py` both read, the RGB validation metrics, and image conversion.

:data:`METRICS` (a `core.registry.Registry`) maps a metric's name to its :class:`MetricSpec`: the implementation, its
kind (what it compares, see below), whether higher is better, its label qualifier per convention (``PSNR (grey,
peak 255)``), and how many decimals tables and log lines print. It is declared and filled here, beside the RGB
implementations; the grey ones are in :mod:`metrics.fusion`. :func:`metrics.scoring.score_metrics` computes any
selection of them for one case; the selections are eval.py's suites (:mod:`metrics.scoring`) and validation's
:data:`VALIDATION_METRICS`, which `model.evaluation` logs.

Kinds (the image under test first, everywhere):

* ``full_reference``: ``fn(fused, ref[, convention])`` on grey images (:func:`metrics.fusion.to_grey`);
  ``pair_form(fused, a, b[, convention])``, when set, is its CDDFuse dual-modal form (convention ``cddfuse``
  against the sources).
* ``rgb_full_reference``: ``fn(fused, ref)`` on the 8-bit RGB images: :func:`psnr_rgb` (peak 255 over all
  channels) and :func:`ssim_rgb` (scikit-image's ``structural_similarity``, 7x7 uniform window, data_range 255,
  averaged over the three channels), SR3's validation metrics.
* ``no_reference``: ``fn(fused)`` on the grey image; ``source_pairs``: ``fn(fused, a, b[, convention])`` on grey
  images, averaged over the three source pairs; ``lpips``: the AlexNet network (`metrics.lpips`), given at run time.

**Adding a metric**: its function (here or in `metrics.fusion`) and one `METRICS.add` below; then name it in a
selection (`metrics.scoring`'s suites, :data:`VALIDATION_METRICS`). `tests/test_metric_registry.py` runs every entry.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from core.registry import Registry
from metrics.fusion import Convention, average_gradient, cc, check_convention, entropy, mae, mi_pair, mse, \
    mse_pair, psnr, psnr_pair, qabf, rmse, scd, spatial_frequency, ssim, ssim_pair, standard_deviation, to_grey, \
    viff, viff_pair

MetricKind = Literal["full_reference", "rgb_full_reference", "lpips", "no_reference", "source_pairs"]
Reference = Literal["gt", "sources"]
RGB_KINDS: tuple[MetricKind, ...] = ("rgb_full_reference", "lpips")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name`` (its registry key), ``fn`` (None for LPIPS), direction (as printed in the paper), kind,
    its label qualifier per convention (``cddfuse`` None: the same as ``paper``), the CDDFuse dual-modal form, the
    name printed in its label when the key differs (``title``), its unit, and the decimals of tables and log lines."""

    name: str
    fn: Callable[..., float] | None
    higher_is_better: bool
    kind: MetricKind
    paper: str
    cddfuse: str | None = None
    pair_form: Callable[..., float] | None = None
    title: str | None = None
    unit: str = ""
    decimals: int = 3  # in the tables of eval.py
    log_decimals: int = 4  # in the log lines of validation

    def qualifier(self, convention: Convention) -> str:
        if check_convention(convention) == "cddfuse" and self.cddfuse is not None:
            return self.cddfuse
        return self.paper

    def label(self, convention: Convention = "paper", reference: Reference = "gt") -> str:
        """The label naming colour space and convention, e.g. ``PSNR (grey, peak 255)``.

        Against the ground truth nothing is summed, so "sum over 2 sources" is left out of full-reference labels.
        """
        qualifier = self.qualifier(convention)
        if reference == "gt" and self.kind == "full_reference":
            qualifier = qualifier.replace(", sum over 2 sources", "")
        return f"{self.title or self.name} ({qualifier})"

    @property
    def space(self) -> str:
        """The colour space it measures: "RGB" or "grey"."""
        return "RGB" if self.kind in RGB_KINDS else "grey"

    @property
    def field(self) -> str:
        """Its key in validation summaries and TensorBoard tags: name and colour space, e.g. ``psnr_grey``."""
        return f"{(self.title or self.name).lower()}_{self.space.lower()}"

    def log_text(self, value: float) -> str:
        """``<label> <value>[ <unit>]`` as validation logs it (paper convention, against the ground truth)."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label()} {value:.{self.log_decimals}f}{unit}"

    @cached_property
    def _takes_convention(self) -> tuple[bool, bool]:
        def takes(fn: Callable[..., Any] | None) -> bool:
            return fn is not None and "convention" in inspect.signature(fn).parameters
        return takes(self.fn), takes(self.pair_form)

    def __call__(self, *images: np.ndarray, convention: Convention = "paper") -> float:
        """``fn`` on the images (see the kinds in the module docstring), with ``convention`` when it takes one."""
        if self.fn is None:
            raise TypeError(f"metric {self.name} needs its network (metrics.lpips), not a function call")
        return self.fn(*images, convention=convention) if self._takes_convention[0] else self.fn(*images)

    def pair(self, fused: np.ndarray, a: np.ndarray, b: np.ndarray, convention: Convention = "cddfuse") -> float:
        """The CDDFuse dual-modal form on grey images (``pair_form``)."""
        if self.pair_form is None:
            raise TypeError(f"metric {self.name} has no dual-modal form")
        if self._takes_convention[1]:
            return self.pair_form(fused, a, b, convention=convention)
        return self.pair_form(fused, a, b)


METRICS: Registry[MetricSpec] = Registry("metric", lambda spec: spec)  # filled with `add` at the end of this module


def metric_label(name: str, convention: Convention, reference: Reference = "gt") -> str:
    """The label of metric ``name`` naming colour space and convention, e.g. ``PSNR (grey, peak 255)``."""
    return METRICS.get(name).label(convention, reference)


# ----------------------------------------------------------------------------------------------- conversion

def tensor2img(tensor: torch.Tensor, min_max: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(3, H, W) or (H, W) float tensor in `min_max` -> (H, W, 3) or (H, W) uint8 array (rounded, clipped)."""
    low, high = min_max
    x = tensor.detach().float().cpu().clamp(low, high)
    x = (x - low) / (high - low) * 255.0
    arr = x.round().to(torch.uint8).numpy()
    return np.transpose(arr, (1, 2, 0)) if arr.ndim == 3 else arr


# ----------------------------------------------------------------------------------------------- RGB metrics

def _check_rgb(img: np.ndarray, ref: np.ndarray) -> None:
    if img.shape != ref.shape:
        raise ValueError(f"metric inputs differ in shape: {img.shape} vs {ref.shape}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"RGB metrics expect (H, W, 3) images, got shape {img.shape}")
    if img.dtype != np.uint8 or ref.dtype != np.uint8:
        raise TypeError(f"metrics expect uint8 images, got {img.dtype} and {ref.dtype}")


def psnr_rgb(img: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of two (H, W, 3) uint8 RGB images, peak 255, over all channels; `inf` for identical images."""
    _check_rgb(img, ref)
    if np.array_equal(img, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, img, data_range=255))


def ssim_rgb(img: np.ndarray, ref: np.ndarray) -> float:
    """SSIM (scikit-image, data_range 255) of two (H, W, 3) uint8 RGB images, the mean over the channels."""
    _check_rgb(img, ref)
    return float(structural_similarity(ref, img, data_range=255, channel_axis=-1))


def grey_psnr_ssim(img: np.ndarray, ref: np.ndarray, convention: Convention = "paper") -> tuple[float, float]:
    """(PSNR in dB, SSIM) of the grey images of two (H, W, 3) uint8 RGB images, as `eval.py --reference gt` gives.

    Paper convention: "PSNR (grey, peak 255)" and "SSIM (grey, data_range 255)"; see metrics.fusion.
    """
    _check_rgb(img, ref)
    img_grey, ref_grey = to_grey(img), to_grey(ref)
    return psnr(img_grey, ref_grey, convention), ssim(img_grey, ref_grey, convention)


# ----------------------------------------------------------------------------------------------- the registry
# eval.py's metrics in the paper's Table 1 order, then the extra ones of the fusion literature, then SR3's RGB ones.

for _metric in (
    MetricSpec("MSE", mse, False, "full_reference", "grey", pair_form=mse_pair, decimals=2),
    MetricSpec("VIF", viff, True, "full_reference", "grey, VIFF", "grey, VIFF, sum over 2 sources",
               pair_form=viff_pair),
    MetricSpec("SSIM", ssim, True, "full_reference", "grey, data_range 255", "grey, data_range 2, sum over 2 sources",
               pair_form=ssim_pair),
    MetricSpec("PSNR", psnr, True, "full_reference", "grey, peak 255", "grey, peak max(F)", pair_form=psnr_pair,
               unit="dB", decimals=2, log_decimals=2),
    MetricSpec("LPIPS", None, False, "lpips", "RGB, AlexNet"),
    MetricSpec("MAE", mae, False, "full_reference", "grey", decimals=2),
    MetricSpec("RMSE", rmse, False, "full_reference", "grey", decimals=2),
    MetricSpec("AG", average_gradient, False, "no_reference", "grey"),  # the paper prints AG with a down arrow
    MetricSpec("EN", entropy, True, "no_reference", "grey, bits"),
    MetricSpec("SD", standard_deviation, True, "no_reference", "grey"),
    MetricSpec("SF", spatial_frequency, True, "no_reference", "grey"),
    MetricSpec("MI", mi_pair, True, "source_pairs", "grey, nats, sum over 2 sources"),
    MetricSpec("Qabf", qabf, True, "source_pairs", "grey", "grey, GAF = gF"),
    MetricSpec("SCD", scd, True, "source_pairs", "grey"),
    MetricSpec("CC", cc, True, "source_pairs", "grey"),
    MetricSpec("PSNR_RGB", psnr_rgb, True, "rgb_full_reference", "RGB, peak 255", title="PSNR", unit="dB",
               decimals=2, log_decimals=2),
    MetricSpec("SSIM_RGB", ssim_rgb, True, "rgb_full_reference", "RGB, data_range 255", title="SSIM"),
):
    METRICS.add(_metric.name, _metric)

# What validation scores against the ground truth (paper convention), for the model and the bicubic-then-fuse
# baseline: summaries and TensorBoard tags in this order (`MetricSpec.field`), log lines grey before RGB.
VALIDATION_METRICS: tuple[str, ...] = ("PSNR_RGB", "SSIM_RGB", "PSNR", "SSIM")

PSNR_RGB_LABEL = metric_label("PSNR_RGB", "paper")  # "PSNR (RGB, peak 255)"
SSIM_RGB_LABEL = metric_label("SSIM_RGB", "paper")  # "SSIM (RGB, data_range 255)"
PSNR_GREY_LABEL = metric_label("PSNR", "paper")  # "PSNR (grey, peak 255)", the label of grey_psnr_ssim's PSNR
SSIM_GREY_LABEL = metric_label("SSIM", "paper")  # "SSIM (grey, data_range 255)"
