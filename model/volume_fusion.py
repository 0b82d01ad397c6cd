"""Fuse a volume slice by slice: every display slice of ``data.volume_io.SlicedVolumes`` with the model or a method.

Each slice's three sources are upsampled bicubically to the fused in-plane size (``data.resample.resize_bicubic``,
as ``infer.py --inputs`` upsamples an image) and fused:

* **model** (a ``model.fuser.Fuser``): ``batch`` slices at a time through ``Fuser.fuse`` (the network is fully
  convolutional, so a batch of slices is one tensor), with one generator seeded with the config's seed for the whole
  volume, passed from batch to batch as ``model.evaluation`` passes it through a split. A slice's noise therefore
  depends on the slices fused before it and on the batch size (recorded in the sidecar); with ``batch`` 1 the first
  fused slice gets exactly the image that ``infer.py --inputs`` gives its three slices alone. With ``keep_samples``
  each slice's spread (``FusedBatch.spread``, grey levels) is kept too.
* **method** (a function of three uint8 RGB sources, ``model.evaluation.method_fuser``): slice by slice.

Empty slices (all three windowed sources zero, ``SlicedVolumes.is_empty``) are not fused: their fused image and
spread are 0 (black), and they stay at their place in the volume. Only the input slices, the fused uint8 slices and
the spreads (float32) of the whole volume are kept; the network sees one batch at a time. `volume_bytes` estimates
what the whole fused volume takes in memory, which ``infer.py`` checks against the free memory before fusing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core.errors import UsageError
from data.fusion_dataset import FusionBatch
from data.images import to_tensor
from data.resample import resize_bicubic
from data.volume_io import SlicedVolumes
from model.fuser import Fuser

__all__ = ["CPU_BATCH_SLICES", "GPU_BATCH_SLICES", "SliceFusionError", "FusedSlices", "default_batch_slices",
           "volume_bytes", "slices_per_batch", "fuse_slices"]

# Slices per network batch. On the CPU a batch is no faster per slice than one slice (shipped x4 model, 468x396
# slices, one thread: 5.5 s alone, 6.4 s per slice in fours) and takes its memory four times over; a GPU is filled
# better by several.
CPU_BATCH_SLICES = 1
GPU_BATCH_SLICES = 8
# host bytes per fused voxel while the volume is assembled and encoded: the fused slices (3), the volume in the
# input's orientation (3) and its NIfTI bytes (3); with the uncertainty, its float32 spread, volume and bytes (12)
BYTES_PER_VOXEL = 9
BYTES_PER_VOXEL_SPREAD = 12
log = logging.getLogger("tfsdiff")

Method = Callable[[list[np.ndarray]], np.ndarray]


class SliceFusionError(UsageError):
    """A method refused a slice (e.g. a published method's size limit); the message names the slice."""


@dataclass(frozen=True)
class FusedSlices:
    """The fused display slices (n, H, W, 3) uint8, their spreads (n, H, W) float32 grey levels when kept, the
    empty slices (indices, not fused: 0), and the slices per network batch (model only, else None)."""

    images: np.ndarray
    spread: np.ndarray | None
    empty: tuple[int, ...]
    batch: int | None


def default_batch_slices(device: torch.device) -> int:
    """Slices per batch when --batch-slices is not given: `CPU_BATCH_SLICES` on a CPU, `GPU_BATCH_SLICES` else."""
    return CPU_BATCH_SLICES if device.type == "cpu" else GPU_BATCH_SLICES


def volume_bytes(slices: int, size: tuple[int, int], keep_samples: bool) -> int:
    """The host memory that the fused volume of `slices` slices of `size` (H, W) takes while it is assembled and
    encoded (`BYTES_PER_VOXEL`, plus `BYTES_PER_VOXEL_SPREAD` with the spread), on top of the network's."""
    per_voxel = BYTES_PER_VOXEL + (BYTES_PER_VOXEL_SPREAD if keep_samples else 0)
    return slices * size[0] * size[1] * per_voxel


def slices_per_batch(wanted: int, per_slice_bytes: int, free_bytes: int | None) -> int:
    """`wanted` slices per batch, fewer (at least 1) when `wanted` slices of `per_slice_bytes` each would exceed
    `free_bytes` (None: unknown, no limit); a log line says so."""
    if free_bytes is None or wanted * per_slice_bytes <= free_bytes:
        return wanted
    fit = max(1, free_bytes // max(1, per_slice_bytes))
    log.info("%d slices per batch would need about %.1f GiB, more than the %.1f GiB free: fusing %d at a time",
             wanted, wanted * per_slice_bytes / 2**30, free_bytes / 2**30, fit)
    return int(fit)


def _upsampled(sliced: SlicedVolumes, index: int, size: tuple[int, int]) -> list[np.ndarray]:
    height, width = size
    return [np.asarray(resize_bicubic(Image.fromarray(src), (width, height))) for src in sliced.sources(index)]


def fuse_slices(sliced: SlicedVolumes, size: tuple[int, int], *, fuser: Fuser | None = None,
                method: Method | None = None, batch: int = 1, keep_samples: bool = False,
                progress: bool = True) -> FusedSlices:
    """Fuse every slice of `sliced` at `size` (H, W) with `fuser` or `method` (exactly one), as the module docstring
    says; a progress bar counts the slices."""
    if (fuser is None) == (method is None):
        raise ValueError("fuse_slices needs exactly one of fuser and method")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    count = len(sliced)
    images = np.zeros((count, *size, 3), dtype=np.uint8)
    spread = np.zeros((count, *size), dtype=np.float32) if keep_samples else None
    empty = tuple(k for k in range(count) if sliced.is_empty(k))
    skipped = set(empty)
    todo = [k for k in range(count) if k not in skipped]
    axis = sliced.geometry.axis
    generator = fuser.generator() if fuser is not None else None
    step = batch if fuser is not None else 1
    with tqdm(total=count, desc="slices", unit="slice", disable=not progress) as bar:
        bar.update(len(empty))
        for start in range(0, len(todo), step):
            indices = todo[start:start + step]
            sources = [_upsampled(sliced, k, size) for k in indices]
            if fuser is None:
                try:
                    images[indices[0]] = method(sources[0])
                except ValueError as err:
                    raise SliceFusionError(f"{axis} slice {indices[0]}: {err}") from err
            else:
                tensors = [torch.stack([to_tensor(case[j]) for case in sources]) for j in range(3)]
                fused = fuser.fuse(FusionBatch(*tensors, target=None, case_ids=tuple(map(str, indices))),
                                   generator=generator, progress=False, keep_samples=keep_samples)
                for i, k in enumerate(indices):
                    images[k] = fused.image(i)
                    if spread is not None:
                        spread[k] = fused.spread(i)
            bar.update(len(indices))
    return FusedSlices(images, spread, empty, batch if fuser is not None else None)
