"""Tests for data/fusion_dataset.py: layout validation, image loading, flips and the dataloader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.epoch_sampler import Crop, EpochSampler
from data.fusion_dataset import DatasetError, FusionBatch, FusionDataset, collate_fusion, create_dataloader

L_RES, R_RES = 8, 16
CASES = ("case_a", "case_b", "case_c", "case_d", "case_e")


MakeRGB = Callable[..., np.ndarray]


def _save(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    """Save (H, W, 3) uint8 ``pixels`` in PIL ``mode`` ("L", "RGB" or "P"), creating the folder."""
    img = Image.fromarray(pixels)
    if mode == "L":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _make_layout(root: Path, make_rgb: MakeRGB, with_hr: bool = True, with_lr: bool = True) -> Path:
    """Five cases of random images; modality 1 grey 'L', modality 2 RGB, modality 3 palette 'P', hr RGB."""
    modes = {1: "L", 2: "RGB", 3: "P"}
    for i, case in enumerate(CASES):
        for k, mode in modes.items():
            _save(root / f"{k}_sr_{L_RES}_{R_RES}" / f"{case}.png", make_rgb(100 * k + i, (R_RES, R_RES)), mode)
            if with_lr:
                _save(root / f"{k}_lr_{L_RES}" / f"{case}.png", make_rgb(1000 + 100 * k + i, (L_RES, L_RES)), mode)
        if with_hr:
            _save(root / f"hr_{R_RES}" / f"{case}.png", make_rgb(5000 + i, (R_RES, R_RES)))
    return root


@pytest.fixture()
def layout(tmp_path: Path, make_rgb: MakeRGB) -> Path:
    return _make_layout(tmp_path / "split", make_rgb)


def _expected(path: Path) -> np.ndarray:
    """Reference conversion: PIL RGB, uint8 / 255 * 2 - 1, CHW."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return (array / 255 * 2 - 1).transpose(2, 0, 1)


