"""Tests of ``prepare_data.py pairs`` (data/builders/harvard_pairs.py, data/builders/harvard_cases.py,
data/builders/triplets.py, data/colour_maps.py) on small synthetic pair folders, plus the real-triplet count on the
real folder (../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.outputs import FOLDER_MARKER
from data.builders import harvard_pairs as hp
from data.builders.splits import PrepareError
from data.builders.triplets import augment_triplet, derive_anatomy, derive_functional, t2_like_from_t1
from data.colour_maps import COLOUR_MAPS, activity_from_colours, closest_map, colour_lut, render_activity
from data.fusion_rules import fuse
from data.prepare_data import main

SIZE = 64
HARVARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard_aanlib"
LAYOUT = {"CT-MRI": ["11", "12", "21"], "SPECT-MRI": ["13", "14", "21"], "PET-MRI": ["15", "16", "41"]}


def _head(seed: int, bright_rim: bool) -> np.ndarray:
    """(SIZE, SIZE) uint8 synthetic axial head: ellipse with a rim (bright for CT, dark for MR) and blobs inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE / 2) - 1.0
    radius = np.sqrt((yy / 0.8) ** 2 + (xx / 0.65) ** 2)
    inside = rng.uniform(60, 140) + 60 * np.sin(7 * xx + seed) * np.cos(5 * yy) + rng.normal(0, 8, (SIZE, SIZE))
    image = np.where(radius < 0.85, inside, 0.0)
    image = np.where((radius >= 0.85) & (radius < 0.97), 250.0 if bright_rim else 20.0, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def _functional(seed: int, name: str) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 synthetic perfusion image rendered in Harvard colour map ``name``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE / 2) - 1.0
    blobs = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) for cy, cx in rng.uniform(-0.5, 0.5, (3, 2)))
    activity = np.clip(0.3 + 0.5 * blobs, 0, 1) * (np.sqrt((yy / 0.75) ** 2 + (xx / 0.6) ** 2) < 0.85)
    return render_activity(activity, name)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_pairs(root: Path, slices: int = 2) -> Path:
    """Synthetic pair layout; CT-MRI and SPECT-MRI share id 21001 with the same MRI (a real triplet) and id 21002
    with different MRIs (not a triplet)."""
    for kind, subjects in LAYOUT.items():
        first, second = hp.KINDS[kind]
        for subject in subjects:
            for index in range(1, slices + 1):
                pair_id = f"{subject}{index:03d}"
                seed = int(pair_id) + (0 if kind == "CT-MRI" or pair_id == "21001" else 7)
                images = {"CT": _head(seed + 1, True), "MRI": _head(seed, False),
                          "PET": _functional(seed, "harvard_pet"), "SPECT": _functional(seed, "harvard_spect_tc")}
                _save(root / kind / first / f"{pair_id}.png", images[first])
                _save(root / kind / second / f"{pair_id}.png", images[second])
    return root


def _run(capsys: pytest.CaptureFixture[str], inp: Path, out: Path, *extra: object) -> tuple[int, str]:
    args = ["pairs", "--input", inp, "--out", out, "--size", SIZE, "--scales", 4, "--test-subjects", "21", "41",
            "--quiet", *extra]
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _png_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# ------------------------------------------------------------------------------------------------ whole command


@pytest.mark.slow
def test_same_seed_same_bytes_and_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, err = _run(capsys, inp, tmp_path / name, "--copies", 2, "--seed", seed, "--val-subjects", 12, 14, 16)
        assert code == 0, err
    first, again, other = (_png_bytes(tmp_path / name) for name in ("a", "b", "c"))
    assert first == again and _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    assert first.keys() == other.keys() and first != other
    manifest = _manifest(tmp_path / "a")
    assert manifest["counts"] == {split: len(manifest["splits"][split]) for split in ("train", "val", "test")}
    case = manifest["splits"]["train"][0]
    split = tmp_path / "a" / "train"
    assert {p.name for p in split.iterdir()} == {f"{k}_{kind}" for k in (1, 2, 3) for kind in ("lr_16", "sr_16_64")} \
        | {"hr_64"}
    assert manifest["cases"][case]["augmented"] and manifest["ground_truth"]["rule"] == "laplacian_ycbcr"
    test_case = manifest["splits"]["test"][0]
    sources = [hp.read_rgb(inp / f) for f in manifest["cases"][test_case]["from"]]
    hr = np.asarray(Image.open(tmp_path / "a" / "test" / "hr_64" / f"{test_case}.png"))
    assert np.array_equal(hr, fuse("laplacian_ycbcr", sources))


