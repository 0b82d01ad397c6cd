"""The image-fusion metrics of the TFS-Diff tables, as pure functions, and the scoring of one fused case.

Conventions (those of the CDDFuse evaluator, which many fusion papers use):

* Every metric except LPIPS works on a **grey** float64 image with values 0..255: an 8-bit RGB image is converted
  with OpenCV's ``COLOR_RGB2GRAY`` applied to the float32 image (``0.299 R + 0.587 G + 0.114 B``) and rounded
  (``numpy.round``); see :func:`to_grey`. LPIPS works on the RGB image.
* Full-reference metrics take ``(ref, img)``: MSE, MAE, RMSE, PSNR (peak 255), SSIM (scikit-image
  ``structural_similarity``, data_range 255, 7x7 uniform window), VIFF (the fusion VIF of Han et al. 2013,
  ``viff(ref=source, dist=fused)``, 4 scales, sigma_n^2 = 2), LPIPS (AlexNet, v0.1).
* No-reference metrics take the fused image: AG (central differences, one-sided at the borders,
  ``mean(sqrt((Gx^2 + Gy^2) / 2))``), EN (Shannon entropy in bits of the 256-bin histogram), SD (population
  standard deviation), SF (``sqrt(mean(dx^2) + mean(dy^2))`` of forward differences).
* Two-source metrics take ``(a, b, fused)`` as in the two-modal literature: MI (``MI(F, A) + MI(F, B)``, in nats,
  256x256-bin joint histogram of the integer grey levels), Qabf (Xydeas-Petrovic, Sobel edges), SCD (sum of the
  correlations of differences), CC (mean correlation coefficient).

Tri-modal aggregation (:func:`score_case`):

* ``reference="gt"``: full-reference metrics against the ground-truth fused image.
* ``reference="sources"``: full-reference metrics are the **mean over the three sources** of
  ``metric(source_i, fused)`` (PSNR: mean of the three PSNRs).
* Two-source metrics are always computed against the sources: the **mean over the three source pairs** (S1, S2),
  (S1, S3), (S2, S3) of the two-source definition, so the values stay on the scale of the two-modal literature.
"""
from __future__ import annotations

import itertools
import math
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import cv2
import numpy as np
import torch
from scipy.ndimage import correlate1d
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

Reference = Literal["gt", "sources"]
Suite = Literal["paper", "all"]
PEAK = 255.0
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


# ----------------------------------------------------------------------------------------------- conversion

def to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) grey image, values 0..255 -> (H, W) float64 grey, rounded to integer levels."""
    if img.ndim == 2:
        return np.round(img.astype(np.float64))
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"to_grey expects an (H, W) or (H, W, 3) image, got shape {img.shape}")
    grey = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.round(grey).astype(np.float64)


def _pair(ref: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if ref.shape != img.shape or ref.ndim != 2:
        raise ValueError(f"metric inputs must be two (H, W) images of one shape, got {ref.shape} and {img.shape}")
    return ref.astype(np.float64), img.astype(np.float64)


# ----------------------------------------------------------------------------------------------- full reference

def mse(ref: np.ndarray, img: np.ndarray) -> float:
    """Mean squared error of two (H, W) grey images."""
    ref, img = _pair(ref, img)
    return float(np.mean((ref - img) ** 2))


def mae(ref: np.ndarray, img: np.ndarray) -> float:
    """Mean absolute error of two (H, W) grey images."""
    ref, img = _pair(ref, img)
    return float(np.mean(np.abs(ref - img)))


def rmse(ref: np.ndarray, img: np.ndarray) -> float:
    """Root mean squared error of two (H, W) grey images."""
    return math.sqrt(mse(ref, img))


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    """PSNR in dB with peak 255; ``inf`` for identical images."""
    error = mse(ref, img)
    return float("inf") if error == 0 else 10.0 * math.log10(PEAK**2 / error)


def ssim(ref: np.ndarray, img: np.ndarray) -> float:
    """scikit-image SSIM (7x7 uniform window, data_range 255) of two (H, W) grey images."""
    ref, img = _pair(ref, img)
    return float(structural_similarity(ref, img, data_range=PEAK))


def _gaussian_taps(size: int) -> np.ndarray:
    """1-D taps of MATLAB's fspecial('gaussian', size, size / 5); their outer product is the 2-D window.

    MATLAB zeroes 2-D entries below eps * max; for the sizes used here (3..17) none is, so the window is separable.
    """
    half = (size - 1) / 2.0
    x = np.arange(-half, half + 1)
    taps = np.exp(-(x * x) / (2.0 * (size / 5.0) ** 2))
    return taps / taps.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the 'valid' part (no border effects): (H, W) -> (H-n+1, W-n+1)."""
    k = len(taps) // 2
    out = correlate1d(correlate1d(img, taps, axis=0, mode="nearest"), taps, axis=1, mode="nearest")
    return out[k:out.shape[0] - k, k:out.shape[1] - k]


