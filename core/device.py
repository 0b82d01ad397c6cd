"""Device selection from the config's `gpu_ids`."""
from __future__ import annotations

import torch


def select_device(gpu_ids: tuple[int, ...]) -> tuple[torch.device, list[int], str]:
    """(device, DataParallel device ids, a sentence for the log). No visible GPU -> CPU."""
    if not gpu_ids:
        return torch.device("cpu"), [], "gpu_ids is empty: running on CPU"
    if not torch.cuda.is_available():
        return torch.device("cpu"), [], f"gpu_ids {list(gpu_ids)} requested but no CUDA device is visible: running on CPU"
    visible = [i for i in gpu_ids if i < torch.cuda.device_count()]
    if not visible:
        raise RuntimeError(f"gpu_ids {list(gpu_ids)}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    device = torch.device(f"cuda:{visible[0]}")
    ids = visible if len(visible) > 1 else []
    mode = f"DataParallel over cuda:{visible}" if ids else f"single GPU {device}"
    return device, ids, f"running on {mode}"


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation may use on `device`: free GPU memory, or the CPU's MemAvailable (Linux); None when
    unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
