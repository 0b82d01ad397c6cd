"""The one evaluation path: fuse a data split with a `Fuser`, save images by case id, score against ground truth.

`evaluate_model` is called by validation during training, by `sr.py -p val`, by `infer.py` (splits) and by the
benchmarks; none of them repeats its setup. It fuses with `model.fuser.Fuser.fuse` (the val noise schedule, the
configured sampler or the one passed in, the sampling weights, the residual parametrisation: all the fuser's), one
loader batch at a time, with one generator seeded with the config's `seed` for the whole split (the global RNG is
not touched). For every case it keeps the fused uint8 image and, with `out_dir`, writes the results layout of
`core.results_layout` (`<case>_fused.png`, `<case>_src{1,2,3}.png`, `<case>_hr.png` when the split has a ground
truth, `<case>_process.png` on request). Next to the model it scores the bicubic-then-fuse baseline, the ground-truth
fusion rule applied to the same bicubic-upsampled inputs, so every number has an honest reference.

An SR3 model (`model.task: "sr3"`, batches of `data.sr_dataset.SRBatch`) goes the same path: its cases have one
source (`<case>_src1.png`, the bicubic-upsampled image), `<case>_fused.png` is the super-resolved image and the
baseline is the bicubic image itself.

The scores are the metrics of `metrics.registry.VALIDATION_METRICS`, entries of the metric registry that `eval.py` reads
too, computed by `metrics.scoring.score_metrics` against the ground truth in the paper convention; log lines name each
with its label (`MetricSpec.log_text`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from core.config import SamplerConfig
from core.registry import FUSION_METHODS
from core.results_layout import write_case
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from data.sr_dataset import SRBatch
from metrics.registry import METRICS, VALIDATION_METRICS, MetricSpec, tensor2img
from metrics.scoring import score_metrics
from model.fuser import Fuser, case_sources
from model.model import TFSDiffModel

BASELINE_RULE = "laplacian_ycbcr"
BASELINE = "baseline_"  # the prefix of the baseline's fields
BASELINE_NAMES = {1: "bicubic baseline", 3: "bicubic-then-fuse baseline"}  # by the number of sources of a case
VALIDATION_SPECS: tuple[MetricSpec, ...] = tuple(METRICS.get(name) for name in VALIDATION_METRICS)
METRIC_FIELDS: tuple[str, ...] = tuple(spec.field for spec in VALIDATION_SPECS)  # psnr_rgb, ssim_rgb, psnr_grey, ...
SCORE_FIELDS: tuple[str, ...] = (*METRIC_FIELDS, *(BASELINE + f for f in METRIC_FIELDS))
# log lines: the grey metrics (those of eval.py's tables) first, then the RGB ones
LOG_GROUPS: tuple[tuple[MetricSpec, ...], ...] = tuple(
    group for group in (tuple(s for s in VALIDATION_SPECS if s.space == "grey"),
                        tuple(s for s in VALIDATION_SPECS if s.space != "grey")) if group)


def _log_text(scores: Mapping[str, float], prefix: str = "", group_separator: str = ", ") -> str:
    return group_separator.join(", ".join(spec.log_text(scores[prefix + spec.field]) for spec in group)
                                for group in LOG_GROUPS)


@dataclass(frozen=True)
class CaseResult:
    """Scores of one case against its ground truth, NaN without one: field (`MetricSpec.field`, e.g. `psnr_grey`)
    -> value of the model and of the bicubic-then-fuse baseline; `case.psnr_grey` and `case.baseline_psnr_grey`
    read them."""

    case_id: str
    model: Mapping[str, float]
    baseline: Mapping[str, float]

    def __getattr__(self, name: str) -> float:
        scores = self.__dict__.get("baseline" if name.startswith(BASELINE) else "model")
        field = name.removeprefix(BASELINE)
        if scores is None or field not in scores:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return scores[field]

    def describe(self) -> str:
        """The model's scores, each named with its label: grey metrics, then RGB ones after a semicolon."""
        return _log_text(self.model, group_separator="; ")


@dataclass(frozen=True)
class Evaluation:
    """All cases of one evaluation, their fused uint8 images (H, W, 3), and the image rows of the first batch."""

    cases: tuple[CaseResult, ...]
    fused: tuple[np.ndarray, ...]
    preview: np.ndarray | None
    baseline_name: str = BASELINE_NAMES[3]

    def mean(self, field: str) -> float:
        values = [getattr(c, field) for c in self.cases if math.isfinite(getattr(c, field))]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {f: self.mean(f) for f in SCORE_FIELDS}

    def describe(self) -> str:
        """One log line: the model's and the baseline's mean scores, each metric named with its convention."""
        s = self.summary()
        without_target = any(not math.isfinite(getattr(c, METRIC_FIELDS[0])) for c in self.cases)
        return (f"{len(self.cases)} cases; model: {_log_text(s)}; {self.baseline_name}: "
                f"{_log_text(s, BASELINE)}" + (" (NaN without ground truth)" if without_target else ""))


