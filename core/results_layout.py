"""The one owner of the results layout: what a fusion run writes per case, and where.

A results folder holds, per case id, ``<id>_<kind>.png`` for every kind in :data:`KINDS`:

* ``src1``, ``src2``, ``src3``: the three sources as the method saw them (the bicubic-upsampled inputs of a split);
* ``fused``: the fused image (its presence makes ``<id>`` a case of the folder);
* ``hr``: the ground truth, when the split has one;
* ``process``: the denoising-process strip, on request.

All files are 8-bit RGB PNGs written with PIL. ``infer.py`` and the evaluation path write this layout; ``eval.py``
and the comparison figure read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["KINDS", "ImageReader", "result_path", "fused_case_ids", "write_case"]

KINDS = ("src1", "src2", "src3", "fused", "hr", "process")
_SUFFIX = ".png"
_FUSED_SUFFIX = f"_fused{_SUFFIX}"

ImageReader = Callable[[Path], np.ndarray]  # an image file -> (H, W, 3) uint8 RGB (callers pass data.images.read_image)


def result_path(folder: Path, case_id: str, kind: str) -> Path:
    """``folder / "<case_id>_<kind>.png"``; ValueError for a kind not in :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return Path(folder) / f"{case_id}_{kind}{_SUFFIX}"


def fused_case_ids(folder: Path) -> set[str]:
    """The case ids of ``folder`` that have a ``<id>_fused.png`` file (empty for a missing folder)."""
    return {p.name.removesuffix(_FUSED_SUFFIX) for p in Path(folder).glob(f"*{_FUSED_SUFFIX}") if p.is_file()}


def _save(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    Image.fromarray(image).save(path)


def write_case(folder: Path, case_id: str, sources: Sequence[np.ndarray], fused: np.ndarray,
               target: np.ndarray | None = None, process: np.ndarray | None = None) -> None:
    """Write one case into ``folder`` (created when missing): three sources, the fused image and, when given,
    the ground truth ``target`` and the ``process`` strip; every array is (H, W, 3) uint8 RGB."""
    if len(sources) != 3:
        raise ValueError(f"case {case_id!r}: expected three sources, got {len(sources)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = {"src1": sources[0], "src2": sources[1], "src3": sources[2], "fused": fused, "hr": target,
              "process": process}
    for kind, image in images.items():
        if image is not None:
            _save(result_path(folder, case_id, kind), image)
