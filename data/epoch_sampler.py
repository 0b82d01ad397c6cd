"""The resumable epoch order of the training and evaluation loaders, its per-process shards under DDP, and the
aligned random crops of patch training.

An epoch's order is a pure function of ``(n, seed, shuffle, flip, patches, epoch)``, so a run resumed mid-epoch
continues with exactly the items, flips and crops the uninterrupted run would have drawn; the global torch RNG is
never touched.

Patch crops (``patches``, a :class:`PatchGrid`): a square of side ``p`` HR pixels whose top-left corner ``(y, x)``
lies on the grid of multiples of the scale ``s = r / l``. The SR (bicubic-upsampled) and HR images are cut at
``(y, x)``; the LR crop at ``(y / s, x / s)`` of side ``p / s`` (:meth:`Crop.box` with ``scale=s``) covers exactly
the same area.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["Crop", "PatchGrid", "Item", "EpochSampler", "ShardedEpochSampler"]


@dataclass(frozen=True)
class Crop:
    """A square crop of an HR image: rows ``top:top + size``, columns ``left:left + size`` (HR pixels)."""

    top: int
    left: int
    size: int

    def box(self, scale: int = 1) -> tuple[slice, slice]:
        """(rows, columns) of the same area in an image ``scale`` times smaller (1: the HR / SR image itself)."""
        if self.top % scale or self.left % scale or self.size % scale:
            raise ValueError(f"{self} does not fall on the pixel grid of an image {scale}x smaller")
        top, left, size = self.top // scale, self.left // scale, self.size // scale
        return slice(top, top + size), slice(left, left + size)


@dataclass(frozen=True)
class PatchGrid:
    """Where crops of side ``size`` may lie in an ``image`` x ``image`` HR image: corners on multiples of ``step``."""

    image: int  # HR side r
    size: int  # patch side p, a multiple of step, at most image
    step: int  # the scale s = r / l, which divides image

    def __post_init__(self) -> None:
        if self.step < 1 or self.image % self.step or self.size % self.step or not 1 <= self.size <= self.image:
            raise ValueError(f"PatchGrid: patch side {self.size} must be a multiple of the step {self.step} in "
                             f"[{self.step}, {self.image}] and the step must divide the image side {self.image}")

    @property
    def positions(self) -> int:
        """Corner positions per axis: ``(image - size) / step + 1``."""
        return (self.image - self.size) // self.step + 1


Item = tuple[int, bool] | tuple[int, bool, Crop]  # (case index, flip) or (case index, flip, crop)


class EpochSampler(Sampler[Item]):
    """Deterministic, resumable order: epoch e's permutation, flips and crops come from a torch.Generator seeded by
    (seed, e).

    The generator seed is a mix of (seed, epoch) via numpy's SeedSequence; the permutation (torch.randperm, or
    identity when shuffle=False) is drawn first, then one flip coin per position (all False when flip=False), then,
    with ``patches``, one crop corner per position (``torch.randint`` of the grid cell, rows then columns). Without
    ``patches`` the items are ``(index, flip)``, with them ``(index, flip, Crop)``.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, flip: bool, *, patches: PatchGrid | None = None) -> None:
        if n < 0 or seed < 0:
            raise ValueError(f"EpochSampler needs n >= 0 and seed >= 0, got n={n}, seed={seed}")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.flip = flip
        self.patches = patches
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

    def epoch_order(self, epoch: int) -> list[Item]:
        """The full order of ``epoch``, a pure function of (n, seed, shuffle, flip, patches, epoch)."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        flips = torch.rand(self.n, generator=generator) < 0.5 if self.flip else torch.zeros(self.n, dtype=torch.bool)
        if self.patches is None:
            return list(zip(order.tolist(), flips.tolist()))
        grid = self.patches
        corners = (torch.randint(grid.positions, (self.n, 2), generator=generator) * grid.step).tolist()
        return [(index, flip, Crop(top, left, grid.size))
                for index, flip, (top, left) in zip(order.tolist(), flips.tolist(), corners)]

    def __iter__(self) -> Iterator[Item]:
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
                 world_size: int, patches: PatchGrid | None = None) -> None:
        super().__init__(n, seed, shuffle, flip, patches=patches)
        if global_batch % world_size or not 0 <= rank < world_size:
            raise ValueError(f"ShardedEpochSampler: global batch {global_batch} must split evenly over {world_size} "
                             f"processes and 0 <= rank {rank} < {world_size}")
        self.global_batch = global_batch
        self.rank = rank
        self.local = global_batch // world_size

    def _batches(self) -> int:
        return -(-self.n // self.global_batch)

    def __iter__(self) -> Iterator[Item]:
        order = self.epoch_order(self.epoch)
        total = self._batches() * self.global_batch
        padded = (order * (total // max(len(order), 1) + 1))[:total]
        mine: list[Item] = []
        for b in range(self.start // self.global_batch, self._batches()):
            offset = b * self.global_batch + self.rank * self.local
            mine.extend(padded[offset:offset + self.local])
        return iter(mine)

    def __len__(self) -> int:
        return (self._batches() - self.start // self.global_batch) * self.local
