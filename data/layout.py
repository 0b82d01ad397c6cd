"""The one owner of the dataset layout: the folder names of a TFS-Diff dataset, and how one case is written.

A dataset root holds one folder per split (:data:`SPLITS`); a split folder holds, for LR side ``l`` and HR side
``r``, one image per case id in each of::

    {k}_sr_{l}_{r}/   source k = 1, 2, 3, degraded to l x l and bicubic-upsampled back to r x r (the model input)
    {k}_lr_{l}/       source k at l x l
    hr_{r}/           the ground-truth fused image, r x r
    {k}_hr_{r}/       source k itself, r x r (only where asked: the test split of paper.real_scans, whose
                      metrics against the HR sources read it; no dataset reads it)

``data/builders/embedded.py`` and ``data/prepare_data.py`` write this layout through :func:`write_case`;
``data/fusion_dataset.py`` reads it through :func:`sr_dir`, :func:`hr_dir` (and :func:`lr_dir`).

A single-image super-resolution dataset (model.task ``"sr3"``, ``prepare_data.py sr3``) has SR3's own layout: one
image per case id in each of::

    sr_{l}_{r}/   the image degraded to l x l and bicubic-upsampled back to r x r (the model input)
    lr_{l}/       the image at l x l
    hr_{r}/       the image itself, r x r (the target)

written by :func:`write_single_case` and read by ``data/sr_dataset.py`` through :func:`single_sr_dir` and
:func:`hr_dir`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from data.resample import degrade

__all__ = ["SPLITS", "SOURCES", "split_dir", "sr_dir", "lr_dir", "hr_dir", "source_hr_dir", "write_case",
           "single_sr_dir", "single_lr_dir", "write_single_case"]

SPLITS = ("train", "val", "test")
SOURCES = (1, 2, 3)


def split_dir(root: str | Path, split: str) -> Path:
    """Folder of one split (``train``, ``val`` or ``test``) of a dataset rooted at ``root``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {list(SPLITS)}")
    return Path(root) / split


def _check_source(k: int) -> None:
    if k not in SOURCES:
        raise ValueError(f"unknown source {k!r}; sources are numbered {', '.join(map(str, SOURCES))}")


def sr_dir(split_root: str | Path, k: int, l_resolution: int, r_resolution: int) -> Path:
    """``split_root/{k}_sr_{l}_{r}``: source ``k`` degraded to ``l`` and upsampled back to ``r``."""
    _check_source(k)
    return Path(split_root) / f"{k}_sr_{l_resolution}_{r_resolution}"


def lr_dir(split_root: str | Path, k: int, l_resolution: int) -> Path:
    """``split_root/{k}_lr_{l}``: source ``k`` at the LR side ``l``."""
    _check_source(k)
    return Path(split_root) / f"{k}_lr_{l_resolution}"


def hr_dir(split_root: str | Path, r_resolution: int) -> Path:
    """``split_root/hr_{r}``: the ground-truth fused images."""
    return Path(split_root) / f"hr_{r_resolution}"


def source_hr_dir(split_root: str | Path, k: int, r_resolution: int) -> Path:
    """``split_root/{k}_hr_{r}``: source ``k`` itself at the HR side ``r``."""
    _check_source(k)
    return Path(split_root) / f"{k}_hr_{r_resolution}"


def single_sr_dir(split_root: str | Path, l_resolution: int, r_resolution: int) -> Path:
    """``split_root/sr_{l}_{r}``: the image of a single-image case degraded to ``l`` and upsampled back to ``r``."""
    return Path(split_root) / f"sr_{l_resolution}_{r_resolution}"


def single_lr_dir(split_root: str | Path, l_resolution: int) -> Path:
    """``split_root/lr_{l}``: the image of a single-image case at the LR side ``l``."""
    return Path(split_root) / f"lr_{l_resolution}"


def write_case(split_root: Path, case_id: str, sources: Sequence[Image.Image], target: Image.Image,
               l_resolutions: Sequence[int], hr_sources: bool = False) -> None:
    """Write one case as ``<case_id>.png`` into ``hr_{r}`` and, for every ``l``, ``{k}_lr_{l}`` and ``{k}_sr_{l}_{r}``
    (with ``hr_sources``, also each source itself into ``{k}_hr_{r}``).

    ``sources`` are the three HR source images and ``target`` the ground truth, all r x r RGB PIL images; the LR and
    SR images come from ``data.resample.degrade``. Folders are created when missing.
    """
    r_resolution = target.width
    sizes = {img.size for img in (*sources, target)}
    if len(sources) != len(SOURCES) or sizes != {(r_resolution, r_resolution)}:
        raise ValueError(f"case {case_id!r}: expected three sources and a target of one square size, got "
                         f"{len(sources)} sources and sizes {sorted(sizes)}")
    outputs = {hr_dir(split_root, r_resolution): target}
    if hr_sources:
        outputs |= {source_hr_dir(split_root, k, r_resolution): img for k, img in zip(SOURCES, sources)}
    for l_res in l_resolutions:
        for k, img in zip(SOURCES, sources):
            lr, sr = degrade(img, l_res)
            outputs[lr_dir(split_root, k, l_res)] = lr
            outputs[sr_dir(split_root, k, l_res, r_resolution)] = sr
    for folder, img in outputs.items():
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{case_id}.png")


def write_single_case(split_root: Path, case_id: str, image: Image.Image, l_resolutions: Sequence[int]) -> None:
    """Write one single-image case as ``<case_id>.png`` into ``hr_{r}`` (``image``, a square RGB PIL image of side
    r) and, for every ``l``, ``lr_{l}`` and ``sr_{l}_{r}`` (``data.resample.degrade``). Folders are created when
    missing."""
    if image.width != image.height:
        raise ValueError(f"case {case_id!r}: expected a square image, got {image.width}x{image.height}")
    r_resolution = image.width
    outputs = {hr_dir(split_root, r_resolution): image}
    for l_res in l_resolutions:
        lr, sr = degrade(image, l_res)
        outputs[single_lr_dir(split_root, l_res)] = lr
        outputs[single_sr_dir(split_root, l_res, r_resolution)] = sr
    for folder, img in outputs.items():
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{case_id}.png")