def _viff_scale_terms(ref: np.ndarray, dist: np.ndarray, taps: np.ndarray) -> tuple[float, float]:
    """(information kept, information in the reference) at one scale of VIFF, sigma_n^2 = 2."""
    noise, eps = 2.0, 1e-10

    def local_mean(x: np.ndarray) -> np.ndarray:
        return _filter_valid(x, taps)

    mu_r, mu_d = local_mean(ref), local_mean(dist)
    var_r = np.maximum(local_mean(ref * ref) - mu_r * mu_r, 0.0)
    var_d = np.maximum(local_mean(dist * dist) - mu_d * mu_d, 0.0)
    cov = local_mean(ref * dist) - mu_r * mu_d
    gain = cov / (var_r + eps)
    var_v = var_d - gain * cov
    flat_ref = var_r < eps
    gain[flat_ref], var_v[flat_ref], var_r[flat_ref] = 0.0, var_d[flat_ref], 0.0
    flat_dist = var_d < eps
    gain[flat_dist], var_v[flat_dist] = 0.0, 0.0
    negative = gain < 0
    var_v[negative], gain[negative] = var_d[negative], 0.0
    var_v = np.maximum(var_v, eps)
    kept = float(np.sum(np.log10(1.0 + gain * gain * var_r / (var_v + noise))))
    total = float(np.sum(np.log10(1.0 + var_r / noise)))
    return kept, total


def viff(ref: np.ndarray, dist: np.ndarray) -> float:
    """Fusion VIF (Han et al. 2013) of ``dist`` (the fused image) w.r.t. ``ref`` (a source), 4 scales.

    Scale s (1..4) uses a Gaussian window of side 2**(5 - s) + 1, sigma = side / 5; from scale 2 on both images
    are low-passed with that window ('valid') and subsampled by 2. Returns 1.0 when undefined (0 / 0).
    """
    ref, dist = _pair(ref, dist)
    kept = total = 0.0
    for scale in range(1, 5):
        taps = _gaussian_taps(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = _filter_valid(ref, taps)[::2, ::2]
            dist = _filter_valid(dist, taps)[::2, ::2]
        k, t = _viff_scale_terms(ref, dist, taps)
        kept, total = kept + k, total + t
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.float64(kept) / np.float64(total)
    return 1.0 if math.isnan(value) else float(value)


# ----------------------------------------------------------------------------------------------- no reference

def _single(img: np.ndarray) -> np.ndarray:
    if img.ndim != 2:
        raise ValueError(f"metric input must be an (H, W) grey image, got shape {img.shape}")
    return img.astype(np.float64)


def average_gradient(img: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), central differences inside, one-sided differences at the borders."""
    img = _single(img)
    gx, gy = np.gradient(img, axis=1), np.gradient(img, axis=0)
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2.0)))


def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of the rounded grey levels."""
    levels = np.clip(np.round(_single(img)), 0, 255).astype(np.int64).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def standard_deviation(img: np.ndarray) -> float:
    """SD: population standard deviation of the grey levels."""
    return float(np.std(_single(img)))


def spatial_frequency(img: np.ndarray) -> float:
    """SF: sqrt(mean(row differences^2) + mean(column differences^2)), forward differences."""
    img = _single(img)
    return float(np.sqrt(np.mean(np.diff(img, axis=1) ** 2) + np.mean(np.diff(img, axis=0) ** 2)))


# ----------------------------------------------------------------------------------------------- two sources

def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """MI(a, b) in nats from the 256x256-bin joint histogram of the rounded grey levels."""
    a, b = _pair(a, b)
    ia = np.clip(np.round(a), 0, 255).astype(np.int64).ravel()
    ib = np.clip(np.round(b), 0, 255).astype(np.int64).ravel()
    joint = np.bincount(ia * 256 + ib, minlength=256 * 256).reshape(256, 256) / ia.size
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])))


