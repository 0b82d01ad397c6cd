"""Per-step cost of the TFS-Diff network: parameters, FLOPs, seconds per training and sampling step, peak memory,
for the plain fp32 path and the optimised path (`performance` switches), measured interleaved in one run."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Callable

import torch

from bench.measure import count_flops, interleaved, median, peak_memory
from core.config import PerformanceConfig, TFSDiffConfig, load_config
from model.model import TFSDiffModel
from model.samplers import AncestralSampler

PATHS = ("plain", "optimised")


def optimised_performance(device: torch.device, compile_net: bool) -> PerformanceConfig:
    """The fastest switches for this device: NHWC plus bf16 autocast where the hardware has bf16 arithmetic
    (CPU: AVX512-BF16/AMX; GPU: compute capability >= 8), else fp16 on GPU and fp32 on CPU."""
    if device.type == "cuda":
        autocast = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        autocast = "bf16" if _cpu_has_bf16() else "none"
    return PerformanceConfig(channels_last=True, autocast=autocast, compile=compile_net)


def _cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _build(cfg: TFSDiffConfig, perf: PerformanceConfig, device: torch.device) -> TFSDiffModel:
    torch.manual_seed(0)  # identical initial weights on every path
    gpu_ids = (device.index or 0,) if device.type == "cuda" else ()
    return TFSDiffModel(replace(cfg, gpu_ids=gpu_ids, performance=perf), device)


def _sampling_step(model: TFSDiffModel, condition: torch.Tensor) -> Callable[[], Any]:
    """One mid-chain step of the full-chain sampler: network call plus the ancestral update."""
    sampler = AncestralSampler.full_chain(model.diffusion.schedule, model.diffusion.clip_denoised)
    i = len(sampler.timesteps) // 2
    x_t = torch.randn((1, model.diffusion.channels, *condition.shape[2:]), device=condition.device)
    level = torch.full((1,), sampler.noise_levels[i], device=condition.device)
    generator = torch.Generator(device=condition.device).manual_seed(0)
    net = model.sampling_net

    @torch.no_grad()
    def step() -> torch.Tensor:
        return sampler.step(net(condition, x_t, level), i, x_t, generator)[0]
    return step


def _time_paths(steps: dict[str, Callable[[], Any]], reps: int, device: torch.device) -> dict[str, Any]:
    """Warm each path up once, measure peak memory on one more call, then `reps` interleaved rounds."""
    for fn in steps.values():
        fn()
    memory = {name: peak_memory(fn, device) for name, fn in steps.items()}
    times = interleaved(steps, reps, device)
    return {name: {"seconds": median(times[name]), "all_seconds": times[name],
                   "peak_memory_bytes": memory[name].peak_bytes} for name in steps} | {
        "memory_method": next(iter(memory.values())).method}


@torch.no_grad()
def _relative_error(models: dict[str, TFSDiffModel], condition: torch.Tensor) -> float:
    """||eps_optimised - eps_plain|| / ||eps_plain|| on one input: how far the switches move the function."""
    for model in models.values():
        model.diffusion.eval()
    x_t = torch.randn((1, 3, *condition.shape[2:]), generator=torch.Generator().manual_seed(1)).to(condition.device)
    level = torch.full((1,), 0.5, device=condition.device)
    plain, fast = (models[name].sampling_net(condition, x_t, level) for name in PATHS)
    return float((fast - plain).norm() / plain.norm())


def benchmark_network(config_path: str, device: torch.device, reps_train: int, reps_sample: int,
                      peak_gflops: float, optimised: PerformanceConfig) -> dict[str, Any]:
    """All per-step numbers of one config at batch 1; ratios are optimised / plain from the same run."""
    cfg = load_config(config_path)
    models = {"plain": _build(cfg, PerformanceConfig(), device), "optimised": _build(cfg, optimised, device)}
    size, channels = cfg.model.diffusion.image_size, cfg.model.diffusion.channels
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(1, channels, size, size, generator=g) * 2 - 1).to(device)
    condition = (torch.rand(1, 9, size, size, generator=g) * 2 - 1).to(device)
    plain = models["plain"]
    result: dict[str, Any] = {"config": config_path, "image_size": size, "batch": 1,
                              "parameters": plain.num_parameters, "optimised_switches": asdict(optimised)}

    for model in models.values():
        model.diffusion.eval()
    sample_steps = {name: _sampling_step(m, condition) for name, m in models.items()}
    forward_flops = count_flops(sample_steps["plain"])
    sample = _time_paths(sample_steps, reps_sample, device)
    result["optimised_eps_relative_rms_error"] = _relative_error(models, condition)  # before training moves weights

    train_steps = {name: (lambda m=m: m.train_step(x0, condition)) for name, m in models.items()}
    train_flops = count_flops(train_steps["plain"])
    train = _time_paths(train_steps, reps_train, device)

    result |= {"gflops_forward": forward_flops / 1e9, "gflops_train_step": train_flops / 1e9,
               "memory_method": sample.pop("memory_method")}
    train.pop("memory_method")
    for name in PATHS:
        result[name] = {
            "train": train[name] | {"fraction_of_peak": train_flops / train[name]["seconds"] / 1e9 / peak_gflops},
            "sample": sample[name] | {"fraction_of_peak": forward_flops / sample[name]["seconds"] / 1e9 / peak_gflops},
        }
    result["ratio_train"] = train["optimised"]["seconds"] / train["plain"]["seconds"]
    result["ratio_sample"] = sample["optimised"]["seconds"] / sample["plain"]["seconds"]
    return result