@pytest.mark.slow
def test_subject_split_keeps_test_subjects_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in")
    code, err = _run(capsys, inp, tmp_path / "o", "--copies", 2, "--val-per-kind", 1)
    assert code == 0, err
    manifest = _manifest(tmp_path / "o")
    subjects = manifest["subjects"]
    assert subjects["test"] == ["21", "41"]
    assert not set(subjects["test"]) & (set(subjects["train"]) | set(subjects["val"]))
    for split in ("train", "val"):
        for case in manifest["splits"][split]:
            ids = [Path(f).stem for f in manifest["cases"][case]["from"]]
            assert ids and all(hp.subject_of(i) in subjects[split] for i in ids), (split, case, ids)
    assert manifest["held_out_pairs"] == sorted(f"{kind}/{s}{i:03d}" for kind, names in LAYOUT.items()
                                                for s in names if s in ("21", "41") for i in (1, 2))
    kinds_of = hp.subjects_by_kind(hp.read_pairs(inp))
    for kind in hp.KINDS:
        assert any(kind in kinds_of[s] for s in subjects["val"]), kind
        assert any(kind in kinds_of[s] for s in subjects["train"]), kind
    assert all(not manifest["cases"][case]["augmented"] for case in manifest["splits"]["val"])


def test_split_subjects_rules() -> None:
    kinds_of = {"2": {"CT-MRI"}, "10": {"CT-MRI"}, "21": {"CT-MRI"}, "25": {"PET-MRI", "SPECT-MRI"},
                "30": {"PET-MRI", "SPECT-MRI"}, "9": {"SPECT-MRI"}}
    for seed in range(6):
        split = hp.split_subjects(kinds_of, ["21"], None, 2, seed)
        assert split["test"] == ["21"] and "21" not in split["train"] + split["val"]
        for kind in ("CT-MRI", "PET-MRI", "SPECT-MRI"):
            assert any(kind in kinds_of[s] for s in split["train"])
    assert hp.split_subjects(kinds_of, ["21"], ["9"])["train"] == ["2", "10", "25", "30"]
    with pytest.raises(PrepareError, match="both val and test"):
        hp.split_subjects(kinds_of, ["21"], ["21"])
    with pytest.raises(PrepareError, match="test subject.*77"):
        hp.split_subjects(kinds_of, ["77"])


@pytest.mark.slow
def test_only_identical_mris_pair_across_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in")
    real = hp.find_real_triplets(hp.read_pairs(inp))
    assert [t.case_id for t in real] == ["real_ct_spect_21001"]
    assert real[0].files == (inp / "CT-MRI/CT/21001.png", inp / "CT-MRI/MRI/21001.png",
                             inp / "SPECT-MRI/SPECT/21001.png")
    code, err = _run(capsys, inp, tmp_path / "o")
    assert code == 0, err
    manifest = _manifest(tmp_path / "o")
    assert manifest["splits"]["test"] == ["real_ct_spect_21001"]
    assert manifest["cases"]["real_ct_spect_21001"]["from"] == ["CT-MRI/CT/21001.png", "CT-MRI/MRI/21001.png",
                                                                "SPECT-MRI/SPECT/21001.png"]


