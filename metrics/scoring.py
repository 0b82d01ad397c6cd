"""The columns of the metric tables and the scoring of one tri-modal case, in the paper or the CDDFuse convention.

Columns: the paper's eight metrics (Table 1 order) and, in the ``all`` suite, seven more from the fusion
literature, all entries of the one metric registry :data:`metrics.registry.METRICS` (re-exported here), which validation
reads too: each declares its function, whether higher is better (with the paper's arrows) and its label per
convention, e.g. ``PSNR (grey, peak 255)``. Formulas and conventions: :mod:`metrics.fusion` and
``docs/metrics.md``. :func:`score_metrics` computes any selection of the registry for one case (validation's is
:data:`metrics.registry.VALIDATION_METRICS`); RGB full-reference metrics are aggregated like the grey ones.

Aggregation over the three sources (:func:`score_case`):

* ``reference="gt"``: full-reference metrics compare the fused image with the ground truth (one reference, so
  nothing is summed in either convention).
* ``reference="sources"``, convention ``paper``: each full-reference metric is the **mean over the three sources**
  of ``metric(fused, source_i)`` (PSNR: the mean of the three PSNRs).
* ``reference="sources"``, convention ``cddfuse``: MSE, PSNR, SSIM and VIF follow CDDFuse's dual-modal definitions
  (:func:`~metrics.fusion.mse_pair` etc.: SSIM and VIF **summed** over the two sources, PSNR from their mean
  MSE with peak max(F)) and are averaged over the three source pairs (S1, S2), (S1, S3), (S2, S3). MAE, RMSE and
  LPIPS, which CDDFuse does not define, are the mean over the three sources as in the paper convention.
* Two-source metrics (MI, Qabf, SCD, CC) in both conventions: the mean over the three source pairs of the
  two-source definition, so the values stay on the scale of the dual-modal literature.

:func:`score_folder` scores every case of one method's results folder (``core.results_layout``) into a
:class:`MethodScores`; ``eval.py`` and ``paper.real_scans`` both call it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from tqdm import tqdm

from core.errors import UsageError
from core.results_layout import ImageReader, result_path
from metrics.fusion import Convention, check_convention, to_grey
from metrics.lpips import Lpips
from metrics.registry import METRICS, MetricKind, MetricSpec, Reference, metric_label

__all__ = ["METRICS", "MetricKind", "MetricSpec", "Reference", "metric_label", "Suite", "PAPER_METRICS",
           "ABLATION_METRICS", "EXTRA_METRICS", "metric_names", "score_metrics", "score_case", "ScoringError",
           "MethodScores", "score_folder"]

Suite = Literal["paper", "all"]
Grey = np.ndarray

PAPER_METRICS: tuple[str, ...] = ("MSE", "VIF", "SSIM", "PSNR", "LPIPS", "MAE", "RMSE", "AG")  # Table 1 order
ABLATION_METRICS: tuple[str, ...] = ("VIF", "SSIM", "PSNR", "AG", "MSE", "LPIPS", "MAE", "RMSE")  # Table 2 order
EXTRA_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "Qabf", "SCD", "CC")


def metric_names(suite: Suite) -> tuple[str, ...]:
    """The columns of a suite: ``paper`` (the paper's eight) or ``all`` (plus EN, SD, SF, MI, Qabf, SCD, CC)."""
    if suite not in ("paper", "all"):
        raise ValueError(f"unknown metric suite {suite!r}; expected 'paper' or 'all'")
    return PAPER_METRICS + (EXTRA_METRICS if suite == "all" else ())


def _mean_over_pairs(fn: Callable[[Grey, Grey, Grey], float], fused: Grey, sources: list[Grey]) -> float:
    return float(np.mean([fn(fused, a, b) for a, b in itertools.combinations(sources, 2)]))


def score_metrics(names: Sequence[str], fused: np.ndarray, sources: Sequence[np.ndarray], gt: np.ndarray | None,
                  reference: Reference, lpips_scorer: Lpips | None,
                  convention: Convention = "paper") -> dict[str, float]:
    """The metrics ``names`` of :data:`metrics.registry.METRICS` for one case, aggregated over the references as the
    module docstring says; metric name -> value in the order of ``names``. Arguments as :func:`score_case`."""
    convention = check_convention(convention)
    if reference == "gt" and gt is None:
        raise ValueError("reference 'gt' needs the ground-truth image")
    specs: list[MetricSpec] = [METRICS.get(name) for name in names]
    # against the ground truth, full-reference and no-reference metrics read no source (a single-image SR case has one)
    if len(sources) != 3 and (reference == "sources" or any(spec.kind == "source_pairs" for spec in specs)):
        raise ValueError(f"score_case expects 3 sources, got {len(sources)}")
    refs_rgb = [gt] if reference == "gt" else list(sources)
    fused_grey, refs_grey = to_grey(fused), [to_grey(r) for r in refs_rgb]
    dual_modal = convention == "cddfuse" and reference == "sources"  # CDDFuse's two-source forms
    sources_grey = [to_grey(s) for s in sources] if dual_modal or any(
        spec.kind == "source_pairs" for spec in specs) else []
    values: dict[str, float] = {}
    for spec in specs:
        if dual_modal and spec.pair_form is not None:
            value = _mean_over_pairs(lambda f, a, b, spec=spec: spec.pair(f, a, b, convention), fused_grey,
                                     sources_grey)
        elif spec.kind == "full_reference":
            value = float(np.mean([spec(fused_grey, r, convention=convention) for r in refs_grey]))
        elif spec.kind == "rgb_full_reference":
            value = float(np.mean([spec(fused, r, convention=convention) for r in refs_rgb]))
        elif spec.kind == "lpips":
            value = float("nan") if lpips_scorer is None else float(
                np.mean([lpips_scorer(fused, r) for r in refs_rgb]))
        elif spec.kind == "no_reference":
            value = spec(fused_grey, convention=convention)
        else:
            value = _mean_over_pairs(lambda f, a, b, spec=spec: spec(f, a, b, convention=convention), fused_grey,
                                     sources_grey)
        values[spec.name] = value
    return values


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
    return score_metrics(metric_names(suite), fused, sources, gt, reference, lpips_scorer, convention)


class ScoringError(UsageError):
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
                 convention: Convention, read: ImageReader, progress: bool = False,
                 sources_of: Callable[[str], list[np.ndarray]] | None = None) -> MethodScores:
    """:func:`score_case` for every case ``ids`` of one method's results folder; the method is the folder's name.

    ``read`` reads one file of the layout (``<id>_fused.png``, ``<id>_src{1,2,3}.png`` and, for ``reference
    "gt"``, ``<id>_hr.png``) as an (H, W, 3) uint8 RGB array; its errors pass through. ``sources_of(case id)``, when
    given, returns the three sources of a case instead of the folder's ``<id>_src{1,2,3}.png`` (e.g. the HR sources
    of a test split, ``paper.experiments``). ScoringError when the images of a case differ in size. ``progress``
    shows a progress bar.
    """
    rows = []
    for case in tqdm(ids, desc=Path(folder).name, disable=not progress, leave=False):
        fused = read(result_path(folder, case, "fused"))
        sources = sources_of(case) if sources_of is not None else [read(result_path(folder, case, f"src{k}"))
                                                                   for k in (1, 2, 3)]
        gt = read(result_path(folder, case, "hr")) if reference == "gt" else None
        shapes = {img.shape for img in [fused, *sources] + ([gt] if gt is not None else [])}
        if len(shapes) != 1:
            raise ScoringError(f"{folder}: the images of case {case} differ in size: {sorted(shapes)}")
        rows.append(score_case(fused, sources, gt, reference, suite, lpips, convention))
    values = {m: np.array([row[m] for row in rows], dtype=np.float64) for m in metric_names(suite)}
    return MethodScores(Path(folder).name, tuple(ids), values)
