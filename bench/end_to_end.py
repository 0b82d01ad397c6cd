"""End to end: seconds per fused image and PSNR/SSIM against ground truth on a test set, for the full chain and for
respaced DDPM and DDIM at several step counts, with speed-up and PSNR difference against the full chain."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from bench.measure import synchronize
from core.config import SamplerConfig, TFSDiffConfig, load_config
from data.loader import dataset_from_config, ensure_config_data
from model.evaluation import evaluate_model
from model.fuser import Fuser

STEP_COUNTS = (10, 20, 25, 50, 100, 250)
FEW_EVALUATIONS_FACTOR = 50  # "at least 50x fewer network evaluations ..."
PSNR_TOLERANCE_DB = 0.2  # "... within 0.2 dB of the full chain"


def samplers_to_run(n_timestep: int) -> list[SamplerConfig]:
    """The full chain first, then respaced DDPM and DDIM (eta 0) at each step count below n_timestep."""
    fast = [SamplerConfig(type=kind, steps=s) for s in STEP_COUNTS if s < n_timestep for kind in ("respaced", "ddim")]
    return [SamplerConfig(), *fast]


def _loader(cfg: TFSDiffConfig, cases: int | None):
    split = cfg.datasets.test or cfg.datasets.val
    ensure_config_data(cfg.datasets, progress=False)
    if cases is not None:
        split = replace(split, data_len=cases)
    return split.dataroot, dataset_from_config(split, seed=cfg.seed, train=False)[2]


def benchmark_end_to_end(config_path: str, checkpoint: str, device: torch.device, cases: int | None,
                         max_steps: int | None) -> dict[str, Any]:
    """Sample the test split (first `cases` cases) once per sampler with the checkpoint's sampling (EMA) weights."""
    cfg = load_config(config_path)
    fuser = Fuser.from_checkpoint(cfg, checkpoint, device=device)
    dataroot, loader = _loader(cfg, cases)
    n_timestep = cfg.model.beta_schedule.val.n_timestep
    # warm-up: one-time costs stay out of the first timing
    evaluate_model(fuser, loader, None, progress=False, sampler=SamplerConfig(type="ddim", steps=1))
    rows: list[dict[str, Any]] = []
    for sampler in samplers_to_run(n_timestep):
        if max_steps is not None and sampler.steps is not None and sampler.steps > max_steps:
            continue
        synchronize(device)
        start = time.perf_counter()
        result = evaluate_model(fuser, loader, None, progress=False, sampler=sampler)
        synchronize(device)
        seconds = time.perf_counter() - start
        summary = result.summary()
        rows.append({"sampler": sampler.type, "steps": sampler.steps or n_timestep, "eta": sampler.eta,
                     "seconds_per_image": seconds / len(result.cases), "psnr": summary["psnr_rgb"],
                     "ssim": summary["ssim_rgb"]})
    full = rows[0]
    for row in rows:
        row["speedup"] = full["seconds_per_image"] / row["seconds_per_image"]
        row["network_evaluation_reduction"] = full["steps"] / row["steps"]
        row["psnr_minus_full"] = row["psnr"] - full["psnr"]
    few = [r for r in rows[1:] if r["network_evaluation_reduction"] >= FEW_EVALUATIONS_FACTOR]
    met = [r for r in few if r["psnr_minus_full"] >= -PSNR_TOLERANCE_DB]
    return {"config": config_path, "checkpoint": str(checkpoint), "test_set": dataroot, "cases": len(loader.dataset),
            "batch_size": loader.batch_size, "performance": "plain fp32 (config's performance switches)",
            "bicubic_then_fuse_psnr": result.summary()["baseline_psnr_rgb"], "rows": rows,
            "criterion": {"text": f">= {FEW_EVALUATIONS_FACTOR}x fewer network evaluations within "
                                  f"{PSNR_TOLERANCE_DB} dB PSNR of the full chain",
                          "met_by": [f"{r['sampler']}-{r['steps']}" for r in met],
                          "met": bool(met), "candidates": [f"{r['sampler']}-{r['steps']}" for r in few]}}
