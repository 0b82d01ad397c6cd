"""Measurement primitives of the benchmark: machine description, matmul peak, FLOP counts, interleaved timing,
peak memory of one call.

Timing: every repetition runs each candidate once, in turn (interleaved), so slow drifts of a shared machine hit
all candidates alike; results are medians. CUDA work is synchronised before each clock read (only here, never
inside the sampling loop).
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

CPU_MEMORY_METHOD = ("peak resident set size during the call minus the resident size just before it (Linux: "
                     "VmHWM reset through /proc/self/clear_refs, free heap returned with malloc_trim first)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during the call minus memory_allocated before it"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return match.group(1).strip() if match else "unknown CPU"


def machine_info(device: torch.device) -> dict[str, str | int]:
    """What the numbers were measured on."""
    info: dict[str, str | int] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count() or 0,
                                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_1min_at_start"] = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        pass
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """`reps` rounds, each calling every candidate once in turn; returns all times per candidate."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def matmul_peak_gflops(device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """Measured fp32 GFLOP/s of a large square matmul (2 n^3 FLOPs), median of `reps` after a warm-up."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    return 2 * size ** 3 / median([timed(lambda: torch.mm(a, b), device) for _ in range(reps)]) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch.utils.flop_counter.FlopCounterMode (convolutions, matmuls, attention)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class MemoryReading:
    """Peak memory of one call beyond what was resident or allocated before it."""

    peak_bytes: int | None
    method: str


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def peak_memory(fn: Callable[[], object], device: torch.device) -> MemoryReading:
    """Run `fn` once and report its peak memory (see CPU_MEMORY_METHOD / CUDA_MEMORY_METHOD)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return MemoryReading(torch.cuda.max_memory_allocated(device) - before, CUDA_MEMORY_METHOD)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    except OSError as err:
        fn()
        return MemoryReading(None, f"unavailable on this system ({err})")
    fn()
    return MemoryReading((_status_kib("VmHWM") - before) * 1024, CPU_MEMORY_METHOD)