@pytest.mark.slow
def test_triplet_folder_dedupe_exclude_and_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in")
    extra = tmp_path / "tri"
    copies = {"dup": ["CT-MRI/CT/21001", "CT-MRI/MRI/21001", "SPECT-MRI/SPECT/21001"],
              "leak": ["CT-MRI/CT/11001", "CT-MRI/MRI/11001", "SPECT-MRI/SPECT/13001"],
              "test41": ["PET-MRI/MRI/41002", "PET-MRI/MRI/41001", "PET-MRI/PET/41002"]}
    for case, files in copies.items():
        for k, (name, stem) in enumerate(zip(("CT", "MR-T2", "SPECT"), files), start=1):
            image = hp.read_rgb(inp / f"{stem}.png").astype(np.int16)
            noisy = np.clip(image + np.random.default_rng(k).integers(-2, 3, image.shape), 0, 255)  # re-encoded
            _save(extra / f"{case}_{k}_{name}.png", noisy.astype(np.uint8))
    _save(extra / "new_1_CT.png", _head(500, True))
    _save(extra / "new_2_MR-T2.png", _head(501, False))
    _save(extra / "new_3_SPECT.png", _functional(502, "harvard_pet"))
    code, err = _run(capsys, inp, tmp_path / "o", "--triplets", extra)
    assert code == 0, err
    manifest = _manifest(tmp_path / "o")
    assert manifest["dropped_triplets"]["trimodal_dup"] == "duplicate of real_ct_spect_21001"
    assert "11001" in manifest["dropped_triplets"]["trimodal_leak"]
    assert manifest["splits"]["test"] == ["real_ct_spect_21001", "trimodal_new", "trimodal_test41"]
    assert manifest["real_triplets"]["trimodal_test41"]["subject"] == "41"
    assert manifest["real_triplets"]["trimodal_new"]["subject"] is None


@pytest.mark.slow
def test_embedded_cases_join_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in", slices=1)
    code, err = _run(capsys, inp, tmp_path / "o", "--embedded", 2)
    assert code == 0, err
    manifest = _manifest(tmp_path / "o")
    embedded = [case for case in manifest["splits"]["train"] if case.startswith("mni_z")]
    assert len(embedded) == 2 and manifest["cases"][embedded[0]]["from"] == ["data.builders.embedded"]
    assert (tmp_path / "o" / "train" / "hr_64" / f"{embedded[0]}.png").is_file()


