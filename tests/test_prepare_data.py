"""Tests of data/prepare_data.py (with data/builders/splits.py and data/builders/volumes.py): both input forms,
every refusal case, and a prepare -> sr.py round trip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import sr
from core.outputs import FOLDER_MARKER
from data.builders.splits import PrepareError, allocate_counts, slab_split, split_by_subject, subjects_of_stems
from data.fusion_rules import fuse
from data.images import read_image
from data.prepare_data import main
from data.resample import degrade

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def _grey(seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth-ish grey test image (size x size uint8) with a black border."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    img[4:-4, 4:-4] = rng.integers(20, 255, (size - 8, size - 8))
    return img


def _make_slices(root: Path, n_cases: int = 4, gt: bool = False) -> Path:
    """T1 (grey L), T2 (16-bit), SPECT (RGB pseudo-colour) folders with n_cases matching stems; odd file names."""
    for name in ("T1", "T2", "SPECT") + (("GT",) if gt else ()):
        (root / name).mkdir(parents=True)
    for k in range(n_cases):
        stem = f"case {k:02d}.v1"
        Image.fromarray(_grey(k)).save(root / "T1" / f"{stem}.png")
        Image.fromarray(_grey(100 + k).astype(np.uint16) * 200).save(root / "T2" / f"{stem}.PNG")
        colour = np.stack([_grey(200 + k), _grey(300 + k) // 2, np.zeros((SIZE, SIZE), np.uint8)], axis=-1)
        Image.fromarray(colour).save(root / "SPECT" / f"{stem}.gif" if k % 2 else root / "SPECT" / f"{stem}.bmp")
        if gt:
            Image.fromarray(colour[::-1]).save(root / "GT" / f"{stem}.png")
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args] + ["--quiet"])
    return code, capsys.readouterr().err


def _slices_args(inp: Path, out: Path, *extra: object) -> list[object]:
    return ["slices", "--input", inp, "--folders", "T1", "T2", "SPECT", "--out", out, "--size", SIZE, *extra]


def _no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------------------------ splits


def test_allocate_and_slabs() -> None:
    assert allocate_counts(10, (8, 1, 1), "cases") == [8, 1, 1]
    assert allocate_counts(3, (8, 1, 1), "cases") == [1, 1, 1]
    assert allocate_counts(5, (0, 0, 1), "cases") == [0, 0, 5]
    assignment = slab_split(list(range(30)), (8, 1, 1), 2, "slices")
    letters = "".join({"train": "R", "val": "V", "test": "T"}.get(assignment.get(i, ""), "-") for i in range(30))
    assert letters == "R" * 9 + "--" + "V" * 3 + "--" + "T" * 2 + "--" + "R" * 10


# subject grouping (--group): 7 subjects with 1 to 7 slices each, stems like "sub03_z005"
GROUPED_STEMS = [f"sub{s:02d}_z{z:03d}" for s in range(1, 8) for z in range(s)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratios", [(8, 1, 1), (1, 1, 1), (3, 0, 1)])
def test_group_keeps_every_subject_in_one_split(seed: int, ratios: tuple[int, int, int]) -> None:
    splits, subjects = split_by_subject(GROUPED_STEMS, r"^(sub\d+)_", ratios, seed)
    assert sorted(stem for ids in splits.values() for stem in ids) == sorted(GROUPED_STEMS)
    where = {stem[:5]: {split for split, ids in splits.items() if any(i.startswith(stem[:5]) for i in ids)}
             for stem in GROUPED_STEMS}
    assert all(len(found) == 1 for found in where.values()), where  # no subject straddles two splits
    assert [len(subjects[s]) for s in ("train", "val", "test")] == allocate_counts(7, ratios, "subjects")
    assert all(stem[:5] in subjects[split] for split, ids in splits.items() for stem in ids)


def test_group_uses_the_whole_match_without_a_group_and_names_a_stem_it_does_not_match() -> None:
    assert subjects_of_stems(["sub01_z001", "x_sub02_z7"], r"sub\d+") == {"sub01_z001": "sub01", "x_sub02_z7": "sub02"}
    with pytest.raises(PrepareError, match=re.escape("--group '^(sub\\d+)_' does not match the stem 'scan7'")):
        subjects_of_stems(["sub01_z001", "scan7"], r"^(sub\d+)_")
    with pytest.raises(PrepareError, match="empty first group for the stem 'sub_1'"):
        subjects_of_stems(["sub_1"], r"^sub(\d*)_")
    with pytest.raises(PrepareError, match="not a valid regular expression"):
        subjects_of_stems(["sub01"], "(sub")
    with pytest.raises(PrepareError, match="2 subjects \\(--group\\) cannot fill 3 non-empty splits"):
        split_by_subject(["a_1", "a_2", "b_1"], "^(.)_", (8, 1, 1), 0)


def test_group_that_misses_a_stem_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_slices(tmp_path / "in")  # stems "case 00.v1" ...
    code, err = _run(capsys, *_slices_args(inp, tmp_path / "out", "--scales", 4, "--group", r"^case (0[0-2])"))
    assert code == 2 and "does not match the stem 'case 03.v1'" in err, err
    _no_output(tmp_path / "out")


@pytest.mark.slow
def test_grouped_slices_of_a_subject_land_in_one_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_slices(tmp_path / "in", n_cases=9)
    for path in sorted(inp.rglob("case *")):  # case 00..08 -> subject p0, p1, p2 with three slices each
        k = int(path.name[5:7])
        path.rename(path.with_name(f"p{k // 3}_slice{k % 3}{path.suffix}"))
    out = tmp_path / "out"
    code, err = _run(capsys, *_slices_args(inp, out, "--scales", 4, "--split", "1:1:1", "--group", r"^(p\d)_"))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["group"] == r"^(p\d)_"
    assert sorted(sum(manifest["subject_splits"].values(), [])) == ["p0", "p1", "p2"]
    for split, (subject,) in manifest["subject_splits"].items():
        expected = [f"{subject}_slice{i}" for i in range(3)]
        assert manifest["splits"][split] == expected
        assert sorted(p.stem for p in (out / split / "hr_32").iterdir()) == expected


# ------------------------------------------------------------------------------------------------ slice folders


@pytest.mark.slow
def test_slices_layout_modes_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _make_slices(tmp_path / "in", n_cases=10), tmp_path / "out"
    (inp / "T1" / "notes.txt").write_text("not an image")
    code, err = _run(capsys, *_slices_args(inp, out, "--scales", 2, 4, "--modalities", "MR-T1", "MR-T2", "SPECT"))
    assert code == 0, err
    assert "warning: skipping" in err and "notes.txt" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality_order"] == "MR-T1/MR-T2/SPECT" and manifest["l_resolutions"] == [16, 8]
    assert [len(manifest["splits"][s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert manifest["ground_truth"]["rule"] == "laplacian_ycbcr" and manifest["skipped_files"][0].endswith("notes.txt")
    case = manifest["splits"]["val"][0]
    split = out / "val"
    folders = {p.name for p in split.iterdir()}
    kinds = ("lr_16", "lr_8", "sr_16_32", "sr_8_32")
    assert folders == {f"{i}_{kind}" for i in (1, 2, 3) for kind in kinds} | {"hr_32"}
    srcs = [np.asarray(Image.open(split / f"{i}_sr_8_32" / f"{case}.png")) for i in (1, 2, 3)]
    assert all(s.shape == (SIZE, SIZE, 3) for s in srcs)
    assert (srcs[0][..., 0] == srcs[0][..., 1]).all() and (srcs[1][..., 0] == srcs[1][..., 2]).all()
    assert not (srcs[2][..., 0] == srcs[2][..., 1]).all()
    hr_sources = [read_image(next((inp / m).glob(f"{case}.*"))) for m in ("T1", "T2", "SPECT")]
    assert np.array_equal(np.asarray(Image.open(split / "hr_32" / f"{case}.png")), fuse("laplacian_ycbcr", hr_sources))
    lr, sr_img = degrade(Image.fromarray(hr_sources[2]), 8)
    assert np.array_equal(np.asarray(Image.open(split / "3_lr_8" / f"{case}.png")), np.asarray(lr))
    assert np.array_equal(np.asarray(Image.open(split / "3_sr_8_32" / f"{case}.png")), np.asarray(sr_img))


@pytest.mark.slow
def test_slices_gt_folder_padding_and_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_slices(tmp_path / "in", n_cases=6, gt=True)
    code, err = _run(capsys, *_slices_args(inp, tmp_path / "a", "--size", 16, "--lr-sizes", 8, "--split", "0:0:1"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["ground_truth"]["source"] == "given" and len(manifest["splits"]["test"]) == 6
    assert not (tmp_path / "a" / "train").exists()
    hr = np.asarray(Image.open(tmp_path / "a" / "test" / "hr_16" / "case 00.v1.png"))
    gt = np.asarray(Image.open(inp / "GT" / "case 00.v1.png").resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(hr, gt)
    splits = []
    for name, seed in (("b", 1), ("c", 1), ("d", 2)):
        args = _slices_args(inp, tmp_path / name, "--scales", 4, "--split", "2:2:2", "--seed", seed)
        assert _run(capsys, *args)[0] == 0
        splits.append(json.loads((tmp_path / name / "manifest.json").read_text())["splits"])
    assert splits[0] == splits[1] and splits[0] != splits[2]


@pytest.mark.slow
def test_non_square_images_are_padded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "in" / name).mkdir(parents=True)
        Image.fromarray(np.full((16, 32), 255, np.uint8)).save(tmp_path / "in" / name / "x.png")
    args = ["slices", "--input", tmp_path / "in", "--modalities", "a", "b", "c", "--out", tmp_path / "o",
            "--size", 32, "--scales", 2, "--split", "0:0:1"]
    assert _run(capsys, *args)[0] == 0
    hr = np.asarray(Image.open(tmp_path / "o" / "test" / "1_sr_16_32" / "x.png"))[..., 0]
    assert hr[0].max() < 10 and hr[16].min() > 245


@pytest.mark.slow
def test_workers_match_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_slices(tmp_path / "in", n_cases=3)
    for name, workers in (("w0", 0), ("w2", 2)):
        assert _run(capsys, *_slices_args(inp, tmp_path / name, "--scales", 4, "--workers", workers))[0] == 0
    files = sorted(p.relative_to(tmp_path / "w0") for p in (tmp_path / "w0").rglob("*.png"))
    assert files and files == sorted(p.relative_to(tmp_path / "w2") for p in (tmp_path / "w2").rglob("*.png"))
    assert all((tmp_path / "w0" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes() for f in files)


# ------------------------------------------------------------------------------------------------ robustness


def _break_missing_folder(inp: Path) -> str:
    for path in (inp / "T2").iterdir():
        path.unlink()
    (inp / "T2").rmdir()
    return "missing modality folder"


def _break_unpaired(inp: Path) -> str:
    (inp / "T1" / "case 01.v1.png").unlink()
    (inp / "SPECT" / "case 02.v1.bmp").unlink()
    return "T1: missing case 01.v1"


def _break_size(inp: Path) -> str:
    Image.fromarray(_grey(5, 24)).save(inp / "T1" / "case 02.v1.png")
    return "differ in size"


def _break_truncated(inp: Path) -> str:
    path = inp / "T1" / "case 03.v1.png"
    path.write_bytes(path.read_bytes()[:60])
    return "cannot read image"


def _break_not_an_image(inp: Path) -> str:
    (inp / "T1" / "case 00.v1.png").write_text("hello")
    return "cannot read image"


def _break_empty(inp: Path) -> str:
    for folder in inp.iterdir():
        for path in folder.iterdir():
            path.unlink()
    return "no input files"


@pytest.mark.parametrize("breaker", [_break_missing_folder, _break_unpaired, _break_size, _break_truncated,
                                     _break_not_an_image, _break_empty])
def test_slice_errors_leave_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], breaker) -> None:
    inp = _make_slices(tmp_path / "in")
    expected = breaker(inp)
    code, err = _run(capsys, *_slices_args(inp, tmp_path / "out", "--scales", 4, "--split", "1:1:1"))
    assert code == 2 and "error:" in err and expected in err, err
    _no_output(tmp_path / "out")


@pytest.mark.slow
def test_size_mismatch_with_resize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_slices(tmp_path / "in")
    _break_size(inp)
    assert _run(capsys, *_slices_args(inp, tmp_path / "out", "--scales", 4, "--resize"))[0] == 0
    assert len(list((tmp_path / "out").rglob("hr_32/*.png"))) == 4


@pytest.mark.parametrize("options, message", [(["--scales", 3], "does not divide --size 32"),
                                              (["--lr-sizes", 12], "does not divide --size 32"),
                                              (["--split", "8:1"], "--split")])
def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[object], message: str) -> None:
    code, err = _run(capsys, *_slices_args(_make_slices(tmp_path / "in"), tmp_path / "out", *options))
    assert code == 2 and message in err
    _no_output(tmp_path / "out")


@pytest.mark.slow
def test_existing_output_refused_then_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _make_slices(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    for extra in ([], ["--overwrite"]):  # a folder the project did not write (no marker): never replaced (issue 22)
        code, err = _run(capsys, *_slices_args(inp, out, "--scales", 4, *extra))
        assert code == 2 and "was not written by TFS-Diff" in err and (out / "keep.txt").read_text() == "old"
    (out / FOLDER_MARKER).write_text("{}\n")  # now it counts as a previous output of the project
    code, err = _run(capsys, *_slices_args(inp, out, "--scales", 4))
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").read_text() == "old"
    _break_truncated(inp)
    assert _run(capsys, *_slices_args(inp, out, "--scales", 4, "--overwrite"))[0] == 2
    assert sorted(p.name for p in out.iterdir()) == [FOLDER_MARKER, "keep.txt"]
    (inp / "T1" / "case 03.v1.png").unlink()
    Image.fromarray(_grey(3)).save(inp / "T1" / "case 03.v1.png")
    assert _run(capsys, *_slices_args(inp, out, "--scales", 4, "--overwrite"))[0] == 0
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists() and (out / FOLDER_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.parametrize("invocation", [["data/prepare_data.py"], ["-m", "data.prepare_data"]])
def test_cli_script_and_module(tmp_path: Path, invocation: list[str]) -> None:
    inp = _make_slices(tmp_path / "in")
    _break_unpaired(inp)
    args = [str(a) for a in _slices_args(inp, tmp_path / "out", "--scales", 4)]
    run = subprocess.run([sys.executable, *invocation, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "case 01.v1" in run.stderr
    help_text = subprocess.run([sys.executable, *invocation, "slices", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    assert "skipped with a warning" in " ".join(help_text.split())


# ------------------------------------------------------------------------------------------------ volumes


def _volume(seed: int, shape: tuple[int, int, int] = (20, 24, 30)) -> np.ndarray:
    """Ellipsoid 'head' with noise; slices z < 4 and z >= 26 are empty."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), np.arange(shape[2]), indexing="ij")
    inside = (x**2 + y**2 < 0.8) & (z >= 4) & (z < 26)
    rng = np.random.default_rng(seed)
    return np.where(inside, 100.0 + 50.0 * rng.random(shape) + seed, 0.0).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.slow
