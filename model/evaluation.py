"""The one evaluation path: sample a data split with the model, save images by case id, score against ground truth.

`evaluate_model` is called by validation during training, by `sr.py -p val`, by `infer.py` (splits and single
cases) and by the benchmarks; none of them repeats its setup. It samples with

- the noise schedule of `model.beta_schedule.val` (a `NoiseSchedule` table; the model's own training schedule is
  never swapped),
- the configured sampler (`model.sampler`, or the one passed in),
- the model's sampling weights (the EMA average when there is one, with the performance switches), and
- a generator seeded with the config's `seed` (the global RNG is not touched),

one loader batch at a time, at the batch's own size (the U-Net is fully convolutional: a size that is not a
multiple of its downsampling factor is padded by reflection and the result cropped back, never resized). For every
case it keeps the fused uint8 image and, with `out_dir`, writes the results
layout of `core.results_layout` (`<case>_fused.png`, `<case>_src{1,2,3}.png`, `<case>_hr.png` when the split has a
ground truth, `<case>_process.png` on request). Next to the model it scores the bicubic-then-fuse baseline, the
ground-truth fusion rule applied to the same bicubic-upsampled inputs, so every number has an honest reference.

A model with `model.diffusion.residual_base` samples a residual (times `residual_scale`); it is divided by the scale,
the rule's image of the whole bicubic-upsampled sources is added (to every frame of the process strip too) and the
sum clipped to [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.config import SamplerConfig
from core.metrics import (PSNR_GREY_LABEL, PSNR_RGB_LABEL, SSIM_GREY_LABEL, SSIM_RGB_LABEL, grey_psnr_ssim,
                          psnr_rgb, ssim_rgb, tensor2img)
from core.results_layout import write_case
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from data.images import to_tensor
from model.model import TFSDiffModel
from model.samplers import Sampler, build_sampler, sample_loop
from model.schedule import NoiseSchedule

BASELINE_RULE = "laplacian_ycbcr"
METRIC_FIELDS = ("psnr_rgb", "ssim_rgb", "psnr_grey", "ssim_grey")
SCORE_FIELDS = (*METRIC_FIELDS, *(f"baseline_{f}" for f in METRIC_FIELDS))


@dataclass(frozen=True)
class CaseResult:
    """Scores of one case against its ground truth, NaN without one: the RGB validation metrics of SR3
    (`core.metrics.psnr_rgb` / `ssim_rgb`) and the grey metrics that `eval.py` reports in the paper convention
    (`core.metrics.grey_psnr_ssim`), for the model and for the bicubic-then-fuse baseline."""

    case_id: str
    psnr_rgb: float
    ssim_rgb: float
    psnr_grey: float
    ssim_grey: float
    baseline_psnr_rgb: float
    baseline_ssim_rgb: float
    baseline_psnr_grey: float
    baseline_ssim_grey: float


@dataclass(frozen=True)
class Evaluation:
    """All cases of one evaluation, their fused uint8 images (H, W, 3), and the image rows of the first batch."""

    cases: tuple[CaseResult, ...]
    fused: tuple[np.ndarray, ...]
    preview: np.ndarray | None

    def mean(self, field: str) -> float:
        values = [getattr(c, field) for c in self.cases if math.isfinite(getattr(c, field))]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {f: self.mean(f) for f in SCORE_FIELDS}

    def describe(self) -> str:
        """One log line: the model's and the baseline's mean scores, each metric named with its convention."""
        s = self.summary()

        def scores(prefix: str) -> str:
            return (f"{PSNR_GREY_LABEL} {s[prefix + 'psnr_grey']:.2f} dB, {SSIM_GREY_LABEL} "
                    f"{s[prefix + 'ssim_grey']:.4f}, {PSNR_RGB_LABEL} {s[prefix + 'psnr_rgb']:.2f} dB, "
                    f"{SSIM_RGB_LABEL} {s[prefix + 'ssim_rgb']:.4f}")
        return (f"{len(self.cases)} cases; model: {scores('')}; bicubic-then-fuse baseline: {scores('baseline_')}"
                " (NaN without ground truth)")


def _metrics(img: np.ndarray, target: np.ndarray) -> tuple[float, float, float, float]:
    return (psnr_rgb(img, target), ssim_rgb(img, target), *grey_psnr_ssim(img, target))


def _score(fused: np.ndarray, target: np.ndarray | None, sources: list[np.ndarray]) -> tuple[float, ...]:
    if target is None:
        return (float("nan"),) * len(SCORE_FIELDS)
    return (*_metrics(fused, target), *_metrics(fuse(BASELINE_RULE, sources), target))


def _process_strip(frames: torch.Tensor, index: int) -> np.ndarray:
    return np.concatenate([tensor2img(frame[index]) for frame in frames], axis=1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right, by reflection (edge replication where the image is too small to
    reflect), to the next multiple of `multiple`; unchanged when H and W already are multiples."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def residual_base(rule: str | None, sources: list[list[np.ndarray]], device: torch.device) -> torch.Tensor | None:
    """(B, 3, H, W) in [-1, 1]: `rule` applied to each case's three uint8 sources, as `FusionDataset` makes
    `FusionBatch.base` for training; None without a rule."""
    if rule is None:
        return None
    return torch.stack([to_tensor(fuse(rule, case)) for case in sources]).to(device)


def _sample(model: TFSDiffModel, condition: torch.Tensor, base: torch.Tensor | None, sampler: Sampler,
            generator: torch.Generator, save_process: bool, progress: bool, samples: int,
            clip: str = "x0") -> torch.Tensor:
    """Sample at the condition's own size: padded to the U-Net's size multiple, the result cropped back; the mean of
    `samples` samples drawn one after another (frame by frame for the process strip); for a residual model, divided
    by its scale and added to `base`, with each step's x0 clipped as `clip` (`SamplerConfig.clip`) says."""
    h, w = condition.shape[-2:]
    padded = pad_to_multiple(condition, model.size_multiple)
    scale = model.cfg.model.diffusion.residual_scale
    bounds = None
    if base is not None and clip == "image":  # x0 such that base + x0 / scale lies in [-1, 1]
        padded_base = pad_to_multiple(base, model.size_multiple)
        bounds = (scale * (-1.0 - padded_base), scale * (1.0 - padded_base))
    result = sum(sample_loop(model.sampling_net, sampler, padded, generator, model.diffusion.channels,
                             continuous=save_process, progress=progress, bounds=bounds)
                 for _ in range(samples)) / samples
    result = result[..., :h, :w]
    if base is None:
        return result
    return (result / scale + base).clamp(-1.0, 1.0)


