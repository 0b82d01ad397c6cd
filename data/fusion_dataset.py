"""Loads the official TFS-Diff tri-modal folder layout into batches for fusion + super-resolution.

Layout of a split folder ``dataroot`` for LR size ``l`` and HR size ``r`` (``data.layout``; files paired by stem,
``<case_id>.<ext>`` with ext in ``data.images.IMAGE_EXTENSIONS``, case-insensitive)::

    dataroot/1_sr_{l}_{r}/  2_sr_{l}_{r}/  3_sr_{l}_{r}/   three sources, bicubic-upsampled to r x r (model input)
    dataroot/hr_{r}/                                      ground-truth fused image (optional if require_target=False)

(the LR folders ``{k}_lr_{l}/`` of the layout are not read: the model's inputs are the bicubic-upsampled sources).

Files whose extension is not an image extension, hidden files (name starting with ".") and sub-folders are
ignored. Images are read by ``data.images.read_image`` (its rules for 16-bit, alpha, palette and EXIF orientation)
and mapped to [-1, 1] by ``data.images.to_tensor`` as SR3 does (uint8 / 255 * 2 - 1). Sizes and decodability are
checked lazily in ``__getitem__`` (no full decode up front).

With ``cache_images`` every decoded image is kept in memory after its first read, so later epochs decode nothing
(patch training otherwise decodes four whole images for each small crop). The items are the same bytes either way.
Memory: about ``4 * r * r * 3`` bytes per case in every process that loads (each DataLoader worker holds its own
cache; the loader then keeps its workers between epochs), e.g. 2 GB for 2,564 cases at r = 256.

With ``base_rule`` (a rule of ``data.fusion_rules``; ``model.diffusion.residual_base``) every item also carries that
rule applied to the three whole bicubic-upsampled sources, cut at the item's crop and flipped with it: the image a
residual model adds its sampled residual to. It is computed on the whole image before cropping, as it is at
inference, so a patch sees the same base as the same pixels of the whole image (cached with the images).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import UsageError
from core.registry import TASKS
from data.images import IMAGE_EXTENSIONS, ImageReadError, PairingError, list_by_stem, pair_by_stem, read_image, \
    to_tensor
from data.epoch_sampler import Crop, EpochSampler, Item
from data.fusion_rules import fuse
from data.layout import SOURCES, hr_dir, sr_dir


class DatasetError(UsageError):
    """Raised when a dataset folder or one of its images is missing, unpaired, mis-sized or unreadable."""


@dataclass(frozen=True)
class FusionBatch:
    """One batch. B = batch size, H = W = r_resolution (the patch side when training on patches); all image
    tensors float32 in [-1, 1]."""

    src1: torch.Tensor  # (B, 3, H, W) modality 1 (e.g. MR-T1), bicubic-upsampled
    src2: torch.Tensor  # (B, 3, H, W) modality 2 (e.g. MR-T2)
    src3: torch.Tensor  # (B, 3, H, W) modality 3 (e.g. SPECT)
    target: torch.Tensor | None  # (B, 3, H, W) ground-truth fused HR image, None without an hr_ folder
    case_ids: tuple[str, ...]
    base: torch.Tensor | None = None  # (B, 3, H, W) the residual base rule on the whole sources (see module doc)

    @property
    def sources(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(src1, src2, src3), the images that condition the network."""
        return self.src1, self.src2, self.src3

    @property
    def condition(self) -> torch.Tensor:
        """(B, 9, H, W) = cat([src1, src2, src3], dim=1), the channel order of the official code."""
        return torch.cat(self.sources, dim=1)

    def to(self, device: torch.device | str) -> FusionBatch:
        """Copy all tensors to ``device`` with non_blocking copies; case_ids are kept."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> FusionBatch:
        """Page-locked copy of all tensors (called by DataLoader when pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FusionBatch:
        return FusionBatch(
            src1=fn(self.src1),
            src2=fn(self.src2),
            src3=fn(self.src3),
            target=None if self.target is None else fn(self.target),
            case_ids=self.case_ids,
            base=None if self.base is None else fn(self.base),
        )

    def __len__(self) -> int:
        return len(self.case_ids)


def _list_images(folder: Path) -> dict[str, Path]:
    """Map case id (file stem) -> image path for the image files directly inside ``folder``."""
    try:
        found, _ = list_by_stem(folder)
    except PairingError as err:
        raise DatasetError(str(err)) from err
    if not found:
        raise DatasetError(f"Folder {folder} contains no image files (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return found


def _check_pairing(folders: dict[str, dict[str, Path]], dataroot: Path) -> None:
    """Raise DatasetError listing, per folder, the case ids of the other folders that it lacks."""
    try:
        pair_by_stem(folders)
    except PairingError as err:
        raise DatasetError(f"Files in {dataroot} are not paired by name:\n{err}") from err


def _read_checked(path: Path, size: int) -> np.ndarray:
    """``data.images.read_image`` of ``path``, checked to be size x size (DatasetError naming the file otherwise)."""
    try:
        array = read_image(path)
    except ImageReadError as err:
        raise DatasetError(str(err)) from err
    if array.shape[:2] != (size, size):
        raise DatasetError(f"Image {path} has size {array.shape[1]}x{array.shape[0]}, expected {size}x{size}")
    return array


def _crop_flip_tensor(array: np.ndarray, flip: bool, crop: Crop | None) -> torch.Tensor:
    """Cut ``crop`` out of a decoded (S, S, 3) uint8 image (when given), then optionally flip it horizontally.

    Returns a (3, S, S) float32 tensor in [-1, 1], S = ``crop.size`` or the image side; ``array`` is not modified.
    """
    if crop is not None:
        array = array[crop.box()]
    if flip:
        array = np.fliplr(array)
    return to_tensor(array)


@TASKS.register("fusion", help="tri-modal fusion and super-resolution (TFS-Diff): three bicubic-upsampled sources "
                "-> the high-resolution fused image", sources=len(SOURCES))
class FusionDataset(Dataset[dict[str, Any]]):
    """Tri-modal fusion dataset over the official TFS-Diff folder layout (see module docstring).

    Items are ``(index, flip)`` or ``(index, flip, crop)`` as yielded by EpochSampler, or a plain int (no flip, no
    crop). An item is a dict ``{"src1", "src2", "src3": (3, S, S), "target": (3, S, S) or None,
    "base": (3, S, S) or None, "case_id": str}``, all float32 in [-1, 1], S = r or the crop side; every image of the
    case is cut at the same ``crop`` (HR / SR pixels, ``data.epoch_sampler.Crop``) and then flipped when ``flip``.
    ``base`` is set when ``base_rule`` is (module docstring). A subclass with other source folders overrides
    :meth:`source_dirs` and :meth:`collate` (``data.sr_dataset``).
    """

    def __init__(
        self,
        dataroot: str | Path,
        l_resolution: int,
        r_resolution: int,
        data_len: int = -1,
        require_target: bool = True,
        cache_images: bool = False,
        base_rule: str | None = None,
    ) -> None:
        self.dataroot = Path(dataroot)
        self.l_resolution = l_resolution
        self.r_resolution = r_resolution
        if data_len != -1 and data_len <= 0:
            raise DatasetError(f"data_len must be -1 (all cases) or positive, got {data_len} for {self.dataroot}")
        if not self.dataroot.is_dir():
            raise DatasetError(f"Dataset folder {self.dataroot} does not exist or is not a directory")

        sr_names = [folder.name for folder in self.source_dirs()]
        hr_name = hr_dir(self.dataroot, r_resolution).name
        has_target = require_target or (self.dataroot / hr_name).is_dir()
        required = sr_names + ([hr_name] if has_target else [])
        self._check_folders_exist(required)

        folders = {name: _list_images(self.dataroot / name) for name in required}
        _check_pairing(folders, self.dataroot)

        ids = sorted(folders[sr_names[0]])
        if data_len > 0:
            ids = ids[:data_len]
        self.case_ids: tuple[str, ...] = tuple(ids)
        self._sr_paths = [folders[name] for name in sr_names]
        self._hr_paths = folders[hr_name] if has_target else None
        self._cache: dict[Path, np.ndarray] | None = {} if cache_images else None
        self.base_rule = base_rule
        self._base_cache: dict[str, np.ndarray] | None = {} if cache_images else None

    def source_dirs(self) -> list[Path]:
        """The folders of the model inputs, in source order: ``{k}_sr_{l}_{r}`` for k = 1, 2, 3."""
        return [sr_dir(self.dataroot, k, self.l_resolution, self.r_resolution) for k in SOURCES]

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> FusionBatch:
        """The batch of a list of items (the loader's ``collate_fn``)."""
        return collate_fusion(items)

    @property
    def caches_images(self) -> bool:
        """True when decoded images are kept in memory (``cache_images``)."""
        return self._cache is not None

    def _decoded(self, path: Path) -> np.ndarray:
        """The checked, decoded image at ``path``, from the cache when there is one (then stored read-only)."""
        if self._cache is None:
            return _read_checked(path, self.r_resolution)
        array = self._cache.get(path)
        if array is None:
            array = _read_checked(path, self.r_resolution)
            array.setflags(write=False)
            self._cache[path] = array
        return array

    def _base(self, case_id: str) -> np.ndarray:
        """``base_rule`` fused from the case's three whole decoded sources (uint8 RGB), cached like the images."""
        base = None if self._base_cache is None else self._base_cache.get(case_id)
        if base is None:
            base = fuse(self.base_rule, [self._decoded(paths[case_id]) for paths in self._sr_paths])
            if self._base_cache is not None:
                base.setflags(write=False)
                self._base_cache[case_id] = base
        return base

    def _check_folders_exist(self, required: list[str]) -> None:
        missing = [name for name in required if not (self.dataroot / name).is_dir()]
        if missing:
            existing = sorted(p.name for p in self.dataroot.iterdir() if p.is_dir())
            raise DatasetError(
                f"Missing subfolder(s) {', '.join(str(self.dataroot / m) for m in missing)} "
                f"(l_resolution={self.l_resolution}, r_resolution={self.r_resolution}); "
                f"existing subfolders of {self.dataroot}: {', '.join(existing) if existing else '(none)'}"
            )

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, item: int | Item) -> dict[str, Any]:
        if isinstance(item, tuple):
            index, flip = operator.index(item[0]), bool(item[1])
            crop = item[2] if len(item) == 3 else None
        else:
            index, flip, crop = operator.index(item), False, None
        case_id = self.case_ids[index]
        def item(paths: dict[str, Path]) -> torch.Tensor:
            return _crop_flip_tensor(self._decoded(paths[case_id]), flip, crop)

        sources = {f"src{k}": item(paths) for k, paths in enumerate(self._sr_paths, start=1)}
        target = None if self._hr_paths is None else item(self._hr_paths)
        base = None if self.base_rule is None else _crop_flip_tensor(self._base(case_id), flip, crop)
        return {**sources, "target": target, "base": base, "case_id": case_id}


def stack_optional(items: list[dict[str, Any]], key: str) -> list[Any] | None:
    values = [item[key] for item in items]
    present = [v is not None for v in values]
    if not any(present):
        return None
    if not all(present):
        raise DatasetError(f"Cannot collate: key {key!r} is None for some items and set for others")
    return values


def collate_fusion(items: list[dict[str, Any]]) -> FusionBatch:
    """Stack FusionDataset items into a FusionBatch (tensors gain a leading batch dimension B)."""
    if not items:
        raise DatasetError("Cannot collate an empty list of items")
    targets = stack_optional(items, "target")
    bases = stack_optional(items, "base")
    return FusionBatch(
        src1=torch.stack([item["src1"] for item in items]),
        src2=torch.stack([item["src2"] for item in items]),
        src3=torch.stack([item["src3"] for item in items]),
        target=None if targets is None else torch.stack(targets),
        case_ids=tuple(item["case_id"] for item in items),
        base=None if bases is None else torch.stack(bases),
    )


def create_dataloader(
    dataset: FusionDataset,
    batch_size: int,
    *,
    shuffle: bool,
    flip: bool,
    num_workers: int,
    seed: int,
    sampler: EpochSampler | None = None,
) -> DataLoader:
    """DataLoader yielding the dataset's batches (``dataset.collate``: FusionBatch); never consumes the global torch
    RNG (worker seeds come from ``seed``).

    Builds EpochSampler(len(dataset), seed, shuffle, flip) when ``sampler`` is None (shuffle/flip are then
    taken from the arguments; a given sampler keeps its own settings). drop_last=False; pin_memory on CUDA. Workers
    persist between epochs when the dataset caches images (their caches would be lost otherwise).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if sampler is None:
        sampler = EpochSampler(len(dataset), seed, shuffle, flip)
    elif sampler.n != len(dataset):
        raise ValueError(f"Sampler covers {sampler.n} items but dataset {dataset.dataroot} has {len(dataset)}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=dataset.collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=num_workers > 0 and dataset.caches_images,
        generator=torch.Generator().manual_seed(seed),
    )
