"""The one owner of the results layout: what a fusion run writes per case, and where.

A results folder holds, per case id, ``<id>_<kind>.png`` for every kind in :data:`KINDS`:

* ``src1``, ``src2``, ``src3``: the three sources as the method saw them (the bicubic-upsampled inputs of a split);
  a single-image SR3 case (model.task ``"sr3"``) has ``src1`` only, and its ``fused`` is the super-resolved image;
* ``fused``: the fused image (its presence makes ``<id>`` a case of the folder);
* ``hr``: the ground truth, when the split has one;
* ``process``: the denoising-process strip, on request;
* ``uncertainty``: the uncertainty map, on request (``infer.py --samples K --uncertainty``): the per-pixel spread of
  the K samples whose mean ``fused`` is, as a grey PNG (:func:`uncertainty_image`).

All files are 8-bit PNGs written with PIL, RGB but for the grey uncertainty map. ``infer.py`` and the evaluation
path write this layout; ``eval.py`` and the comparison figure read it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["KINDS", "UNCERTAINTY_SCALE", "ImageReader", "result_path", "fused_case_ids", "uncertainty_image",
           "write_case"]

KINDS = ("src1", "src2", "src3", "fused", "hr", "process", "uncertainty")
# PNG levels per grey level of spread: the map saturates at a spread of 255 / 16 = 15.94 grey levels. The shipped x4
# model's spread (4 samples) is 1.1 grey levels on average, 5.3 at the 99th percentile and at most 11.4 on its
# validation split (paper/uncertainty.py), so a factor of 16 spreads it over the PNG's range.
UNCERTAINTY_SCALE = 16
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


def uncertainty_image(spread: np.ndarray) -> np.ndarray:
    """The grey (H, W) uint8 uncertainty map of a spread in grey levels (``model.fuser.FusedBatch.spread``):
    ``min(255, round(16 * spread))`` per pixel (:data:`UNCERTAINTY_SCALE`; halves round to even), so a PNG value v
    is a standard deviation of v / 16 grey levels of the fused image, and 255 means 15.94 (255 / 16) or more."""
    if spread.ndim != 2:
        raise ValueError(f"expected an (H, W) spread, got shape {spread.shape}")
    return np.minimum(255.0, np.rint(np.asarray(spread, np.float64) * UNCERTAINTY_SCALE)).astype(np.uint8)


def _save(path: Path, image: np.ndarray, grey: bool = False) -> None:
    """Write an (H, W, 3) uint8 array (with ``grey``: an (H, W) one) as a PNG."""
    if image.dtype != np.uint8 or (image.ndim != 2 if grey else image.ndim != 3 or image.shape[2] != 3):
        shape = "(H, W)" if grey else "(H, W, 3)"
        raise ValueError(f"{path}: expected an {shape} uint8 image, got {image.dtype} {image.shape}")
    Image.fromarray(image).save(path)


def write_case(folder: Path, case_id: str, sources: Sequence[np.ndarray], fused: np.ndarray,
               target: np.ndarray | None = None, process: np.ndarray | None = None,
               uncertainty: np.ndarray | None = None) -> None:
    """Write one case into ``folder`` (created when missing): three sources (one for a single-image SR3 case), the
    fused image and, when given, the ground truth ``target``, the ``process`` strip and the ``uncertainty`` map;
    every array is (H, W, 3) uint8 RGB, but the uncertainty map, (H, W) uint8 grey (:func:`uncertainty_image`)."""
    if len(sources) not in (1, 3):
        raise ValueError(f"case {case_id!r}: expected three sources (or one, SR3), got {len(sources)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = {**{f"src{k}": source for k, source in enumerate(sources, start=1)}, "fused": fused, "hr": target,
              "process": process}
    for kind, image in images.items():
        if image is not None:
            _save(result_path(folder, case_id, kind), image)
    if uncertainty is not None:
        _save(result_path(folder, case_id, "uncertainty"), uncertainty, grey=True)
