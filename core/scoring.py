"""The columns of the metric tables and the scoring of one tri-modal case, in the paper or the CDDFuse convention.

Columns: the paper's eight metrics (Table 1 order) and, in the ``all`` suite, seven more from the fusion
literature; each declares whether higher is better (with the paper's arrows) and its label per convention, e.g.
``PSNR (grey, peak 255)``. Formulas and conventions: :mod:`core.fusion_metrics` and ``docs/metrics.md``.

Aggregation over the three sources (:func:`score_case`):

* ``reference="gt"``: full-reference metrics compare the fused image with the ground truth (one reference, so
  nothing is summed in either convention).
* ``reference="sources"``, convention ``paper``: each full-reference metric is the **mean over the three sources**
  of ``metric(fused, source_i)`` (PSNR: the mean of the three PSNRs).
* ``reference="sources"``, convention ``cddfuse``: MSE, PSNR, SSIM and VIF follow CDDFuse's dual-modal definitions
  (:func:`~core.fusion_metrics.mse_pair` etc.: SSIM and VIF **summed** over the two sources, PSNR from their mean
  MSE with peak max(F)) and are averaged over the three source pairs (S1, S2), (S1, S3), (S2, S3). MAE, RMSE and
  LPIPS, which CDDFuse does not define, are the mean over the three sources as in the paper convention.
* Two-source metrics (MI, Qabf, SCD, CC) in both conventions: the mean over the three source pairs of the
  two-source definition, so the values stay on the scale of the dual-modal literature.

:func:`score_folder` scores every case of one method's results folder (``core.results_layout``) into a
:class:`MethodScores`; ``eval.py`` and ``bench.real_scans`` both call it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from tqdm import tqdm

from core.fusion_metrics import Convention, average_gradient, cc, check_convention, entropy, mae, mi_pair, mse, \
    mse_pair, psnr, psnr_pair, qabf, rmse, scd, spatial_frequency, ssim, ssim_pair, standard_deviation, to_grey, \
    viff, viff_pair
from core.lpips import Lpips
from core.results_layout import ImageReader, result_path

Reference = Literal["gt", "sources"]
Suite = Literal["paper", "all"]
MetricKind = Literal["full_reference", "lpips", "no_reference", "source_pairs"]
Grey = np.ndarray
FullReference = Callable[[Grey, Grey], float]
TwoSource = Callable[[Grey, Grey, Grey], float]


@dataclass(frozen=True)
class MetricSpec:
    """One table column: name, direction (as printed in the paper), kind, and its qualifier per convention
    (``cddfuse`` None: the same as ``paper``)."""

    name: str
    higher_is_better: bool
    kind: MetricKind
    paper: str
    cddfuse: str | None = None

    def qualifier(self, convention: Convention) -> str:
        if check_convention(convention) == "cddfuse" and self.cddfuse is not None:
            return self.cddfuse
        return self.paper


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("MSE", False, "full_reference", "grey"),
    MetricSpec("VIF", True, "full_reference", "grey, VIFF", "grey, VIFF, sum over 2 sources"),
    MetricSpec("SSIM", True, "full_reference", "grey, data_range 255", "grey, data_range 2, sum over 2 sources"),
    MetricSpec("PSNR", True, "full_reference", "grey, peak 255", "grey, peak max(F)"),
    MetricSpec("LPIPS", False, "lpips", "RGB, AlexNet"),
    MetricSpec("MAE", False, "full_reference", "grey"),
    MetricSpec("RMSE", False, "full_reference", "grey"),
    MetricSpec("AG", False, "no_reference", "grey"),  # the paper prints AG with a down arrow
    MetricSpec("EN", True, "no_reference", "grey, bits"),
    MetricSpec("SD", True, "no_reference", "grey"),
    MetricSpec("SF", True, "no_reference", "grey"),
    MetricSpec("MI", True, "source_pairs", "grey, nats, sum over 2 sources"),
    MetricSpec("Qabf", True, "source_pairs", "grey", "grey, GAF = gF"),
    MetricSpec("SCD", True, "source_pairs", "grey"),
    MetricSpec("CC", True, "source_pairs", "grey"),
)}
PAPER_METRICS: tuple[str, ...] = ("MSE", "VIF", "SSIM", "PSNR", "LPIPS", "MAE", "RMSE", "AG")  # Table 1 order
ABLATION_METRICS: tuple[str, ...] = ("VIF", "SSIM", "PSNR", "AG", "MSE", "LPIPS", "MAE", "RMSE")  # Table 2 order
EXTRA_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "Qabf", "SCD", "CC")
NO_REFERENCE: dict[str, Callable[[Grey], float]] = {
    "AG": average_gradient, "EN": entropy, "SD": standard_deviation, "SF": spatial_frequency}


def metric_label(name: str, convention: Convention, reference: Reference = "gt") -> str:
    """The column label naming colour space and convention, e.g. ``PSNR (grey, peak 255)``.

    Against the ground truth nothing is summed, so "sum over 2 sources" is left out of full-reference labels.
    """
    spec = METRICS[name]
    qualifier = spec.qualifier(convention)
    if reference == "gt" and spec.kind == "full_reference":
        qualifier = qualifier.replace(", sum over 2 sources", "")
    return f"{name} ({qualifier})"


def metric_names(suite: Suite) -> tuple[str, ...]:
    """The columns of a suite: ``paper`` (the paper's eight) or ``all`` (plus EN, SD, SF, MI, Qabf, SCD, CC)."""
    if suite not in ("paper", "all"):
        raise ValueError(f"unknown metric suite {suite!r}; expected 'paper' or 'all'")
    return PAPER_METRICS + (EXTRA_METRICS if suite == "all" else ())


def full_reference_metrics(convention: Convention) -> dict[str, FullReference]:
    """Full-reference metrics ``(fused, reference) -> value`` of one convention."""
    return {"MSE": mse, "VIF": viff, "SSIM": partial(ssim, convention=convention),
            "PSNR": partial(psnr, convention=convention), "MAE": mae, "RMSE": rmse}


def two_source_metrics(convention: Convention) -> dict[str, TwoSource]:
    """Two-source metrics ``(fused, a, b) -> value`` of one convention (MI, Qabf, SCD, CC)."""
    return {"MI": mi_pair, "Qabf": partial(qabf, convention=convention), "SCD": scd, "CC": cc}


CDDFUSE_PAIR_FORMS: dict[str, TwoSource] = {
    "MSE": mse_pair, "PSNR": partial(psnr_pair, convention="cddfuse"),
    "SSIM": partial(ssim_pair, convention="cddfuse"), "VIF": viff_pair}


def _mean_over_pairs(fn: TwoSource, fused: Grey, sources: list[Grey]) -> float:
    return float(np.mean([fn(fused, a, b) for a, b in itertools.combinations(sources, 2)]))


def score_case(fused: np.ndarray, sources: Sequence[np.ndarray], gt: np.ndarray | None, reference: Reference,
               suite: Suite, lpips_scorer: Lpips | None, convention: Convention = "paper") -> dict[str, float]:
    """All metrics of ``suite`` for one case (see the module docstring for the aggregation over sources).

    Args:
        fused: (H, W, 3) uint8 RGB fused image.
        sources: the three (H, W, 3) uint8 RGB source images (bicubic-upsampled inputs).
        gt: (H, W, 3) uint8 RGB ground truth, needed when ``reference == "gt"``.
        reference: ``"gt"`` or ``"sources"``; which images the full-reference metrics compare with.
        suite: ``"paper"`` or ``"all"``.
        lpips_scorer: the LPIPS network, or None (LPIPS is then NaN, shown as n/a).
        convention: ``"paper"`` or ``"cddfuse"``.

    Returns:
        metric name -> value, in the suite's column order.
    """
    convention = check_convention(convention)
    if len(sources) != 3:
        raise ValueError(f"score_case expects 3 sources, got {len(sources)}")
    if reference == "gt" and gt is None:
        raise ValueError("reference 'gt' needs the ground-truth image")
    refs_rgb = [gt] if reference == "gt" else list(sources)
    fused_grey, refs_grey = to_grey(fused), [to_grey(r) for r in refs_rgb]
    sources_grey = [to_grey(s) for s in sources]
    full_reference, two_source = full_reference_metrics(convention), two_source_metrics(convention)
    pair_forms = CDDFUSE_PAIR_FORMS if convention == "cddfuse" and reference == "sources" else {}
    values: dict[str, float] = {}
    for name in metric_names(suite):
        kind = METRICS[name].kind
        if name in pair_forms:
            values[name] = _mean_over_pairs(pair_forms[name], fused_grey, sources_grey)
        elif kind == "full_reference":
            values[name] = float(np.mean([full_reference[name](fused_grey, r) for r in refs_grey]))
        elif kind == "lpips":
            values[name] = float("nan") if lpips_scorer is None else float(
                np.mean([lpips_scorer(fused, r) for r in refs_rgb]))
        elif kind == "no_reference":
            values[name] = NO_REFERENCE[name](fused_grey)
        else:
            values[name] = _mean_over_pairs(two_source[name], fused_grey, sources_grey)
    return values


class ScoringError(ValueError):
    """The images of a case cannot be scored together: they differ in size (the message names the folder and case)."""


@dataclass(frozen=True)
class MethodScores:
    """Per-case values of one method at one scale: metric -> (N,) array, NaN where a metric is unavailable."""

    method: str
    case_ids: tuple[str, ...]
    values: dict[str, np.ndarray]

    def mean(self, metric: str) -> float:
        v = self.values[metric]
        return float(np.mean(v)) if v.size and not np.any(np.isnan(v)) else float("nan")

    def std(self, metric: str) -> float:
        v = self.values[metric]
        return float(np.std(v)) if v.size and np.all(np.isfinite(v)) else float("nan")

    def select(self, case_ids: Sequence[str]) -> MethodScores:
        """The scores of ``case_ids`` only (each one of this method's cases), in that order."""
        index = [self.case_ids.index(case) for case in case_ids]
        return MethodScores(self.method, tuple(case_ids), {m: v[index] for m, v in self.values.items()})


def score_folder(folder: Path, ids: Sequence[str], reference: Reference, suite: Suite, lpips: Lpips | None,
                 convention: Convention, read: ImageReader, progress: bool = False) -> MethodScores:
    """:func:`score_case` for every case ``ids`` of one method's results folder; the method is the folder's name.

    ``read`` reads one file of the layout (``<id>_fused.png``, ``<id>_src{1,2,3}.png`` and, for ``reference
    "gt"``, ``<id>_hr.png``) as an (H, W, 3) uint8 RGB array; its errors pass through. ScoringError when the images
    of a case differ in size. ``progress`` shows a progress bar.
    """
    rows = []
    for case in tqdm(ids, desc=Path(folder).name, disable=not progress, leave=False):
        fused = read(result_path(folder, case, "fused"))
        sources = [read(result_path(folder, case, f"src{k}")) for k in (1, 2, 3)]
        gt = read(result_path(folder, case, "hr")) if reference == "gt" else None
        shapes = {img.shape for img in [fused, *sources] + ([gt] if gt is not None else [])}
        if len(shapes) != 1:
            raise ScoringError(f"{folder}: the images of case {case} differ in size: {sorted(shapes)}")
        rows.append(score_case(fused, sources, gt, reference, suite, lpips, convention))
    values = {m: np.array([row[m] for row in rows], dtype=np.float64) for m in metric_names(suite)}
    return MethodScores(Path(folder).name, tuple(ids), values)
