"""Tests of data/layout.py: the dataset folder names and how one case is written."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.layout import SPLITS, hr_dir, lr_dir, split_dir, sr_dir, write_case
from data.resample import degrade


MakeRGB = Callable[..., np.ndarray]


def test_folder_names(tmp_path: Path) -> None:
    assert [split_dir(tmp_path, s).name for s in SPLITS] == ["train", "val", "test"]
    assert sr_dir(tmp_path, 2, 16, 64) == tmp_path / "2_sr_16_64"
    assert lr_dir(tmp_path, 3, 8) == tmp_path / "3_lr_8"
    assert hr_dir(tmp_path, 64) == tmp_path / "hr_64"
    with pytest.raises(ValueError, match="holdout"):
        split_dir(tmp_path, "holdout")
    with pytest.raises(ValueError, match="unknown source 4"):
        sr_dir(tmp_path, 4, 16, 64)
    with pytest.raises(ValueError, match="unknown source 0"):
        lr_dir(tmp_path, 0, 16)


def test_write_case_writes_target_and_degraded_sources(tmp_path: Path, make_rgb: MakeRGB) -> None:
    sources, target = [Image.fromarray(make_rgb(k)) for k in range(3)], Image.fromarray(make_rgb(9))
    write_case(tmp_path, "c.1", sources, target, [8, 4])
    expected = {"hr_16"} | {f"{k}_{kind}" for k in (1, 2, 3) for kind in ("lr_8", "lr_4", "sr_8_16", "sr_4_16")}
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert all([p.name for p in (tmp_path / name).iterdir()] == ["c.1.png"] for name in expected)
    assert np.array_equal(np.asarray(Image.open(hr_dir(tmp_path, 16) / "c.1.png")), np.asarray(target))
    lr, sr = degrade(sources[1], 4)
    assert np.array_equal(np.asarray(Image.open(lr_dir(tmp_path, 2, 4) / "c.1.png")), np.asarray(lr))
    assert np.array_equal(np.asarray(Image.open(sr_dir(tmp_path, 2, 4, 16) / "c.1.png")), np.asarray(sr))


def test_write_case_rejects_sizes_and_counts(tmp_path: Path, make_rgb: MakeRGB) -> None:
    source = Image.fromarray(make_rgb(0))
    with pytest.raises(ValueError, match=r"case 'a'.*\(16, 16\), \(16, 17\)"):
        write_case(tmp_path, "a", [source] * 3, Image.fromarray(make_rgb(1, (17, 16))), [8])
    with pytest.raises(ValueError, match="case 'b': expected three sources"):
        write_case(tmp_path, "b", [source] * 2, source, [8])
    assert not any(tmp_path.iterdir())
