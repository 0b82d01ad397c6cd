"""The one evaluation path: sample a data split with the model, save images by case id, score against ground truth.

Used by validation during training, by `sr.py -p val` and by `infer.py`. Cases are sampled a loader batch at a
time with the configured sampler (`model.sampler`; default the full chain). For every case it writes
`<case>_fused.png` (the model output), `<case>_src{1,2,3}.png` (the bicubic-upsampled inputs), `<case>_hr.png`
(the ground truth, when the split has one) and, on request, `<case>_process.png` (the denoising process strip).
Next to the model it scores the bicubic-then-fuse baseline: the ground-truth fusion rule applied to the
bicubic-upsampled inputs, so every number has an honest reference beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.config import SamplerConfig
from core.metrics import psnr_rgb, ssim_rgb, tensor2img
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from model.diffusion import GaussianDiffusion, NoiseNet
from model.samplers import Sampler, build_sampler

BASELINE_RULE = "laplacian_ycbcr"


@dataclass(frozen=True)
class CaseResult:
    """Scores of one case; NaN where the split has no ground truth."""

    case_id: str
    psnr: float
    ssim: float
    baseline_psnr: float
    baseline_ssim: float


@dataclass(frozen=True)
class Evaluation:
    """All cases of one evaluation and the uint8 images of the first batch (for image grids)."""

    cases: tuple[CaseResult, ...]
    preview: np.ndarray | None

    def mean(self, field: str) -> float:
        values = [getattr(c, field) for c in self.cases if math.isfinite(getattr(c, field))]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict[str, float]:
        return {f: self.mean(f) for f in ("psnr", "ssim", "baseline_psnr", "baseline_ssim")}


def _score(fused: np.ndarray, target: np.ndarray | None, sources: list[np.ndarray]) -> tuple[float, ...]:
    if target is None:
        return (float("nan"),) * 4
    baseline = fuse(BASELINE_RULE, sources)
    return psnr_rgb(fused, target), ssim_rgb(fused, target), psnr_rgb(baseline, target), ssim_rgb(baseline, target)


def _process_strip(frames: torch.Tensor, index: int) -> np.ndarray:
    return np.concatenate([tensor2img(frame[index]) for frame in frames], axis=1)


def _save(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def _evaluate_batch(diffusion: GaussianDiffusion, batch: FusionBatch, out_dir: Path | None,
                    generator: torch.Generator, save_process: bool, progress: bool, sampler: Sampler,
                    net: NoiseNet | None) -> tuple[list[CaseResult], np.ndarray]:
    result = diffusion.p_sample_loop(batch.condition, generator, continuous=save_process, progress=progress,
                                     sampler=sampler, net=net)
    fused_t = result[-1] if save_process else result
    cases, rows = [], []
    for i, case_id in enumerate(batch.case_ids):
        sources = [tensor2img(src[i]) for src in (batch.src1, batch.src2, batch.src3)]
        fused = tensor2img(fused_t[i])
        target = tensor2img(batch.target[i]) if batch.target is not None else None
        cases.append(CaseResult(case_id, *_score(fused, target, sources)))
        rows.append(np.concatenate(sources + [fused] + ([target] if target is not None else []), axis=1))
        if out_dir is not None:
            for k, src in enumerate(sources, start=1):
                _save(out_dir / f"{case_id}_src{k}.png", src)
            _save(out_dir / f"{case_id}_fused.png", fused)
            if target is not None:
                _save(out_dir / f"{case_id}_hr.png", target)
            if save_process:
                _save(out_dir / f"{case_id}_process.png", _process_strip(result, i))
    return cases, np.concatenate(rows, axis=0)


@torch.no_grad()
def evaluate(diffusion: GaussianDiffusion, loader: DataLoader, device: torch.device, out_dir: Path | None, *,
             seed: int = 0, save_process: bool = False, progress: bool = True, sampler: SamplerConfig | None = None,
             net: NoiseNet | None = None) -> Evaluation:
    """Sample every case of `loader` with a generator seeded by `seed` (the global RNG is not touched).

    `sampler` defaults to the full-chain DDPM on the diffusion's current schedule; `net` defaults to
    `diffusion.denoise_fn` (pass `TFSDiffModel.sampling_net` for the EMA weights and the performance switches).
    Preview rows: src1 | src2 | src3 | fused | ground truth, one row per case of the first batch.
    """
    chain = build_sampler(diffusion, SamplerConfig() if sampler is None else sampler)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = diffusion.training
    diffusion.eval()
    cases: list[CaseResult] = []
    preview = None
    try:
        for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
            batch_cases, rows = _evaluate_batch(diffusion, batch.to(device), out_dir, generator, save_process,
                                                 progress, chain, net)
            cases.extend(batch_cases)
            preview = rows if preview is None else preview
    finally:
        diffusion.train(was_training)
    return Evaluation(tuple(cases), preview)