def test_item_values_shapes_and_ranges(layout: Path) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    assert ds.case_ids == CASES and len(ds) == 5
    item = ds[1]
    assert item["case_id"] == "case_b"
    checks = (("src1", f"1_sr_{L_RES}_{R_RES}"), ("src3", f"3_sr_{L_RES}_{R_RES}"), ("target", f"hr_{R_RES}"))
    for key, folder in checks:
        tensor = item[key]
        assert tensor.shape == (3, R_RES, R_RES) and tensor.dtype == torch.float32
        assert -1.0 <= tensor.min() and tensor.max() <= 1.0
        np.testing.assert_allclose(tensor.numpy(), _expected(layout / folder / "case_b.png"), atol=1e-6)
    grey = item["src1"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert set(item) == {"src1", "src2", "src3", "target", "base", "case_id"} and item["base"] is None


def test_rgba_is_composited_on_black_and_extremes_map_to_minus_one_and_one(tmp_path: Path, make_rgb: MakeRGB) -> None:
    root = _make_layout(tmp_path / "split", make_rgb, with_lr=False)
    rgba = np.zeros((R_RES, R_RES, 4), dtype=np.uint8)
    rgba[:, R_RES // 2 :, :3] = 255
    rgba[..., 3] = 255
    rgba[: R_RES // 2, :, 3] = 51
    Image.fromarray(rgba, mode="RGBA").save(root / f"2_sr_{L_RES}_{R_RES}" / "case_a.png")
    src2 = FusionDataset(root, L_RES, R_RES)[0]["src2"]
    assert torch.all(src2[:, :, : R_RES // 2] == -1.0)
    assert torch.all(src2[:, R_RES // 2 :, R_RES // 2 :] == 1.0)
    assert torch.all(src2[:, : R_RES // 2, R_RES // 2 :] == 51 / 255 * 2 - 1)


def test_condition_order_and_collate(layout: Path) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    batch = collate_fusion([ds[0], ds[2]])
    assert isinstance(batch, FusionBatch) and len(batch) == 2
    assert batch.case_ids == ("case_a", "case_c")
    cond = batch.condition
    assert cond.shape == (2, 9, R_RES, R_RES)
    assert torch.equal(cond[:, 0:3], batch.src1)
    assert torch.equal(cond[:, 3:6], batch.src2)
    assert torch.equal(cond[:, 6:9], batch.src3)
    assert torch.equal(batch.src2[1], ds[2]["src2"])
    assert batch.target is not None and batch.target.shape == (2, 3, R_RES, R_RES)
    moved = batch.to("cpu")
    assert torch.equal(moved.src3, batch.src3) and moved.case_ids == batch.case_ids


def test_pairing_error_lists_the_ids_each_folder_lacks(layout: Path, make_rgb: MakeRGB) -> None:
    (layout / f"2_sr_{L_RES}_{R_RES}" / "case_c.png").unlink()
    _save(layout / f"hr_{R_RES}" / "case_zz.png", make_rgb(9, (R_RES, R_RES)))
    with pytest.raises(DatasetError) as info:
        FusionDataset(layout, L_RES, R_RES)
    message = str(info.value)
    assert f"Files in {layout} are not paired by name" in message
    assert f"  2_sr_{L_RES}_{R_RES}: missing case_c, case_zz\n" in message
    assert f"  1_sr_{L_RES}_{R_RES}: missing case_zz\n" in message
    assert f"hr_{R_RES}: missing" not in message


def test_pairing_error_truncates_long_id_lists(layout: Path, make_rgb: MakeRGB) -> None:
    for i in range(15):
        _save(layout / f"3_sr_{L_RES}_{R_RES}" / f"extra_{i:02d}.png", make_rgb(i, (R_RES, R_RES)))
    with pytest.raises(DatasetError, match=r"missing extra_00, .*extra_09, \.\.\. \(15 in total\)") as info:
        FusionDataset(layout, L_RES, R_RES)
    assert "extra_10" not in str(info.value)


def test_missing_folder_names_it_and_lists_existing(layout: Path) -> None:
    with pytest.raises(DatasetError) as info:
        FusionDataset(layout, 4, R_RES)
    message = str(info.value)
    assert str(layout / f"1_sr_4_{R_RES}") in message
    assert f"1_sr_{L_RES}_{R_RES}" in message and f"hr_{R_RES}" in message


def test_missing_dataroot(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        FusionDataset(tmp_path / "nowhere", L_RES, R_RES)


def test_lr_folders_are_not_needed(tmp_path: Path, make_rgb: MakeRGB) -> None:
    root = _make_layout(tmp_path / "split", make_rgb, with_lr=False)
    assert FusionDataset(root, L_RES, R_RES)[0]["case_id"] == "case_a"


def test_empty_folder_and_ignored_files(layout: Path) -> None:
    folder = layout / f"1_sr_{L_RES}_{R_RES}"
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"garbage")
    (folder / "sub").mkdir()
    ds = FusionDataset(layout, L_RES, R_RES)
    assert ds.case_ids == CASES
    for path in folder.glob("case_*.png"):
        path.unlink()
    with pytest.raises(DatasetError, match=f"1_sr_{L_RES}_{R_RES} contains no image files"):
        FusionDataset(layout, L_RES, R_RES)


def test_upper_case_extension_and_other_formats(layout: Path, make_rgb: MakeRGB) -> None:
    folder = layout / f"2_sr_{L_RES}_{R_RES}"
    (folder / "case_a.png").rename(folder / "case_a.PNG")
    (folder / "case_b.png").unlink()
    Image.fromarray(make_rgb(3, (R_RES, R_RES))).save(folder / "case_b.bmp")
    (folder / "case_c.png").unlink()
    palette = Image.fromarray(make_rgb(4, (R_RES, R_RES))).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(folder / "case_c.gif")
    ds = FusionDataset(layout, L_RES, R_RES)
    assert ds.case_ids == CASES
    np.testing.assert_allclose(ds[1]["src2"].numpy(), _expected(folder / "case_b.bmp"), atol=1e-6)
    np.testing.assert_allclose(ds[2]["src2"].numpy(), _expected(folder / "case_c.gif"), atol=1e-6)


def test_sixteen_bit_images_are_scaled_by_min_max(layout: Path) -> None:
    deep = np.arange(R_RES * R_RES, dtype=np.uint16).reshape(R_RES, R_RES) * 40 + 1000
    Image.fromarray(deep).save(layout / f"hr_{R_RES}" / "case_a.png")
    target = FusionDataset(layout, L_RES, R_RES)[0]["target"]
    assert target[:, 0, 0].tolist() == [-1.0] * 3 and target[:, -1, -1].tolist() == [1.0] * 3


def test_wrong_size_names_file_lazily(layout: Path, make_rgb: MakeRGB) -> None:
    bad = layout / f"3_sr_{L_RES}_{R_RES}" / "case_d.png"
    _save(bad, make_rgb(1, (R_RES + 2, R_RES + 2)))
    ds = FusionDataset(layout, L_RES, R_RES)
    ds[0]
    with pytest.raises(DatasetError, match=rf"{bad}.*18x18, expected 16x16"):
        ds[3]


def test_corrupt_file_names_file(layout: Path) -> None:
    bad = layout / f"hr_{R_RES}" / "case_e.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    ds = FusionDataset(layout, L_RES, R_RES)
    with pytest.raises(DatasetError, match=str(bad)) as info:
        ds[4]
    assert info.value.__cause__ is not None


def test_garbage_file_names_file(layout: Path) -> None:
    bad = layout / f"2_sr_{L_RES}_{R_RES}" / "case_b.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=str(bad)):
        FusionDataset(layout, L_RES, R_RES)[1]


def test_flip_flips_all_images_identically(layout: Path) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    plain, flipped = ds[(2, False)], ds[(2, True)]
    assert torch.equal(ds[2]["src1"], plain["src1"])
    for key in ("src1", "src2", "src3", "target"):
        expected = np.fliplr(plain[key].numpy().transpose(1, 2, 0)).transpose(2, 0, 1)
        np.testing.assert_array_equal(flipped[key].numpy(), expected)
        assert not torch.equal(flipped[key], plain[key])


def test_dataloader_yields_batches_in_order(layout: Path) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    loader = create_dataloader(ds, 2, shuffle=False, flip=False, num_workers=0, seed=0)
    batches = list(loader)
    assert all(isinstance(b, FusionBatch) for b in batches)
    assert [b.case_ids for b in batches] == [("case_a", "case_b"), ("case_c", "case_d"), ("case_e",)]
    assert torch.equal(batches[1].src2[0], ds[2]["src2"])


def test_dataloader_with_resumed_sampler(layout: Path) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    sampler = EpochSampler(len(ds), seed=5, shuffle=True, flip=True)
    sampler.set_epoch(1)
    order = list(sampler)
    sampler.set_epoch(1, start=2)
    loader = create_dataloader(ds, 2, shuffle=True, flip=True, num_workers=0, seed=5, sampler=sampler)
    ids = [cid for batch in loader for cid in batch.case_ids]
    assert ids == [CASES[i] for i, _ in order[2:]]
    with pytest.raises(ValueError, match="Sampler covers 4"):
        create_dataloader(ds, 2, shuffle=True, flip=True, num_workers=0, seed=5, sampler=EpochSampler(4, 0, True, True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_keeps_global_rng_state(layout: Path, num_workers: int) -> None:
    ds = FusionDataset(layout, L_RES, R_RES)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    loader = create_dataloader(ds, 2, shuffle=True, flip=True, num_workers=num_workers, seed=7)
    ids = [cid for batch in loader for cid in batch.case_ids]
    assert sorted(ids) == list(CASES)
    assert torch.equal(torch.get_rng_state(), state)


def test_require_target_false_without_hr(tmp_path: Path, make_rgb: MakeRGB) -> None:
    root = _make_layout(tmp_path / "split", make_rgb, with_hr=False)
    with pytest.raises(DatasetError, match=f"hr_{R_RES}"):
        FusionDataset(root, L_RES, R_RES)
    ds = FusionDataset(root, L_RES, R_RES, require_target=False)
    assert ds[0]["target"] is None
    batch = next(iter(create_dataloader(ds, 3, shuffle=False, flip=False, num_workers=0, seed=0)))
    assert batch.target is None and batch.src1.shape == (3, 3, R_RES, R_RES)


def test_require_target_false_still_loads_existing_hr(layout: Path) -> None:
    assert FusionDataset(layout, L_RES, R_RES, require_target=False)[0]["target"] is not None


def test_data_len(layout: Path) -> None:
    assert FusionDataset(layout, L_RES, R_RES, data_len=3).case_ids == CASES[:3]
    assert FusionDataset(layout, L_RES, R_RES, data_len=99).case_ids == CASES
    with pytest.raises(DatasetError, match="data_len"):
        FusionDataset(layout, L_RES, R_RES, data_len=0)


def _items(ds: FusionDataset, items: list) -> list[dict]:
    return [ds[item] for item in items]


def test_cached_items_are_the_same_bytes_and_read_each_file_once(layout: Path) -> None:
    items = [0, (1, True), (2, False, Crop(4, 8, 8)), (2, True, Crop(0, 4, 8)), (4, True)]
    plain = _items(FusionDataset(layout, L_RES, R_RES), items)
    cached = FusionDataset(layout, L_RES, R_RES, cache_images=True)
    assert cached.caches_images and not FusionDataset(layout, L_RES, R_RES).caches_images
    first = _items(cached, items)
    for folder in layout.iterdir():
        for path in folder.iterdir():
            path.unlink()
    again = _items(cached, items)  # every file is gone: the second pass can only come from the cache
    for one, two, three in zip(plain, first, again):
        for key in ("src1", "src2", "src3", "target"):
            assert torch.equal(one[key], two[key]) and torch.equal(one[key], three[key])
    with pytest.raises(DatasetError, match="case_d"):  # never read before: not in the cache
        cached[3]


def test_cache_keeps_the_size_check_and_does_not_store_a_bad_image(layout: Path, make_rgb: MakeRGB) -> None:
    bad = layout / f"3_sr_{L_RES}_{R_RES}" / "case_d.png"
    _save(bad, make_rgb(1, (R_RES + 2, R_RES + 2)))
    ds = FusionDataset(layout, L_RES, R_RES, cache_images=True)
    for _ in range(2):
        with pytest.raises(DatasetError, match=rf"{bad}.*18x18, expected 16x16"):
            ds[3]


def test_cached_loader_keeps_its_worker_and_cache_between_epochs(layout: Path) -> None:
    def two_epochs(ds: FusionDataset, between: Callable[[], None]) -> list[torch.Tensor]:
        sampler = EpochSampler(len(ds), seed=3, shuffle=True, flip=True)
        loader = create_dataloader(ds, 2, shuffle=True, flip=True, num_workers=1, seed=3, sampler=sampler)
        assert loader.persistent_workers == ds.caches_images
        out = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            out += [torch.cat([b.src1, b.src2, b.src3, b.target]) for b in loader]
            between()
        return out

    def delete_all() -> None:
        for path in layout.glob("*/*"):
            path.unlink()

    plain = two_epochs(FusionDataset(layout, L_RES, R_RES), lambda: None)
    cached = two_epochs(FusionDataset(layout, L_RES, R_RES, cache_images=True), delete_all)
    assert len(plain) == len(cached) == 6 and all(torch.equal(a, b) for a, b in zip(plain, cached))
