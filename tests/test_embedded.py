"""Tests for the embedded MNI152 tri-modal dataset, the fusion rule and the resampling routine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.outputs import FOLDER_MARKER
from data.builders import embedded
from data.builders.embedded import build_embedded_dataset, ensure_embedded_dataset, main
from data.fusion_dataset import DatasetError
from data.fusion_rules import fuse, laplacian_ycbcr, rgb_to_ycbcr
from data.layout import SPLITS, split_dir
from data.resample import degrade, resize_bicubic

R, SCALES, LIMIT = 32, (2, 4), 3


def _folders(r: int, scales: tuple[int, ...]) -> set[str]:
    names = {f"hr_{r}"}
    for scale in scales:
        l_res = r // scale
        names |= {f"{i}_lr_{l_res}" for i in (1, 2, 3)} | {f"{i}_sr_{l_res}_{r}" for i in (1, 2, 3)}
    return names


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("embedded")
    roots = {
        "a": ensure_embedded_dataset(base / "a", R, SCALES, seed=0, progress=False, limit=LIMIT),
        "b": build_embedded_dataset(base / "b", R, SCALES, seed=0, limit=LIMIT, progress=False),
        "c": build_embedded_dataset(base / "c", R, SCALES, seed=1, limit=LIMIT, progress=False),
    }
    return roots


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


@pytest.mark.slow
def test_manifest_and_layout_pairing(built: dict[str, Path]) -> None:
    root = built["a"]
    manifest = _manifest(root)
    assert manifest["modalities"] == ["MR-T1", "MR-T2", "SPECT"]
    assert manifest["fusion_rule"] == "laplacian_ycbcr"
    assert (manifest["r_resolution"], manifest["scales"], manifest["seed"]) == (R, list(SCALES), 0)
    assert "format_version" in manifest
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, "manifest.json", FOLDER_MARKER])
    for split in SPLITS:
        ids = manifest["splits"][split]
        assert 1 <= len(ids) <= LIMIT
        assert all(cid.startswith("mni_z") and len(cid) == 8 for cid in ids)
        folder = split_dir(root, split)
        assert {p.name for p in folder.iterdir()} == _folders(R, SCALES)
        for sub in folder.iterdir():
            assert sorted(p.stem for p in sub.glob("*.png")) == sorted(ids), sub


def test_split_dir_rejects_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holdout"):
        split_dir(tmp_path, "holdout")


@pytest.mark.slow
def test_image_sizes_and_modes(built: dict[str, Path]) -> None:
    for split in SPLITS:
        for sub in split_dir(built["a"], split).iterdir():
            side = int(sub.name.split("_")[-1])
            for png in sub.glob("*.png"):
                with Image.open(png) as img:
                    assert img.mode == "RGB" and img.size == (side, side), png


@pytest.mark.slow
def test_grey_modalities_are_grey_and_spect_is_colourful(built: dict[str, Path]) -> None:
    for split in SPLITS:
        folder = split_dir(built["a"], split)
        for png in folder.glob("[12]_*/*.png"):
            arr = np.asarray(Image.open(png))
            assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]), png
        for png in folder.glob(f"3_sr_*_{R}/*.png"):
            ycc = rgb_to_ycbcr(np.asarray(Image.open(png)))
            chroma = np.abs(ycc[..., 1:] - 128.0).sum(axis=-1)
            assert chroma.mean() > 10.0 and chroma.max() > 80.0, png


@pytest.mark.slow
def test_same_seed_is_byte_identical_other_seed_changes_spect_only(built: dict[str, Path]) -> None:
    files_a, files_b, files_c = (_all_files(built[k]) for k in ("a", "b", "c"))
    assert files_a == files_b and len(files_a) > 0
    assert files_a.keys() == files_c.keys()
    for name, data in files_a.items():
        modality = Path(name).parent.name.split("_")[0]
        if modality in ("1", "2"):
            assert data == files_c[name], name
        elif Path(name).parent.name == f"3_sr_{R // 2}_{R}":
            assert data != files_c[name], name


@pytest.mark.slow
def test_splits_are_disjoint_with_gaps() -> None:
    volumes = embedded._prepared_volumes()
    splits = embedded._split_slices(embedded._usable_slices(volumes))
    assert len(splits["val"]) == 8 and len(splits["test"]) == 16 and len(splits["train"]) > 50
    for first in SPLITS:
        for second in SPLITS:
            if first < second:
                gaps = [abs(a - b) for a in splits[first] for b in splits[second]]
                assert min(gaps) > 3, (first, second)
    for z in splits["train"] + splits["val"] + splits["test"]:
        assert volumes.mask[z].mean() >= 0.15


@pytest.mark.slow
def test_limited_build_ids_disjoint(built: dict[str, Path]) -> None:
    splits = _manifest(built["a"])["splits"]
    ids = [cid for split in SPLITS for cid in splits[split]]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_ensure_reuses_existing(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("must not rebuild")

    monkeypatch.setattr(embedded, "build_embedded_dataset", fail)
    assert ensure_embedded_dataset(built["a"], R, SCALES, seed=0, progress=False, limit=LIMIT) == built["a"]
    assert main(["--root", str(built["a"]), "--size", str(R), "--scales", "2", "4", "--limit", str(LIMIT),
                 "--quiet"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize(("kwargs", "key"), [({"seed": 1}, "seed"), ({"r_resolution": 64}, "r_resolution"),
                                             ({"scales": (2,)}, "scales"), ({"limit": None}, "limit")])
def test_ensure_refuses_mismatched_parameters(built: dict[str, Path], kwargs: dict, key: str) -> None:
    params = {"r_resolution": R, "scales": SCALES, "seed": 0, "limit": LIMIT, **kwargs}
    before = _all_files(built["a"])
    with pytest.raises(DatasetError, match=key) as info:  # an input error: exit 2 in sr.py and infer.py
        ensure_embedded_dataset(built["a"], params["r_resolution"], params["scales"], params["seed"],
                                progress=False, limit=params["limit"])
    assert str(built["a"]) in str(info.value)
    assert _all_files(built["a"]) == before


@pytest.mark.slow
def test_cli_reports_mismatch(built: dict[str, Path]) -> None:
    argv = ["--root", str(built["a"]), "--size", str(R), "--scales", "2", "4", "--seed", "5", "--limit", "3"]
    assert main(argv) == 2


@pytest.mark.slow
def test_build_refuses_non_empty_root_and_leaves_no_temp(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        build_embedded_dataset(tmp_path, R, SCALES, limit=1, progress=False)
    assert [p.name for p in built["a"].parent.iterdir() if p.name.startswith(".")] == []


def test_build_rejects_scale_not_dividing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale 3"):
        build_embedded_dataset(tmp_path / "d", R, (3,), progress=False)
    assert not (tmp_path / "d").exists()


def _grey(value: np.ndarray) -> np.ndarray:
    return np.repeat(value[..., None], 3, axis=-1).astype(np.uint8)


def test_fusion_shape_dtype_and_identity() -> None:
    rng = np.random.default_rng(0)
    for shape in [(8, 8), (13, 21), (40, 40)]:
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        out = fuse("laplacian_ycbcr", [img, img, img])
        assert out.shape == (*shape, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


def test_fusion_keeps_colour_and_detail() -> None:
    rng = np.random.default_rng(1)
    t1 = _grey(rng.integers(0, 256, (32, 32)))
    t2 = _grey(np.full((32, 32), 100))
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    colour[8:24, 8:24] = (230, 40, 20)
    out = laplacian_ycbcr([t1, t2, colour])
    ycc_out, ycc_colour = rgb_to_ycbcr(out), rgb_to_ycbcr(colour)
    inside = (slice(10, 22), slice(10, 22))
    assert ycc_out[inside][..., 2].mean() > 150.0
    assert np.abs(ycc_out[..., 1:] - ycc_colour[..., 1:]).mean() < 6.0
    assert np.corrcoef(ycc_out[..., 0].ravel(), t1[..., 0].ravel().astype(float))[0, 1] > 0.5


def test_fusion_errors() -> None:
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    b = np.zeros((16, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(16, 20, 3\)"):
        fuse("laplacian_ycbcr", [a, a, b])
    with pytest.raises(ValueError, match="laplacian_ycbcr"):
        fuse("wavelet", [a, a, a])
    with pytest.raises(ValueError, match="uint8"):
        fuse("laplacian_ycbcr", [a, a, a.astype(np.float32)])


def test_resize_bicubic_sizes_and_rule() -> None:
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    assert resize_bicubic(img, 12).size == (12, 12)
    assert resize_bicubic(img, (15, 10)).size == (15, 10)
    expected = img.resize((7, 9), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(resize_bicubic(img, (7, 9))), np.asarray(expected))
    with pytest.raises(ValueError, match="mode"):
        resize_bicubic(img.convert("F"), 4)


def test_degrade_returns_documented_pair() -> None:
    hr = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    lr, sr = degrade(hr, 8)
    assert lr.size == (8, 8) and sr.size == (32, 32)
    assert np.array_equal(np.asarray(lr), np.asarray(hr.resize((8, 8), Image.Resampling.BICUBIC)))
    assert np.array_equal(np.asarray(sr), np.asarray(lr.resize((32, 32), Image.Resampling.BICUBIC)))
    with pytest.raises(ValueError, match="square"):
        degrade(hr.crop((0, 0, 32, 16)), 8)


@pytest.mark.slow
@pytest.mark.parametrize("invocation", [["data/builders/embedded.py"], ["-m", "data.builders.embedded"]])
def test_cli_runs_as_script_and_module(tmp_path: Path, invocation: list[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, *invocation, "--root", str(tmp_path / "e"), "--size", "32", "--scales", "4",
                          "--limit", "2", "--quiet"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "e" / "manifest.json").is_file()
