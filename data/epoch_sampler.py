"""The resumable epoch order of the training and evaluation loaders, and its per-process shards under DDP.

An epoch's order is a pure function of ``(n, seed, shuffle, flip, epoch)``, so a run resumed mid-epoch continues
with exactly the items (and flips) the uninterrupted run would have drawn; the global torch RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler", "ShardedEpochSampler"]


class EpochSampler(Sampler[tuple[int, bool]]):
    """Deterministic, resumable order: epoch e's permutation and flips come from a torch.Generator seeded by (seed, e).

    The generator seed is a mix of (seed, epoch) via numpy's SeedSequence; the permutation (torch.randperm, or
    identity when shuffle=False) is drawn first, then one flip coin per position (all False when flip=False).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, flip: bool) -> None:
        if n < 0 or seed < 0:
            raise ValueError(f"EpochSampler needs n >= 0 and seed >= 0, got n={n}, seed={seed}")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.flip = flip
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select ``epoch``; ``start`` samples of it were already consumed (resume mid-epoch)."""
        if epoch < 0 or not 0 <= start <= self.n:
            raise ValueError(
                f"EpochSampler.set_epoch needs epoch >= 0 and 0 <= start <= {self.n}, got epoch={epoch}, start={start}"
            )
        self.epoch = epoch
        self.start = start

    def epoch_order(self, epoch: int) -> list[tuple[int, bool]]:
        """The full (index, flip) order of ``epoch``, a pure function of (n, seed, shuffle, flip, epoch)."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        flips = torch.rand(self.n, generator=generator) < 0.5 if self.flip else torch.zeros(self.n, dtype=torch.bool)
        return list(zip(order.tolist(), flips.tolist()))

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return iter(self.epoch_order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.n - self.start


class ShardedEpochSampler(EpochSampler):
    """One process's part of every global batch of EpochSampler's order, for DistributedDataParallel.

    The epoch order is padded by wrapping around to a whole number of global batches (as DistributedSampler pads),
    so each of the `world_size` processes gets `global_batch / world_size` items of every global batch: rank r
    takes the r-th contiguous block. `start` (see `set_epoch`) counts global samples already consumed.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, flip: bool, *, global_batch: int, rank: int,
                 world_size: int) -> None:
        super().__init__(n, seed, shuffle, flip)
        if global_batch % world_size or not 0 <= rank < world_size:
            raise ValueError(f"ShardedEpochSampler: global batch {global_batch} must split evenly over {world_size} "
                             f"processes and 0 <= rank {rank} < {world_size}")
        self.global_batch = global_batch
        self.rank = rank
        self.local = global_batch // world_size

    def _batches(self) -> int:
        return -(-self.n // self.global_batch)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        order = self.epoch_order(self.epoch)
        total = self._batches() * self.global_batch
        padded = (order * (total // max(len(order), 1) + 1))[:total]
        mine: list[tuple[int, bool]] = []
        for b in range(self.start // self.global_batch, self._batches()):
            offset = b * self.global_batch + self.rank * self.local
            mine.extend(padded[offset:offset + self.local])
        return iter(mine)

    def __len__(self) -> int:
        return (self._batches() - self.start // self.global_batch) * self.local
