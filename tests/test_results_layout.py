"""Tests of core/results_layout.py: the file names of a results folder and how one case is written."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.results_layout import KINDS, fused_case_ids, result_path, uncertainty_image, write_case


SHAPE = (5, 7)
MakeRGB = Callable[..., np.ndarray]


def test_result_path_names_every_kind_and_rejects_others(tmp_path: Path) -> None:
    assert [result_path(tmp_path, "c 1.v2", kind).name for kind in KINDS] == [
        "c 1.v2_src1.png", "c 1.v2_src2.png", "c 1.v2_src3.png", "c 1.v2_fused.png", "c 1.v2_hr.png",
        "c 1.v2_process.png", "c 1.v2_uncertainty.png"]
    with pytest.raises(ValueError, match="unknown result kind 'gt'.*src1, src2, src3, fused, hr, process, unc"):
        result_path(tmp_path, "c", "gt")


def test_write_case_writes_pngs_that_read_back_exactly(tmp_path: Path, make_rgb: MakeRGB) -> None:
    folder = tmp_path / "new" / "method"
    sources, fused = [make_rgb(k, SHAPE) for k in range(3)], make_rgb(3, SHAPE)
    write_case(folder, "a", sources, fused)
    write_case(folder, "b", sources, fused, target=make_rgb(4, SHAPE), process=make_rgb(5, (5, 21)),
               uncertainty=make_rgb(6, SHAPE)[..., 0])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"a_{k}.png" for k in KINDS[:4]] + [f"b_{k}.png" for k in KINDS])
    for kind, expected in (("src2", sources[1]), ("fused", fused)):
        assert np.array_equal(np.asarray(Image.open(result_path(folder, "a", kind))), expected)
    assert np.array_equal(np.asarray(Image.open(result_path(folder, "b", "process"))), make_rgb(5, (5, 21)))
    with Image.open(result_path(folder, "b", "uncertainty")) as grey:
        assert grey.mode == "L" and np.array_equal(np.asarray(grey), make_rgb(6, SHAPE)[..., 0])
    reference = tmp_path / "reference.png"
    Image.fromarray(fused).save(reference)
    assert result_path(folder, "b", "fused").read_bytes() == reference.read_bytes()


def test_write_case_rejects_wrong_images(tmp_path: Path, make_rgb: MakeRGB) -> None:
    with pytest.raises(ValueError, match="three sources"):
        write_case(tmp_path, "a", [make_rgb(0, SHAPE)] * 2, make_rgb(1, SHAPE))
    with pytest.raises(ValueError, match=r"a_fused\.png: expected an \(H, W, 3\) uint8 image"):
        write_case(tmp_path, "a", [make_rgb(0, SHAPE)] * 3, make_rgb(1, SHAPE).astype(np.float32))


def test_fused_case_ids(tmp_path: Path, make_rgb: MakeRGB) -> None:
    assert fused_case_ids(tmp_path / "missing") == set()
    write_case(tmp_path, "x_fused", [make_rgb(0, SHAPE)] * 3, make_rgb(1, SHAPE))
    write_case(tmp_path, "y", [make_rgb(0, SHAPE)] * 3, make_rgb(1, SHAPE))
    result_path(tmp_path, "z", "src1").write_bytes(b"")
    (tmp_path / "w_fused.png").mkdir()
    assert fused_case_ids(tmp_path) == {"x_fused", "y"}


def test_uncertainty_image_is_sixteen_levels_per_grey_level_saturating_at_255() -> None:
    spread = np.array([[0.0, 0.02, 0.03125, 0.1], [1.0, 10.0, 255 / 16, 500.0]])
    expected = np.array([[0, 0, 0, 2], [16, 160, 255, 255]], np.uint8)  # 0.5 rounds to even
    assert np.array_equal(uncertainty_image(spread), expected)
    with pytest.raises(ValueError, match=r"\(H, W\) spread"):
        uncertainty_image(np.zeros((2, 2, 3)))
