"""Loads a single-image super-resolution dataset (model.task ``"sr3"``) into batches for SR3.

Layout of a split folder ``dataroot`` for LR size ``l`` and HR size ``r`` (``data.layout``, SR3's own layout, as
``prepare_data.py sr3`` writes it; files paired by stem as in ``data.fusion_dataset``)::

    dataroot/sr_{l}_{r}/   the image degraded to l x l and bicubic-upsampled back to r x r (model input)
    dataroot/hr_{r}/       the image itself (the target; optional if require_target=False)

(``lr_{l}/`` is not read.) Every image is read as 8-bit RGB, as the fusion data are: grey scans as R = G = B, the
pseudo-colour functional images (SPECT, PET) in colour, so one 3-channel SR3 model super-resolves every modality
and its outputs are the sources a fusion method expects. Reading, caching, cropping and flipping are those of
``data.fusion_dataset.FusionDataset``, with one source instead of three; a batch is an :class:`SRBatch`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.registry import TASKS
from data.fusion_dataset import DatasetError, FusionDataset, stack_optional
from data.layout import single_sr_dir

__all__ = ["SRBatch", "SRDataset", "collate_sr"]


@dataclass(frozen=True)
class SRBatch:
    """One batch of single images. B = batch size, H = W = r_resolution (or the patch side); float32 in [-1, 1]."""

    src1: torch.Tensor  # (B, 3, H, W) the bicubic-upsampled LR image
    target: torch.Tensor | None  # (B, 3, H, W) the HR image, None without an hr_ folder
    case_ids: tuple[str, ...]
    base: None = None  # no residual base: a single image has nothing to fuse

    @property
    def sources(self) -> tuple[torch.Tensor]:
        """(src1,): the one image that conditions the network."""
        return (self.src1,)

    @property
    def condition(self) -> torch.Tensor:
        """(B, 3, H, W): the bicubic-upsampled image, SR3's condition."""
        return self.src1

    def to(self, device: torch.device | str) -> SRBatch:
        """Copy all tensors to ``device`` with non_blocking copies; case_ids are kept."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> SRBatch:
        """Page-locked copy of all tensors (called by DataLoader when pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SRBatch:
        return SRBatch(src1=fn(self.src1), target=None if self.target is None else fn(self.target),
                       case_ids=self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)


def collate_sr(items: list[dict[str, Any]]) -> SRBatch:
    """Stack SRDataset items into an SRBatch (tensors gain a leading batch dimension B)."""
    if not items:
        raise DatasetError("Cannot collate an empty list of items")
    targets = stack_optional(items, "target")
    return SRBatch(src1=torch.stack([item["src1"] for item in items]),
                   target=None if targets is None else torch.stack(targets),
                   case_ids=tuple(item["case_id"] for item in items))


@TASKS.register("sr3", help="single-image super-resolution (SR3): one bicubic-upsampled image -> its "
                "high-resolution image", sources=1)
class SRDataset(FusionDataset):
    """A single-image SR dataset (module docstring). Items are ``{"src1", "target", "base": None, "case_id"}``,
    cropped and flipped as ``FusionDataset`` does; ``base_rule`` must be None."""

    def __init__(self, dataroot: str | Path, l_resolution: int, r_resolution: int, data_len: int = -1,
                 require_target: bool = True, cache_images: bool = False, base_rule: str | None = None) -> None:
        if base_rule is not None:
            raise DatasetError(f"{dataroot}: a single-image dataset has no residual base (got base_rule "
                               f"{base_rule!r}); model.diffusion.residual_base is for the fusion task")
        super().__init__(dataroot, l_resolution, r_resolution, data_len, require_target, cache_images)

    def source_dirs(self) -> list[Path]:
        """The one folder of model inputs: ``sr_{l}_{r}``."""
        return [single_sr_dir(self.dataroot, self.l_resolution, self.r_resolution)]

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> SRBatch:
        """The batch of a list of items (the loader's ``collate_fn``)."""
        return collate_sr(items)