def _scores(image: np.ndarray | None, target: np.ndarray | None, sources: list[np.ndarray]) -> dict[str, float]:
    if image is None or target is None:
        return {field: float("nan") for field in METRIC_FIELDS}
    values = score_metrics(VALIDATION_METRICS, image, sources, target, "gt", None, "paper")
    return {spec.field: values[spec.name] for spec in VALIDATION_SPECS}


def baseline_image(sources: list[np.ndarray]) -> np.ndarray:
    """The reference method's image of a case: the ground-truth rule of the bicubic-upsampled sources, or for one
    source (SR3) the bicubic image itself."""
    return sources[0] if len(sources) == 1 else fuse(BASELINE_RULE, sources)


def _case_result(case_id: str, fused: np.ndarray, target: np.ndarray | None,
                 sources: list[np.ndarray]) -> CaseResult:
    baseline = None if target is None else baseline_image(sources)
    return CaseResult(case_id, _scores(fused, target, sources), _scores(baseline, target, sources))


def _evaluate_batch(fuser: Fuser, batch: FusionBatch | SRBatch, sampler: SamplerConfig, generator: torch.Generator,
                    out_dir: Path | None, save_process: bool,
                    progress: bool) -> tuple[list[CaseResult], list[np.ndarray], np.ndarray]:
    result = fuser.fuse(batch, sampler=sampler, generator=generator, process=save_process, progress=progress)
    cases, fused_images, rows = [], [], []
    for i, (case_id, sources) in enumerate(zip(batch.case_ids, case_sources(batch))):
        fused = result.image(i)
        target = tensor2img(batch.target[i]) if batch.target is not None else None
        cases.append(_case_result(case_id, fused, target, sources))
        fused_images.append(fused)
        rows.append(np.concatenate(sources + [fused] + ([target] if target is not None else []), axis=1))
        if out_dir is not None:
            write_case(out_dir, case_id, sources, fused, target, result.strip(i) if save_process else None)
    return cases, fused_images, np.concatenate(rows, axis=0)


@torch.no_grad()
def evaluate_model(model: Fuser | TFSDiffModel, batches: Iterable[FusionBatch | SRBatch], out_dir: Path | None, *,
                   sampler: SamplerConfig | None = None, save_process: bool = False,
                   progress: bool = True) -> Evaluation:
    """Fuse every case of `batches` (a loader or a list of `FusionBatch`) with `model` (a `Fuser`, or a model in
    training, sampled through `Fuser.from_model`) as the module docstring says.

    `sampler` defaults to the fuser's (the config's `model.sampler`). Preview rows: src1 | src2 | src3 | fused |
    ground truth, one row per case of the first batch.
    """
    fuser = model if isinstance(model, Fuser) else Fuser.from_model(model)
    settings, _ = fuser.chain(sampler)  # an unusable sampler fails before anything is written
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    generator = fuser.generator()
    cases: list[CaseResult] = []
    fused: list[np.ndarray] = []
    preview = None
    sources = 3
    for batch in tqdm(batches, desc="evaluating", disable=not progress, leave=False):
        sources = len(batch.sources)
        batch_cases, batch_fused, rows = _evaluate_batch(fuser, batch.to(fuser.device), settings, generator, out_dir,
                                                         save_process, progress)
        cases.extend(batch_cases)
        fused.extend(batch_fused)
        preview = rows if preview is None else preview
    return Evaluation(tuple(cases), tuple(fused), preview, BASELINE_NAMES[sources])


def method_fuser(name: str, peer_dir: str | Path | None = None,
                 device: torch.device | str = "cpu") -> Callable[[list[np.ndarray]], np.ndarray]:
    """The function that fuses three uint8 RGB sources with the registered fusion method `name`
    (`core.registry.FUSION_METHODS`): a classical rule as it is, a published method (`model.peers`) loaded with its
    authors' weights from `peer_dir` (`model.peers.PeerWeightsError` when they are missing or wrong)."""
    spec = FUSION_METHODS.get(name)
    if not spec.needs_weights:
        return spec.fuse
    return spec.load(peer_dir, device).fuse


def fuse_with_rule(rule: str | Callable[[list[np.ndarray]], np.ndarray], batches: Iterable[FusionBatch],
                   out_dir: Path) -> tuple[np.ndarray, ...]:
    """A baseline run: fuse every case's bicubic-upsampled sources with the `data.fusion_rules` rule `rule` (or a
    fusion function, e.g. from `method_fuser`) and write the results layout that `evaluate_model` writes; returns
    the fused images."""
    fuse_case = rule if callable(rule) else (lambda sources: fuse(rule, sources))
    fused_images = []
    for batch in batches:
        for i, case_id in enumerate(batch.case_ids):
            sources = [tensor2img(src[i]) for src in (batch.src1, batch.src2, batch.src3)]
            target = tensor2img(batch.target[i]) if batch.target is not None else None
            fused = fuse_case(sources)
            write_case(out_dir, case_id, sources, fused, target)
            fused_images.append(fused)
    return tuple(fused_images)