def test_single_subject_volumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [_save(tmp_path / f"sub01_{m}.nii.gz", _volume(k)) for k, m in enumerate(("t1", "t2", "pet"))]
    gt = _save(tmp_path / "fused.nii", _volume(9))
    out = tmp_path / "out"
    code, err = _run(capsys, "volumes", "--files", *files, "--gt-file", gt, "--modalities", "MR-T1", "MR-T2", "PET",
                     "--subject-id", "s1", "--out", out, "--size", 16, "--scales", 2, "--slab-gap", 1)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality_order"] == "MR-T1/MR-T2/PET" and manifest["ground_truth"]["source"] == "given"
    splits = manifest["splits"]
    indices = {s: sorted(int(c.removeprefix("s1_axial")) for c in splits[s]) for s in splits}
    assert sum(map(len, indices.values())) == 22 - 3 and min(indices["train"]) == 4 and max(indices["train"]) == 25
    assert max(indices["val"]) + 2 == min(indices["test"])
    assert sorted(p.stem for p in (out / "val" / "1_lr_8").iterdir()) == sorted(splits["val"])
    t1 = np.asarray(Image.open(out / "train" / "1_sr_8_16" / f"{splits['train'][0]}.png"))
    assert t1.shape == (16, 16, 3) and (t1[..., 0] == t1[..., 2]).all()


