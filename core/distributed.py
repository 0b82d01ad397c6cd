"""Distributed training plumbing for `torchrun`: process group, ranks, batch shards, and collective helpers.

`torchrun --nproc_per_node N sr.py -p train -c CONFIG` sets RANK, LOCAL_RANK and WORLD_SIZE; `init_distributed` reads
them and joins the process group (NCCL when CUDA is available, gloo on CPU). Without torchrun nothing here is active
and training runs in one process (DataParallel over `gpu_ids`, as in the paper).

Batch semantics: `datasets.train.batch_size` is the GLOBAL batch in every mode, so the paper's batch of 32 means the
same thing on one GPU, four GPUs under DataParallel, or N processes; each process takes a contiguous shard of
batch_size / N samples of every global batch (the batch size must be divisible by N).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands; `world_size` 1 means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """The contiguous part of a global batch that this process trains on."""
        if global_batch % self.world_size:
            raise ValueError(f"datasets.train.batch_size {global_batch} is not divisible by the {self.world_size} "
                             f"processes; the batch size is global")
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(timeout_minutes: int = 180) -> DistInfo:
    """Join the process group torchrun describes; a single process returns the default DistInfo.

    The long timeout covers rank 0 validating while the other ranks wait at a barrier.
    """
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return info


def shutdown_distributed() -> None:
    """Leave the process group (on success and on error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar logs over the processes (every rank must call it)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / info.world_size for k, v in zip(keys, tensor.tolist())}


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's `obj`, in rank order (every rank must call it)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` is true on some rank (every rank must call it)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