def mi_pair(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Two-source MI: MI(F, A) + MI(F, B), nats."""
    return mutual_information(fused, a) + mutual_information(fused, b)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edge strength, edge orientation) with 3x3 Sobel kernels and zero padding; orientation pi/2 where Gx = 0."""
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    gx, gy = convolve2d(img, kx, mode="same"), convolve2d(img, ky, mode="same")
    strength = np.sqrt(gx * gx + gy * gy)
    angle = np.full_like(img, math.pi / 2)
    nonzero = gx != 0
    angle[nonzero] = np.arctan(gy[nonzero] / gx[nonzero])
    return strength, angle


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Q^{AF} per pixel (Tg 0.9994, kg -15, Dg 0.5; Ta 0.9879, ka -22, Da 0.8).

    Relative strength min(gA, gF) / max(gA, gF); 1 where both are equal and non-zero, 0 where both are 0. (The
    CDDFuse evaluator puts gF itself where gA == gF; both saturate the sigmoid, the values differ below 1e-6.)
    """
    low, high = np.minimum(g_src, g_f), np.maximum(g_src, g_f)
    rel = np.divide(low, high, out=np.zeros_like(high), where=high > 0)
    rel_angle = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (rel - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (rel_angle - 0.8)))
    return q_g * q_a


def qabf(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Q^{AB/F}: edge preservation of A and B in F, weighted by the source edge strengths."""
    a, fused = _pair(a, fused)
    b, _ = _pair(b, fused)
    (g_a, t_a), (g_b, t_b), (g_f, t_f) = _sobel(a), _sobel(b), _sobel(fused)
    num = np.sum(_edge_preservation(g_a, t_a, g_f, t_f) * g_a + _edge_preservation(g_b, t_b, g_f, t_f) * g_b)
    return float(num / np.sum(g_a + g_b))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either image is constant (the CDDFuse evaluator gives NaN there)."""
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / norm) if norm > 0 else 0.0


def scd(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Sum of the correlations of differences: corr(A, F - B) + corr(B, F - A)."""
    a, fused = _pair(a, fused)
    b, _ = _pair(b, fused)
    return _corr(a, fused - b) + _corr(b, fused - a)


def cc(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Mean correlation coefficient (corr(A, F) + corr(B, F)) / 2."""
    a, fused = _pair(a, fused)
    b, _ = _pair(b, fused)
    return (_corr(a, fused) + _corr(b, fused)) / 2.0


# ----------------------------------------------------------------------------------------------- LPIPS

def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights LPIPS needs: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


class Lpips:
    """LPIPS v0.1 (AlexNet) built from local files only: the AlexNet backbone from ``weights`` (torchvision's
    checkpoint file), the linear layers from inside the ``lpips`` wheel. Nothing is downloaded."""

    def __init__(self, weights: Path) -> None:
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        self._load_backbone(weights)
        self.model.eval()

    def _load_backbone(self, weights: Path) -> None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise ValueError(f"cannot read the AlexNet weights {weights}: {err}") from err
        mapped = {}
        for name in self.model.net.state_dict():
            _, index, param = name.split(".")
            key = f"features.{index}.{param}"
            if key not in state:
                raise ValueError(f"{weights} is not torchvision's AlexNet checkpoint: it has no {key!r}")
            mapped[name] = state[key]
        self.model.net.load_state_dict(mapped, strict=True)

    @staticmethod
    def _tensor(img: np.ndarray) -> torch.Tensor:
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0

    @torch.no_grad()
    def __call__(self, ref: np.ndarray, img: np.ndarray) -> float:
        """LPIPS distance of two (H, W, 3) RGB (or (H, W) grey) 8-bit images; lower is more similar."""
        if ref.shape != img.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {ref.shape} vs {img.shape}")
        return float(self.model(self._tensor(ref), self._tensor(img)).item())


def load_lpips() -> Lpips | None:
    """The LPIPS scorer, or None when the AlexNet weights are not at :func:`alexnet_weights_path`."""
    path = alexnet_weights_path()
    return Lpips(path) if path.is_file() else None


# ----------------------------------------------------------------------------------------------- the tables' metrics

MetricKind = Literal["full_reference", "lpips", "no_reference", "source_pairs"]


@dataclass(frozen=True)
class MetricSpec:
    """One table column: name, direction (as printed in the paper) and how it is computed."""

    name: str
    higher_is_better: bool
    kind: MetricKind
    fn: Callable[..., float] | None


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("MSE", False, "full_reference", mse),
    MetricSpec("VIF", True, "full_reference", viff),
    MetricSpec("SSIM", True, "full_reference", ssim),
    MetricSpec("PSNR", True, "full_reference", psnr),
    MetricSpec("LPIPS", False, "lpips", None),
    MetricSpec("MAE", False, "full_reference", mae),
    MetricSpec("RMSE", False, "full_reference", rmse),
    MetricSpec("AG", False, "no_reference", average_gradient),  # the paper prints AG with a down arrow
    MetricSpec("EN", True, "no_reference", entropy),
    MetricSpec("SD", True, "no_reference", standard_deviation),
    MetricSpec("SF", True, "no_reference", spatial_frequency),
    MetricSpec("MI", True, "source_pairs", mi_pair),
    MetricSpec("Qabf", True, "source_pairs", qabf),
    MetricSpec("SCD", True, "source_pairs", scd),
    MetricSpec("CC", True, "source_pairs", cc),
)}
PAPER_METRICS: tuple[str, ...] = ("MSE", "VIF", "SSIM", "PSNR", "LPIPS", "MAE", "RMSE", "AG")  # Table 1 order
ABLATION_METRICS: tuple[str, ...] = ("VIF", "SSIM", "PSNR", "AG", "MSE", "LPIPS", "MAE", "RMSE")  # Table 2 order
EXTRA_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "Qabf", "SCD", "CC")


def metric_names(suite: Suite) -> tuple[str, ...]:
    """The columns of a suite: ``paper`` (the paper's eight) or ``all`` (plus EN, SD, SF, MI, Qabf, SCD, CC)."""
    if suite not in ("paper", "all"):
        raise ValueError(f"unknown metric suite {suite!r}; expected 'paper' or 'all'")
    return PAPER_METRICS + (EXTRA_METRICS if suite == "all" else ())


def score_case(fused: np.ndarray, sources: Sequence[np.ndarray], gt: np.ndarray | None, reference: Reference,
               suite: Suite, lpips_scorer: Lpips | None) -> dict[str, float]:
    """All metrics of ``suite`` for one case (see the module docstring for the aggregation over sources).

    Args:
        fused: (H, W, 3) uint8 RGB fused image.
        sources: the three (H, W, 3) uint8 RGB source images (bicubic-upsampled inputs).
        gt: (H, W, 3) uint8 RGB ground truth, needed when ``reference == "gt"``.
        reference: ``"gt"`` or ``"sources"``; which images the full-reference metrics compare with.
        suite: ``"paper"`` or ``"all"``.
        lpips_scorer: the LPIPS network, or None (LPIPS is then NaN, shown as n/a).

    Returns:
        metric name -> value, in the suite's column order.
    """
    if len(sources) != 3:
        raise ValueError(f"score_case expects 3 sources, got {len(sources)}")
    if reference == "gt" and gt is None:
        raise ValueError("reference 'gt' needs the ground-truth image")
    refs_rgb = [gt] if reference == "gt" else list(sources)
    fused_grey, refs_grey = to_grey(fused), [to_grey(r) for r in refs_rgb]
    sources_grey = [to_grey(s) for s in sources]
    values: dict[str, float] = {}
    for name in metric_names(suite):
        spec = METRICS[name]
        if spec.kind == "full_reference":
            values[name] = float(np.mean([spec.fn(r, fused_grey) for r in refs_grey]))
        elif spec.kind == "lpips":
            values[name] = float("nan") if lpips_scorer is None else float(
                np.mean([lpips_scorer(r, fused) for r in refs_rgb]))
        elif spec.kind == "no_reference":
            values[name] = spec.fn(fused_grey)
        else:
            values[name] = float(np.mean([spec.fn(a, b, fused_grey)
                                          for a, b in itertools.combinations(sources_grey, 2)]))
    return values