@pytest.mark.slow
def test_multi_subject_volume_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for s in range(3):
        for k, m in enumerate(("CT", "T2", "SPECT")):
            _save(tmp_path / "in" / m / f"subj{s}.nii.gz", _volume(10 * s + k, (16, 16, 30)))
    (tmp_path / "in" / "CT" / "README").write_text("x")
    code, err = _run(capsys, "volumes", "--input", tmp_path / "in", "--folders", "CT", "T2", "SPECT",
                     "--out", tmp_path / "out", "--size", 16, "--scales", 4, "--workers", 2, "--axis", "axial")
    assert code == 0, err
    assert "README" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(sum(manifest["subject_splits"].values(), [])) == ["subj0", "subj1", "subj2"]
    for split, subjects in manifest["subject_splits"].items():
        assert {c.split("_")[0] for c in manifest["splits"][split]} == set(subjects)
        assert len(manifest["splits"][split]) == 22 * len(subjects)


@pytest.mark.parametrize("problem, message", [("shape", "differ in shape"), ("affine", "differ in affine"),
                                              ("corrupt", "cannot read NIfTI"), ("empty", "no non-zero voxel")])
def test_volume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str, message: str) -> None:
    files = [_save(tmp_path / f"m{k}.nii.gz", _volume(k)) for k in range(3)]
    if problem == "shape":
        _save(files[2], _volume(2, (20, 24, 28)))
    elif problem == "affine":
        _save(files[1], _volume(1), np.diag([1.0, 1.0, 1.01, 1.0]))
    elif problem == "corrupt":
        files[0].write_bytes(files[0].read_bytes()[:100])
    else:
        _save(files[0], np.zeros((20, 24, 30), np.float32))
    code, err = _run(capsys, "volumes", "--files", *files, "--out", tmp_path / "out", "--size", 16, "--scales", 2)
    assert code == 2 and message in err and str(tmp_path) in err, err
    _no_output(tmp_path / "out")


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.slow
def test_prepared_dataset_trains_with_sr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp, data = _make_slices(tmp_path / "in", n_cases=3), tmp_path / "data"
    assert _run(capsys, *_slices_args(inp, data, "--scales", 4, "--split", "1:1:1"))[0] == 0
    dataset = {"l_resolution": 8, "r_resolution": SIZE, "batch_size": 1}
    schedule = {"schedule": "linear", "n_timestep": 4, "linear_start": 1e-4, "linear_end": 0.2}
    config = {
        "name": "own_data", "seed": 0, "path": {"experiments_root": str(tmp_path / "experiments")},
        "datasets": {"train": {"dataroot": str(data / "train"), **dataset},
                     "val": {"dataroot": str(data / "val"), "data_len": 1, **dataset}},
        "model": {"unet": {"inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2], "attn_res": [16],
                           "res_blocks": 1},
                  "beta_schedule": {"train": schedule, "val": schedule}, "diffusion": {"image_size": SIZE}},
        "train": {"n_iter": 1, "val_freq": 1, "save_checkpoint_freq": 1, "print_freq": 1},
    }
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    assert sr.main(["-p", "train", "-c", str(tmp_path / "tiny.json"), "--no-progress"]) == 0
    assert list((tmp_path / "experiments").glob("own_data_train_*/checkpoint/*.pth"))
