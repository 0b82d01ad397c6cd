"""The comparison rows of ``paper.experiments --run`` and the scoring that every record of a run shares.

Comparisons (``run_comparisons``), once per scale beside the rows: every bicubic-then-fuse rule of
``data.fusion_rules.FUSION_RULES``, bicubic + each published method of ``--peer`` and, with ``--sr3``, SR3 + each rule
and each of those methods (``sr3+NAME``: ``real_scans.super_resolve`` runs SR3 on the three bicubic inputs of every
case once, timed on its own, then each NAME fuses the cached SR3 images), fused by ``real_scans.fuse_methods`` into
``<out>/<scale>/<method>/``. A comparison whose record is current is left as it is: the record holds exactly the
run's cases, names the same inputs (``--data``, ``--triplets`` and the comparison's own: a published method's weights
folder; SR3's config, checkpoint and sampler) and has its scores against the HR sources and its seconds per image.
Any other is fused, timed and scored again.

Scores (``save_scored``), for the comparisons and the row alike: both metric conventions against the ground truth
(``real_scans.score_all``, eval.py's scoring) and ``paper.records.SOURCE_METRICS`` against the three 256x256 HR
sources of the test split (``{k}_hr_{r}/``, which ``real_scans.build_test_split`` writes) in the CDDFuse convention,
through the same ``metrics.scoring.score_folder`` that ``eval.py --reference sources --suite all --convention
cddfuse`` calls, with the HR sources in place of the bicubic inputs; then the record (``paper.records``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from data.images import read_image
from data.layout import SOURCES, source_hr_dir
from metrics.scoring import MethodScores, score_folder
from model.sr3 import SuperResolver
from paper import real_scans
from paper import records as layout

RGB = np.ndarray  # an (H, W, 3) uint8 RGB image


@dataclass(frozen=True)
class Evaluation:
    """What the records of one --run share: the results root and scale, the cases and their subjects, the test split
    and its HR side (the HR sources), the command, the input folders every record names, and whether to show
    progress."""

    out: Path
    scale: str
    ids: list[str]
    subjects: dict[str, str | None]
    test_root: Path
    r_resolution: int
    command: str
    inputs: dict[str, Any]
    progress: bool


@dataclass(frozen=True)
class Comparison:
    """A comparison method: its fusion function of three uint8 RGB sources and the inputs its record names besides
    the run's (``peer_dir``; ``sr3_config``, ``sr3_checkpoint``, ``sr3_sampler``)."""

    fuse: Callable[[list[RGB]], RGB]
    inputs: dict[str, Any]


def is_current(run: Evaluation, method: str, comparison: Comparison) -> bool:
    """Whether the record of ``method`` holds exactly the run's cases, names the same inputs and has its scores
    against the HR sources and its seconds per image (module docstring)."""
    path = layout.record_path(run.out, run.scale, method)
    if not path.is_file():
        return False
    record = layout.load_record(path)
    expected = run.inputs | comparison.inputs
    return (list(record.scores["paper"].case_ids) == run.ids and record.sources is not None
            and "seconds_per_image" in record.info and {k: record.info.get(k) for k in expected} == expected)


def _fuse(run: Evaluation, stale: dict[str, Comparison], loader: DataLoader,
          resolver: SuperResolver | None) -> dict[str, dict[str, float]]:
    """Fuse the ``stale`` comparisons (for the sequential ones, SR3 ``resolver`` first, once); method -> its timing
    fields."""
    scale_dir = run.out / run.scale
    sequential = {m: c.fuse for m, c in stale.items() if layout.kind_of(m) == "sequential"}
    plain = {m: c.fuse for m, c in stale.items() if m not in sequential}
    timing = {m: {"seconds_per_image": s} for m, s in real_scans.fuse_methods(plain, loader, scale_dir).items()}
    if sequential:
        sr3 = real_scans.super_resolve(resolver, loader, run.progress)
        timing |= {m: {"sr3_seconds_per_case": sr3, "fusion_seconds_per_image": s, "seconds_per_image": sr3 + s}
                   for m, s in real_scans.fuse_methods(sequential, loader, scale_dir).items()}
    return timing


def run_comparisons(run: Evaluation, comparisons: dict[str, Comparison], loader: DataLoader,
                    resolver: SuperResolver | None) -> None:
    """Fuse, time, score and save every comparison whose record is not current (``resolver``: the SR3 model the
    sequential ones share, None without them)."""
    stale = {m: c for m, c in comparisons.items() if not is_current(run, m, c)}
    if stale:
        timing = _fuse(run, stale, loader, resolver)
        folders = {m: layout.method_folder(run.out, run.scale, m) for m in stale}
        save_scored(run, folders, {m: {"command": run.command, **timing[m], **c.inputs} for m, c in stale.items()})


def source_scores(run: Evaluation, folders: dict[str, Path]) -> dict[str, MethodScores]:
    """SOURCE_METRICS of each method folder against the HR sources of the test split, in SOURCE_CONVENTION."""
    def hr_sources(case: str) -> list[RGB]:
        return [read_image(source_hr_dir(run.test_root, k, run.r_resolution) / f"{case}.png") for k in SOURCES]

    result = {}
    for method, folder in folders.items():
        scores = score_folder(folder, run.ids, "sources", "all", None, layout.SOURCE_CONVENTION, read_image,
                              run.progress, sources_of=hr_sources)
        result[method] = MethodScores(method, scores.case_ids, {m: scores.values[m] for m in layout.SOURCE_METRICS})
    return result


def save_scored(run: Evaluation, folders: dict[str, Path], info: dict[str, dict[str, Any]]) -> None:
    """Score each method folder (module docstring) and save its record with ``info[method]``, the run's inputs and
    why LPIPS is n/a."""
    scores, lpips_missing = real_scans.score_all(folders, run.ids, run.progress)
    sources = source_scores(run, folders)
    for i, method in enumerate(folders):
        per_convention = {convention: methods[i] for convention, methods in scores.items()}
        layout.save_record(run.out, run.scale, method, layout.kind_of(method), per_convention, run.subjects,
                           info[method] | run.inputs | {"lpips": lpips_missing}, sources[method])
