"""Patch training (datasets.train.patch_size): aligned random crops drawn by the epoch sampler, reproducible from
the seed and resumable exactly; the LR crop covers exactly the HR crop."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DatasetConfig
from data.epoch_sampler import Crop, EpochSampler, PatchGrid, ShardedEpochSampler
from data.images import read_image, to_tensor
from data.layout import hr_dir, lr_dir, sr_dir, write_case
from data.loader import dataset_from_config
from data.resample import degrade

R_RES, SCALE, PATCH, N_CASES = 32, 4, 16, 4
L_RES = R_RES // SCALE
KERNEL_REACH = 2  # LR pixels: PIL's antialiased bicubic reaches 2 output pixels (2 * SCALE HR pixels) either side


MakeRGB = Callable[..., np.ndarray]


def _sources(case: int, make_rgb: MakeRGB) -> list[np.ndarray]:
    """The three HR sources of ``case`` (random, seeded ``10 case + k``)."""
    return [make_rgb(10 * case + k, (R_RES, R_RES)) for k in range(3)]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, make_rgb: MakeRGB) -> Path:
    root = tmp_path_factory.mktemp("patches") / "train"
    for case in range(N_CASES):
        images = [Image.fromarray(a) for a in _sources(case, make_rgb)]
        write_case(root, f"case{case}", images, images[1], [L_RES])
    return root


def _config(root: Path, patch_size: int | None = PATCH, batch_size: int = 3) -> DatasetConfig:
    return DatasetConfig(dataroot=str(root), l_resolution=L_RES, r_resolution=R_RES, batch_size=batch_size,
                         patch_size=patch_size)


def test_crop_boxes_and_grid() -> None:
    crop = Crop(top=8, left=12, size=16)
    assert crop.box() == (slice(8, 24), slice(12, 28))
    assert crop.box(4) == (slice(2, 6), slice(3, 7))
    with pytest.raises(ValueError, match="pixel grid of an image 8x smaller"):
        crop.box(8)
    assert PatchGrid(image=32, size=16, step=4).positions == 5
    assert PatchGrid(image=32, size=32, step=4).positions == 1
    for size, step in ((18, 4), (0, 4), (36, 4), (16, 3)):
        with pytest.raises(ValueError, match="PatchGrid"):
            PatchGrid(image=32, size=size, step=step)


def test_sampler_draws_grid_crops_after_the_unchanged_order_and_flips() -> None:
    grid = PatchGrid(image=R_RES, size=PATCH, step=SCALE)
    plain = EpochSampler(200, seed=5, shuffle=True, flip=True)
    patched = EpochSampler(200, seed=5, shuffle=True, flip=True, patches=grid)
    for epoch in (0, 3):
        items = patched.epoch_order(epoch)
        assert [item[:2] for item in items] == plain.epoch_order(epoch)
        crops = [item[2] for item in items]
        assert all(c.size == PATCH and c.top % SCALE == 0 == c.left % SCALE for c in crops)
        assert {c.top for c in crops} == {c.left for c in crops} == set(range(0, R_RES - PATCH + 1, SCALE))
    assert patched.epoch_order(1) == EpochSampler(200, 5, True, True, patches=grid).epoch_order(1)
    assert patched.epoch_order(1) != patched.epoch_order(2)
    assert patched.epoch_order(1) != EpochSampler(200, 6, True, True, patches=grid).epoch_order(1)
    shard = ShardedEpochSampler(200, 5, True, True, global_batch=4, rank=1, world_size=2, patches=grid)
    assert list(shard)[:2] == patched.epoch_order(0)[2:4]


def test_loader_crops_every_image_of_a_case_at_the_sampled_crop(split: Path) -> None:
    dataset, sampler, loader = dataset_from_config(_config(split), seed=1, train=True)
    sampler.set_epoch(2)
    items = sampler.epoch_order(2)
    batches = list(loader)
    assert [tuple(b.src1.shape) for b in batches] == [(3, 3, PATCH, PATCH), (1, 3, PATCH, PATCH)]
    flips = [flip for _, flip, _ in items]
    assert True in flips and False in flips
    for position, (index, flip, crop) in enumerate(items):
        batch, row = batches[position // 3], position % 3
        case = dataset.case_ids[index]
        expected = {"src2": sr_dir(split, 2, L_RES, R_RES), "target": hr_dir(split, R_RES)}
        for key, folder in expected.items():
            patch = read_image(folder / f"{case}.png")[crop.box()]
            assert torch.equal(getattr(batch, key)[row], to_tensor(patch[:, ::-1] if flip else patch)), (key, case)


def test_validation_loader_ignores_patches_and_uses_whole_images(split: Path) -> None:
    _, sampler, loader = dataset_from_config(_config(split), seed=1, train=False)
    assert sampler.patches is None and next(iter(loader)).src1.shape[-2:] == (R_RES, R_RES)


def test_lr_crop_covers_the_hr_crop_exactly(split: Path, make_rgb: MakeRGB) -> None:
    """The LR image's crop at (y/s, x/s) is degrade(HR crop) exactly, except within KERNEL_REACH LR pixels of the
    crop border, where the antialiased bicubic kernel of the whole image reached HR pixels outside the crop."""
    grid = PatchGrid(image=R_RES, size=PATCH, step=SCALE)
    inner = slice(KERNEL_REACH, PATCH // SCALE - KERNEL_REACH)
    border_differs = False
    for case in range(N_CASES):
        hr_sources = _sources(case, make_rgb)
        for top in range(0, R_RES - PATCH + 1, SCALE):
            for left in range(0, R_RES - PATCH + 1, SCALE):
                crop = Crop(top, left, grid.size)
                for k, hr in enumerate(hr_sources, start=1):
                    lr_of_crop, _ = degrade(Image.fromarray(hr[crop.box()]), PATCH // SCALE)
                    lr_crop = read_image(lr_dir(split, k, L_RES) / f"case{case}.png")[crop.box(SCALE)]
                    assert np.array_equal(np.asarray(lr_of_crop)[inner, inner], lr_crop[inner, inner])
                    border_differs |= not np.array_equal(np.asarray(lr_of_crop), lr_crop)
    assert border_differs  # the margin is needed: on random images the border pixels do differ


def test_resumed_epoch_gives_the_same_crops_and_tensors(split: Path) -> None:
    _, sampler, loader = dataset_from_config(_config(split, batch_size=1), seed=7, train=True)
    sampler.set_epoch(4)
    full = list(loader)
    _, resumed_sampler, resumed_loader = dataset_from_config(_config(split, batch_size=1), seed=7, train=True)
    resumed_sampler.set_epoch(4, start=2)
    tail = list(resumed_loader)
    assert len(tail) == N_CASES - 2
    for a, b in zip(full[2:], tail):
        assert a.case_ids == b.case_ids and torch.equal(a.condition, b.condition) and torch.equal(a.target, b.target)


def test_without_patch_size_the_order_is_unchanged(split: Path) -> None:
    _, sampler, _ = dataset_from_config(_config(split, patch_size=None), seed=7, train=True)
    assert sampler.patches is None and sampler.epoch_order(1) == EpochSampler(N_CASES, 7, True, True).epoch_order(1)
