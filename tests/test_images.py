"""Tests of data/images.py: the one image reader, the [-1, 1] mapping and the pairing of files by stem."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import IMAGE_EXTENSIONS, ImageReadError, PairingError, format_ids, list_by_stem, pair_by_stem, \
    read_image, to_tensor
from metrics.registry import tensor2img

EXIF_ORIENTATION = 0x0112


def test_read_image_modes(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (200, 100, 50, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [100, 50, 25]
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], np.uint16)).save(tmp_path / "b.png")
    assert read_image(tmp_path / "b.png")[..., 0].tolist() == [[0, 64], [128, 255]]
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "c.gif")
    assert read_image(tmp_path / "c.gif")[0, 1].tolist() == [255, 0, 0]
    Image.fromarray(np.full((3, 3), 77, np.uint8)).save(tmp_path / "d.jpg", quality=100)
    grey = read_image(tmp_path / "d.jpg")
    assert grey.shape == (3, 3, 3) and grey.dtype == np.uint8 and (grey[..., 0] == grey[..., 2]).all()


def test_read_image_float_constant_and_palette_transparency(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-1.5, 0.5], [2.5, 0.5]], np.float32)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[..., 1].tolist() == [[0, 128], [255, 128]]
    Image.fromarray(np.full((2, 2), 9, np.int32)).save(tmp_path / "i.tif")
    assert not read_image(tmp_path / "i.tif").any()
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "t.png", transparency=0)
    assert read_image(tmp_path / "t.png").tolist() == [[[0, 0, 0], [255, 0, 0]]]


def test_read_image_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored rotated: display = stored turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif)
    upright = read_image(tmp_path / "r.png")
    assert upright.shape == (3, 2, 3)
    assert upright[0, 1].tolist() == [255, 255, 255] and upright.sum() == 3 * 255


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=str(tmp_path / "missing.png")):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"cannot read image .*bad\.png") as info:
        read_image(tmp_path / "bad.png")
    assert isinstance(info.value, ValueError)


def test_to_tensor_maps_to_minus_one_one_and_tensor2img_inverts_it() -> None:
    array = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    array[0, 0], array[0, 1] = 0, 255
    tensor = to_tensor(array[:, ::-1])
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    assert tensor[:, 0, -1].tolist() == [-1.0] * 3 and tensor[:, 0, -2].tolist() == [1.0] * 3
    torch.testing.assert_close(tensor, torch.from_numpy(array[:, ::-1].transpose(2, 0, 1) / 255 * 2 - 1).float())
    assert np.array_equal(tensor2img(tensor), array[:, ::-1])
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(array.astype(np.float32))


def test_list_by_stem(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.v1.jpg", "c.gif", ".hidden.png", "notes.txt", "x.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    found, skipped = list_by_stem(tmp_path)
    assert found == {"a.v1": tmp_path / "a.v1.jpg", "b": tmp_path / "b.PNG", "c": tmp_path / "c.gif"}
    assert skipped == [tmp_path / "notes.txt", tmp_path / "sub.png", tmp_path / "x.nii.gz"]
    assert list_by_stem(tmp_path, (".nii.gz",))[0] == {"x": tmp_path / "x.nii.gz"}
    (tmp_path / "b.tif").write_bytes(b"")
    with pytest.raises(PairingError, match="ambiguous case id 'b'.*b.PNG and b.tif"):
        list_by_stem(tmp_path)
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff"}


def test_pair_by_stem_names_what_each_listing_lacks() -> None:
    assert pair_by_stem({"A": {"b", "a"}, "B": ["a", "b"]}) == ["a", "b"]
    assert pair_by_stem({"A": [], "B": []}) == []
    with pytest.raises(PairingError) as info:
        pair_by_stem({"A": {"a", "b"}, "B": {"a", "c"}, "C": {"a", "b", "c"}})
    assert str(info.value) == "  A: missing c\n  B: missing b"


def test_format_ids_cuts_long_lists() -> None:
    assert format_ids({"b", "a"}) == "a, b"
    ids = [f"id{i:02d}" for i in range(12)]
    assert format_ids(ids) == ", ".join(ids[:10]) + ", ... (12 in total)"