@pytest.mark.slow
def test_splits_writes_only_the_named_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in", slices=1)
    code, err = _run(capsys, inp, tmp_path / "all", "--embedded", 1)
    assert code == 0, err
    code, err = _run(capsys, inp, tmp_path / "test", "--embedded", 1, "--splits", "test")
    assert code == 0, err
    full, test_only = _manifest(tmp_path / "all"), _manifest(tmp_path / "test")
    assert full["written_splits"] == ["train", "val", "test"]
    assert test_only["written_splits"] == ["test"] and list(test_only["splits"]) == ["test"]
    assert test_only["splits"]["test"] == full["splits"]["test"] and test_only["counts"] == {"test": 1}
    assert test_only["subjects"] == full["subjects"] and test_only["embedded"] == 0
    assert {p.name for p in (tmp_path / "test").iterdir()} == {"test", "manifest.json", FOLDER_MARKER}
    assert _png_bytes(tmp_path / "test" / "test") == _png_bytes(tmp_path / "all" / "test")
    code, err = _run(capsys, inp, tmp_path / "tv", "--embedded", 1, "--splits", "val", "train", "val")
    assert code == 0, err
    manifest = _manifest(tmp_path / "tv")
    assert manifest["written_splits"] == ["train", "val"] and manifest["embedded"] == 1
    assert manifest["splits"] == {split: full["splits"][split] for split in ("train", "val")}
    assert not (tmp_path / "tv" / "test").exists()


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("problem", ["bad_name", "unpaired", "corrupt", "size"])
def test_bad_input_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str) -> None:
    inp = _make_pairs(tmp_path / "in")
    named = {"bad_name": inp / "CT-MRI/CT/scan.png", "unpaired": inp / "SPECT-MRI/MRI/13002.png",
             "corrupt": inp / "PET-MRI/PET/15001.png", "size": inp / "CT-MRI/MRI/12002.png"}[problem]
    if problem == "bad_name":
        _save(named, _head(1, True))
    elif problem == "unpaired":
        named.unlink()
        named = Path("13002")
    elif problem == "corrupt":
        named.write_bytes(named.read_bytes()[:60])
    else:
        _save(named, np.zeros((SIZE, SIZE // 2), np.uint8))
    code, err = _run(capsys, inp, tmp_path / "o", "--copies", 2)
    assert code == 2 and err.startswith("error:") and str(named) in err, err
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


@pytest.mark.slow
def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = _make_pairs(tmp_path / "in", slices=1)
    assert _run(capsys, inp, tmp_path / "o")[0] == 0
    code, err = _run(capsys, inp, tmp_path / "o")
    assert code == 2 and "--overwrite" in err
    assert _run(capsys, inp, tmp_path / "o", "--overwrite", "--copies", 2)[0] == 0
    assert _manifest(tmp_path / "o")["copies"] == 2


# ------------------------------------------------------------------------------------------------ derivations


def test_colour_maps_start_black_and_invert() -> None:
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(4, axis=0)
    for name in COLOUR_MAPS:
        assert colour_lut(name)[0].tolist() == [0, 0, 0]
        image = render_activity(ramp, name)
        assert np.abs(activity_from_colours(image, name) - ramp).max() <= 1 / 255 + 1e-6
        assert closest_map(image, 8.0) == name
    assert closest_map(np.full((4, 4, 3), [0, 255, 0], np.uint8), 8.0) is None


def test_derivations_are_seeded_and_plausible() -> None:
    mri, t1 = _head(3, False), _head(4, False)
    for derive in (derive_anatomy, derive_functional):
        first, again = derive(mri, np.random.default_rng(5)), derive(mri, np.random.default_rng(5))
        assert first[0] == again[0] and np.array_equal(first[1], again[1])
    name, functional = derive_functional(mri, np.random.default_rng(1))
    assert name in COLOUR_MAPS and functional.shape == (SIZE, SIZE, 3)
    assert (functional[:2, :2] == 0).all() and functional.max() > 100
    assert closest_map(functional, 8.0) == name
    names = {derive_anatomy(mri, np.random.default_rng(seed))[0] for seed in range(12)}
    assert names == {"CT-like", "MR-T1-like", "MR-PD-like"}
    t2 = t2_like_from_t1(t1, np.random.default_rng(0))
    assert t2.shape == (SIZE, SIZE) and t2[:2, :2].max() == 0
    sources = [np.repeat(mri[..., None], 3, axis=2), np.repeat(t1[..., None], 3, axis=2), functional]
    augmented = augment_triplet(sources, np.random.default_rng(9))
    assert all(a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 for a in augmented)
    assert np.array_equal(augmented[0][..., 0], augmented[0][..., 2])
    assert all(np.array_equal(a, b) for a, b in zip(augmented, augment_triplet(sources, np.random.default_rng(9))))


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(not HARVARD.is_dir(), reason=f"the real Harvard pairs are not at {HARVARD} (../shared of the "
                    "repository, provided beside the clone; they may not be copied into the repository)")
def test_real_folder_has_exactly_32_real_triplets() -> None:
    pairs = hp.read_pairs(HARVARD)
    assert {kind: len(by_id) for kind, by_id in pairs.items()} == {"CT-MRI": 184, "PET-MRI": 269, "SPECT-MRI": 357}
    real = hp.find_real_triplets(pairs)
    expected = [f"real_ct_spect_{s}{i:03d}" for s in (21, 28) for i in range(5, 21)]
    assert [t.case_id for t in real] == expected
    assert {t.subject for t in real} == {"21", "28"}