def _evaluate_batch(model: TFSDiffModel, batch: FusionBatch, sampler: Sampler, settings: SamplerConfig,
                    generator: torch.Generator, out_dir: Path | None, save_process: bool,
                    progress: bool) -> tuple[list[CaseResult], list[np.ndarray], np.ndarray]:
    case_sources = [[tensor2img(src[i]) for src in (batch.src1, batch.src2, batch.src3)]
                    for i in range(len(batch))]
    base = residual_base(model.cfg.model.diffusion.residual_base, case_sources, batch.src1.device)
    result = _sample(model, batch.condition, base, sampler, generator, save_process, progress, settings.samples,
                     settings.clip)
    fused_t = result[-1] if save_process else result
    cases, fused_images, rows = [], [], []
    for i, case_id in enumerate(batch.case_ids):
        sources = case_sources[i]
        fused = tensor2img(fused_t[i])
        target = tensor2img(batch.target[i]) if batch.target is not None else None
        cases.append(CaseResult(case_id, *_score(fused, target, sources)))
        fused_images.append(fused)
        rows.append(np.concatenate(sources + [fused] + ([target] if target is not None else []), axis=1))
        if out_dir is not None:
            write_case(out_dir, case_id, sources, fused, target,
                       _process_strip(result, i) if save_process else None)
    return cases, fused_images, np.concatenate(rows, axis=0)


@torch.no_grad()
def evaluate_model(model: TFSDiffModel, batches: Iterable[FusionBatch], out_dir: Path | None, *,
                   sampler: SamplerConfig | None = None, save_process: bool = False,
                   progress: bool = True) -> Evaluation:
    """Sample every case of `batches` (a loader or a list of `FusionBatch`) as the module docstring says.

    `sampler` defaults to the config's `model.sampler`. Preview rows: src1 | src2 | src3 | fused | ground truth,
    one row per case of the first batch.
    """
    cfg = model.cfg
    schedule = NoiseSchedule.from_spec(cfg.model.beta_schedule.val)
    sampler = cfg.model.sampler if sampler is None else sampler
    chain = build_sampler(schedule, sampler, cfg.model.diffusion.clip_denoised)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    was_training = model.diffusion.training
    model.diffusion.eval()
    cases: list[CaseResult] = []
    fused: list[np.ndarray] = []
    preview = None
    try:
        for batch in tqdm(batches, desc="evaluating", disable=not progress, leave=False):
            batch_cases, batch_fused, rows = _evaluate_batch(model, batch.to(model.device), chain, sampler,
                                                             generator, out_dir, save_process, progress)
            cases.extend(batch_cases)
            fused.extend(batch_fused)
            preview = rows if preview is None else preview
    finally:
        model.diffusion.train(was_training)
    return Evaluation(tuple(cases), tuple(fused), preview)


def fuse_with_rule(rule: str, batches: Iterable[FusionBatch], out_dir: Path) -> tuple[np.ndarray, ...]:
    """A classical baseline run: fuse every case's bicubic-upsampled sources with the `data.fusion_rules` rule
    `rule` and write the results layout that `evaluate_model` writes; returns the fused images."""
    fused_images = []
    for batch in batches:
        for i, case_id in enumerate(batch.case_ids):
            sources = [tensor2img(src[i]) for src in (batch.src1, batch.src2, batch.src3)]
            target = tensor2img(batch.target[i]) if batch.target is not None else None
            fused = fuse(rule, sources)
            write_case(out_dir, case_id, sources, fused, target)
            fused_images.append(fused)
    return tuple(fused_images)

