"""infer.py volume mode (issue 23, "Volumes"): three NIfTI volumes or DICOM series in, one fused NIfTI volume out,
slice by slice; colour maps for grey functional inputs (images too); `data.volume_io`, `data.dicom`,
`model.volume_fusion`."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import infer
from core.config import SamplerConfig, load_config
from core.logger import setup_logger
from data.builders.volumes import AFFINE_ATOL, window_volume
from data.colour_maps import COLOUR_MAPS, colourise
from data.dicom import DicomError, read_dicom_series
from data.fusion_rules import fuse
from data.volume_io import RGB24, on_one_grid, read_volume, slice_volumes
from metrics.fusion import to_grey
from model.fuser import Fuser
from model.model import TFSDiffModel
from model.volume_fusion import fuse_slices, slices_per_batch, volume_bytes

SIZE, LOW = 16, 8  # the x2 model of the config fixture (conftest.tiny_x2_config)
SHAPE = (10, 9, 8)  # x, y, z voxels of the synthetic volumes (RAS+: axial slices are 9 x 10, H x W)
AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, -8], [0, 0, 3.0, 4], [0, 0, 0, 1]])
EMPTY = 2  # the axial slice that is zero in all three volumes
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def config(tiny_x2_config: Path) -> Path:
    return tiny_x2_config


def _volume(seed: int, shape: tuple[int, int, int] = SHAPE, empty: int | None = EMPTY) -> np.ndarray:
    """Float32 voxels 10..1000 with per-slice structure; slice `empty` along z is zero; a zero corner per slice."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(10.0, 1000.0, shape).astype(np.float32)
    data[:2, :2] = 0.0
    if empty is not None:
        data[:, :, empty] = 0.0
    return data


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _triplet(folder: Path, affine: np.ndarray = AFFINE, shape: tuple[int, int, int] = SHAPE,
             same: bool = False) -> list[str]:
    """Three volumes on one grid (seeds 1, 2, 3; with `same` three copies of the first)."""
    return [_save(folder / f"m{k}.nii.gz", _volume(1 if same else k, shape), affine) for k in (1, 2, 3)]


def _rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z, 3) uint8 of an RGB24 NIfTI file, and its affine."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    assert data.dtype == RGB24
    return np.stack([data["R"], data["G"], data["B"]], axis=-1), img.affine


def _run(config: Path, inputs: list[str], out: Path, *extra: str) -> int:
    return infer.main(["-c", str(config), "--inputs", *inputs, "--out", str(out), "--no-progress", *extra])


def _windowed(paths: list[str]) -> list[np.ndarray]:
    return [window_volume(np.asarray(nib.load(p).get_fdata(dtype=np.float32)), Path(p))[0] for p in paths]


# ----------------------------------------------------------------------------------------------- geometry

def test_rule_fuses_every_axial_slice_at_the_model_scale_over_the_same_field_of_view(
        tmp_path: Path, capsys, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    out = tmp_path / "out" / "fused.nii.gz"
    assert _run(config, inputs, out, "--method", "laplacian_ycbcr") == 0
    assert "(8 axial slices of 9x10, 1 empty) with laplacian_ycbcr" in capsys.readouterr().err
    fused, affine = _rgb(out)
    assert fused.shape == (20, 18, 8, 3)
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), [1.0, 1.0, 3.0])
    for corner in ([-0.5, -0.5, 0], [9.5, 8.5, 7]):  # the outer voxel edges stay in place
        scaled = [(c + 0.5) * 2 - 0.5 if axis < 2 else c for axis, c in enumerate(corner)]
        np.testing.assert_allclose(nib.affines.apply_affine(affine, scaled), nib.affines.apply_affine(AFFINE, corner))
    # the first voxel centre moves by half an input voxel (1 mm) minus half an output voxel (0.5 mm)
    np.testing.assert_allclose(affine[:3, 3], AFFINE[:3, 3] - [0.5, 0.5, 0.0])
    # each slice is the 2-D path on its display slice (transposed, flipped: anterior up), put back
    windowed = _windowed(inputs)
    for k in range(SHAPE[2]):
        display = [np.repeat(vol[:, :, k].T[::-1][..., None], 3, axis=2) for vol in windowed]
        expected = fuse("laplacian_ycbcr", infer.upsample(display, (18, 20)))
        assert np.array_equal(fused[:, :, k], expected[::-1].transpose(1, 0, 2)), k
    assert not fused[:, :, EMPTY].any()  # the empty slice stays, black, at its index


def _permuted_affine() -> np.ndarray:
    """A non-RAS grid: array axes (P, S, L) with voxel sizes 2, 3 and 2.5 mm."""
    return np.array([[0, 0, -2.5, 30], [-2.0, 0, 0, 40], [0, 3.0, 0, -20], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [np.diag([-2.0, -2.0, 3.0, 1.0]), _permuted_affine()], ids=["LPS", "PSL"])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_on_the_input_grid_the_output_keeps_the_original_orientation_voxel_for_voxel(
        tmp_path: Path, config: Path, affine: np.ndarray, axis: str) -> None:
    inputs = _triplet(tmp_path / "in", affine, same=True)  # average of three copies = the windowed volume itself
    hw = slice_volumes([read_volume(p) for p in inputs], axis).geometry.slice_hw
    out = tmp_path / "grey.nii"
    assert _run(config, inputs, out, "--method", "average", "--slice-axis", axis, "--grey",
                "--out-size", *map(str, hw)) == 0
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8 and img.shape == SHAPE
    np.testing.assert_allclose(img.affine, affine)
    assert np.array_equal(np.asarray(img.dataobj), _windowed(inputs)[0])


@pytest.mark.parametrize("axis,scaled", [("axial", (0, 1)), ("coronal", (0, 2)), ("sagittal", (1, 2))])
def test_a_non_ras_volume_fuses_as_its_ras_copy_does(tmp_path: Path, config: Path, axis: str,
                                                     scaled: tuple[int, int]) -> None:
    permuted = _triplet(tmp_path / "psl", _permuted_affine())
    canonical = [_save(tmp_path / "ras" / Path(p).name, np.asarray(ras.dataobj), ras.affine)
                 for p in permuted for ras in [nib.as_closest_canonical(nib.load(p))]]
    outs = [tmp_path / "psl.nii.gz", tmp_path / "ras.nii.gz"]
    for inputs, out in zip((permuted, canonical), outs):
        assert _run(config, inputs, out, "--method", "maximum", "--slice-axis", axis) == 0
    (fused, _), (reference, ras_affine) = _rgb(outs[0]), _rgb(outs[1])
    img = nib.load(str(outs[0]))
    assert img.shape == tuple(s * 2 if a in _original_axes(scaled) else s for a, s in enumerate(SHAPE))
    back = nib.as_closest_canonical(img)
    assert "".join(nib.aff2axcodes(img.affine)) == "PSL"
    np.testing.assert_allclose(back.affine, ras_affine, atol=1e-9)
    back_rgb = np.asarray(back.dataobj)
    assert np.array_equal(np.stack([back_rgb["R"], back_rgb["G"], back_rgb["B"]], axis=-1), reference)
    assert fused.shape[:3] == img.shape


def _original_axes(canonical_axes: tuple[int, int]) -> set[int]:
    """The array axes of the PSL volume that lie along the given RAS+ axes (R/L = 2, A/P = 0, S = 1)."""
    return {{0: 2, 1: 0, 2: 1}[a] for a in canonical_axes}


# ----------------------------------------------------------------------------------------------- options

def test_grey_writes_the_rounded_luminance_of_the_rgb_volume(tmp_path: Path, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    base = ["--method", "maximum", "--colour-map", "harvard_spect_tc"]
    assert _run(config, inputs, tmp_path / "rgb.nii.gz", *base) == 0
    assert _run(config, inputs, tmp_path / "grey.nii.gz", *base, "--grey") == 0
    rgb, affine = _rgb(tmp_path / "rgb.nii.gz")
    grey = nib.load(str(tmp_path / "grey.nii.gz"))
    assert grey.get_data_dtype() == np.uint8
    np.testing.assert_allclose(grey.affine, affine)
    assert not np.array_equal(rgb[..., 0], rgb[..., 1])  # the colour map made it colour
    expected = to_grey(rgb.reshape(rgb.shape[0], -1, 3)).reshape(rgb.shape[:3])
    assert np.array_equal(np.asarray(grey.dataobj), expected.astype(np.uint8))


def test_the_sidecar_records_the_windows_axis_method_config_and_empty_slices(tmp_path: Path, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    out = tmp_path / "fused.nii.gz"
    assert _run(config, inputs, out, "--method", "average", "--slice-axis", "coronal", "--colour-map",
                "harvard_pet", "--colour-source", "2") == 0
    record = json.loads((tmp_path / "fused.json").read_text(encoding="utf-8"))
    windows = [window_volume(_volume(k), Path("x"))[1] for k in (1, 2, 3)]
    assert [entry["path"] for entry in record["inputs"]] == inputs
    assert [tuple(entry["window"]) for entry in record["inputs"]] == windows
    assert [entry["colour_map"] for entry in record["inputs"]] == [None, "harvard_pet", None]
    assert record["slice_axis"] == "coronal" and record["slices"] == SHAPE[1] and record["empty_slices"] == []
    assert record["method"] == "average" and record["config"] == str(config) and record["sampler"] is None
    assert record["in_plane_size_hw"] == {"input": [8, 10], "fused": [16, 20]}
    assert record["output"]["shape"] == [20, 9, 16] and record["output"]["dtype"] == "RGB24"
    assert record["output"]["voxel_sizes_mm"] == [1.0, 2.0, 1.5]
    assert b"average, coronal slices fused at 16x20; fused.json" in nib.load(str(out)).header["descrip"].tobytes()
    assert _run(config, inputs, tmp_path / "axial.nii", "--method", "average") == 0
    assert json.loads((tmp_path / "axial.json").read_text(encoding="utf-8"))["empty_slices"] == [EMPTY]


def test_volumes_on_different_grids_are_refused_naming_the_files(tmp_path: Path, capsys, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    inputs[1] = _save(tmp_path / "in" / "coarse.nii.gz", _volume(5, (7, 6, 4)), np.diag([3.0, 3.0, 4.5, 1.0]))
    out = tmp_path / "fused.nii.gz"
    assert _run(config, inputs, out, "--method", "average") == 2
    err = capsys.readouterr().err
    assert "must lie on one voxel grid" in err and "--resample-to first" in err and "Traceback" not in err
    assert f"{inputs[0]}: 10x9x8 voxels of 2x2x3 mm" in err and f"{inputs[1]}: 7x6x4 voxels of 3x3x4.5 mm" in err
    shifted = AFFINE.copy()
    shifted[0, 3] += 10 * AFFINE_ATOL
    inputs[1] = _save(tmp_path / "in" / "shifted.nii.gz", _volume(5), shifted)
    assert _run(config, inputs, out, "--method", "average") == 2
    assert "must lie on one voxel grid" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "fused.json").exists()


def test_resample_to_first_puts_a_3_mm_volume_on_the_2_mm_grid(tmp_path: Path, capsys, config: Path) -> None:
    fine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse[:3, 3] = 0.5  # voxel edges at -1 mm on both grids: the 3 mm grid spans the 2 mm grid's field of view

    def ramp(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
        world = nib.affines.apply_affine(affine, np.stack(np.indices(shape), axis=-1))
        return (100.0 + world @ [1.0, 2.0, 3.0]).astype(np.float32)  # linear in world millimetres

    setup_logger()
    first = _save(tmp_path / "t1.nii.gz", ramp((12, 12, 9), fine), fine)
    second = _save(tmp_path / "t2_3mm.nii.gz", ramp((8, 8, 6), coarse), coarse)
    volumes, moved = on_one_grid([read_volume(first), read_volume(second), read_volume(first)], "first")
    assert moved == [False, True, False]
    assert volumes[1].data.shape == (12, 12, 9)
    np.testing.assert_allclose(volumes[1].affine, fine)
    inner = (slice(2, -2),) * 3  # away from the edges, where the spline meets the zero outside the field of view
    np.testing.assert_allclose(volumes[1].data[inner], volumes[0].data[inner], atol=1.0)  # values 124..190
    out = tmp_path / "fused.nii.gz"
    assert _run(config, [first, second, first], out, "--method", "average") == 2
    assert "t2_3mm.nii.gz: 8x8x6 voxels of 3x3x3 mm" in capsys.readouterr().err
    assert _run(config, [first, second, first], out, "--method", "average", "--resample-to", "first") == 0
    assert f"--resample-to first: resampled {second}: 8x8x6 voxels of 3x3x3 mm onto the grid of {first}" in \
        capsys.readouterr().err
    assert nib.load(str(out)).shape == (24, 24, 9)
    record = json.loads((tmp_path / "fused.json").read_text(encoding="utf-8"))
    assert [entry["resampled_to_first"] for entry in record["inputs"]] == [False, True, False]


def test_colour_map_renders_the_grey_third_source_of_an_image_case_and_of_a_folder(
        tmp_path: Path, capsys, config: Path, make_rgb: Callable[..., np.ndarray]) -> None:
    paths = []
    for k in (1, 2, 3):
        paths.append(tmp_path / "scans" / f"case_{k}_x.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(make_rgb(k, (LOW, LOW), grey=True)).save(paths[-1])
    out = tmp_path / "fused.png"
    assert infer.main(["-c", str(config), "--method", "average", "--inputs", *map(str, paths), "--out", str(out),
                       "--colour-map", "harvard_pet"]) == 0
    sources = [make_rgb(1, (LOW, LOW), grey=True), make_rgb(2, (LOW, LOW), grey=True),
               colourise(make_rgb(3, (LOW, LOW), grey=True)[..., 0], "harvard_pet")]
    expected = fuse("average", infer.upsample(sources, (SIZE, SIZE)))
    with Image.open(out) as fused:
        assert np.array_equal(np.asarray(fused), expected)
    assert infer.main(["-c", str(config), "--method", "average", "--input-dir", str(tmp_path / "scans"), "--out",
                       str(tmp_path / "res"), "--colour-map", "harvard_pet", "--no-progress"]) == 0
    with Image.open(tmp_path / "res" / "case_src3.png") as src3:
        assert np.array_equal(np.asarray(src3), infer.upsample(sources, (SIZE, SIZE))[2])
    Image.fromarray(make_rgb(3, (LOW, LOW))).save(paths[2])  # a colour image cannot be rendered again
    assert infer.main(["-c", str(config), "--method", "average", "--inputs", *map(str, paths), "--out",
                       str(tmp_path / "again.png"), "--colour-map", "harvard_pet"]) == 2
    assert f"{paths[2]} (input 3) is already in colour" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["-c", str(config), "--inputs", *map(str, paths), "--out", "x.png", "--colour-map", "jet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'jet'" in err and all(name in err for name in COLOUR_MAPS)


def test_colour_map_on_a_volume_colours_its_source(tmp_path: Path, config: Path) -> None:
    volumes = [read_volume(p) for p in _triplet(tmp_path / "in")]
    sliced = slice_volumes(volumes, "axial", "harvard_pet", 3)
    grey = slice_volumes(volumes, "axial")
    assert sliced.colour_maps == (None, None, "harvard_pet")
    assert np.array_equal(sliced.sources(4)[2], colourise(grey.planes[2][4], "harvard_pet"))
    assert np.array_equal(sliced.sources(4)[0], grey.sources(4)[0])
    assert sliced.is_empty(EMPTY) and not sliced.is_empty(0)


def test_volume_mode_argument_errors(tmp_path: Path, capsys, config: Path,
                                     make_rgb: Callable[..., np.ndarray]) -> None:
    inputs = _triplet(tmp_path / "in")
    png = tmp_path / "a.png"
    Image.fromarray(make_rgb(1, (LOW, LOW))).save(png)
    out = str(tmp_path / "o.nii.gz")
    for argv, message in (
            ([*inputs, "--out", str(tmp_path / "o.png")], "expected a file name ending in .nii.gz or .nii"),
            ([inputs[0], inputs[1], str(png), "--out", out], f"{png} (image); give three of one kind"),
            ([*inputs, "--out", out, "--process"], "volume mode has none"),
            ([*inputs, "--out", out, "--method", "average", "--batch-slices", "2"], "fuses slice by slice"),
            ([*inputs, "--out", out, "--batch-slices", "0"], "--batch-slices 0: slices per batch"),
            ([*inputs, "--out", out, "--colour-source", "1"], "pass --colour-map NAME"),
            ([*inputs, "--out", out, "--samples", "2", "--uncertainty", "u.png"], "expected a file name ending in"),
            ([*inputs, "--out", out, "--uncertainty"], "--uncertainty needs --samples K with K >= 2 (got 1)"),
            ([*inputs, "--out", out, "--uncertainty", "--samples", "1"], "with K >= 2 (got 1)"),
            ([*inputs, "--out", out, "--method", "average", "--uncertainty", "--samples", "2"], "is deterministic"),
            ([str(png)] * 3 + ["--out", str(tmp_path / "o.png"), "--slice-axis", "axial", "--grey"],
             "--slice-axis, --grey: for volumes only"),
            ([str(tmp_path / "none.nii.gz"), inputs[1], inputs[2], "--out", out], "none.nii.gz does not exist")):
        assert infer.main(["-c", str(config), "--no-progress", "--inputs", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not Path(out).exists()


def test_unreadable_and_unusable_volumes_are_errors_naming_the_file(tmp_path: Path, capsys, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    four_d = _save(tmp_path / "4d.nii.gz", np.ones((*SHAPE, 2), np.float32))
    zeros = _save(tmp_path / "zeros.nii", np.zeros(SHAPE, np.float32))
    for bad, message in ((str(broken), f"cannot read NIfTI volume {broken}"),
                         (four_d, f"{four_d} is not a 3-D volume (shape (10, 9, 8, 2))"),
                         (zeros, f"volume {zeros} has no non-zero voxel")):
        assert _run(config, [inputs[0], bad, inputs[2]], tmp_path / "o.nii.gz", "--method", "average") == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    single = _save(tmp_path / "single.nii.gz", _volume(2)[..., None])  # a trailing 4th axis of length 1 is dropped
    assert _run(config, [inputs[0], single, inputs[2]], tmp_path / "o.nii.gz", "--method", "average") == 0
    assert nib.load(str(tmp_path / "o.nii.gz")).shape == (20, 18, SHAPE[2])


def test_an_existing_output_is_replaced_only_with_overwrite_and_only_when_infer_wrote_it(
        tmp_path: Path, capsys, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    out = tmp_path / "fused.nii.gz"
    run = ["--method", "average"]
    out.write_bytes(b"the user's own file")
    assert _run(config, inputs, out, *run, "--overwrite") == 2
    assert "was not written by TFS-Diff" in capsys.readouterr().err and out.read_bytes() == b"the user's own file"
    out.unlink()
    (tmp_path / "fused.json").write_text("{}", encoding="utf-8")  # the sidecar's name is taken by the user
    assert _run(config, inputs, out, *run, "--overwrite") == 2
    assert "fused.json already exists and was not written by TFS-Diff" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "fused.json").unlink()
    assert _run(config, inputs, out, *run) == 0
    first = out.read_bytes()
    assert _run(config, inputs, out, *run) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == first
    assert _run(config, inputs, out, "--method", "maximum", "--overwrite") == 0
    assert out.read_bytes() != first
    assert _run(config, [*inputs[:2], str(out)], tmp_path / "in" / "m1.nii.gz", *run, "--overwrite") == 2
    assert "is the input" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- DICOM

def _write_series(folder: Path, pixels: np.ndarray, orientation: list[float], spacing: tuple[float, float],
                  step: float, origin: np.ndarray, order: list[int] | None = None, uid: str | None = None) -> None:
    """One DICOM series of `pixels` (columns, rows, slices) uint16 at LPS `origin`, written with pydicom in the
    file order `order` (default reversed), with RescaleSlope 2 and RescaleIntercept -5."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = uid or generate_uid(), generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    count = pixels.shape[2]
    for name, k in zip(order or list(range(count))[::-1], range(count)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, "MR"
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
        ds.PixelSpacing, ds.ImageOrientationPatient = list(spacing), list(orientation)
        ds.ImagePositionPatient = [float(v) for v in origin + k * step * normal]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -5
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).astype(np.uint16).tobytes()
        ds.save_as(folder / f"im{name:03d}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("orientation", [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]], ids=["axial", "sagittal"])
def test_a_dicom_series_reads_with_the_affine_of_its_positions(tmp_path: Path, capsys,
                                                               orientation: list[float]) -> None:
    pytest.importorskip("pydicom")
    setup_logger()
    pixels = np.random.default_rng(0).integers(0, 4000, (6, 5, 4)).astype(np.uint16)
    origin = np.array([-30.0, 20.0, 11.0])
    _write_series(tmp_path / "series", pixels, orientation, (0.8, 0.6), 2.5, origin, order=[2, 0, 3, 1])
    (tmp_path / "series" / "notes.txt").write_text("not DICOM", encoding="utf-8")
    data, affine = read_dicom_series(tmp_path / "series")
    assert "skipped 1 file without a DICOM image: notes.txt" in capsys.readouterr().err
    assert data.shape == (6, 5, 4) and data.dtype == np.float32
    assert np.array_equal(data, pixels.astype(np.float32) * 2 - 5)  # slices sorted by position, not by file name
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    for i, j, k in ((0, 0, 0), (5, 4, 3), (2, 1, 2)):  # DICOM PS3.3 C.7.6.2.1.1, then LPS -> RAS
        lps = origin + i * 0.6 * row + j * 0.8 * col + k * 2.5 * np.cross(row, col)
        np.testing.assert_allclose(nib.affines.apply_affine(affine, [i, j, k]), lps * [-1, -1, 1], atol=1e-9)


def test_dicom_folders_fuse_into_a_volume_and_bad_series_are_refused(tmp_path: Path, capsys, config: Path) -> None:
    pytest.importorskip("pydicom")
    folders = []
    for k in (1, 2, 3):
        pixels = np.random.default_rng(k).integers(1, 4000, (10, 9, 3)).astype(np.uint16)
        folders.append(str(tmp_path / f"s{k}"))
        _write_series(Path(folders[-1]), pixels, [1, 0, 0, 0, 1, 0], (2.0, 2.0), 3.0, np.array([0.0, 0.0, 0.0]))
    out = tmp_path / "fused.nii.gz"
    assert _run(config, folders, out, "--method", "average") == 0
    img = nib.load(str(out))
    assert img.shape == (20, 18, 3) and "".join(nib.aff2axcodes(img.affine)) == "LPS"
    assert read_volume(folders[0]).describe().endswith("10x9x3 voxels of 2x2x3 mm")
    two = tmp_path / "two"
    pixels = np.ones((4, 4, 2), np.uint16)
    _write_series(two, pixels, [1, 0, 0, 0, 1, 0], (1.0, 1.0), 1.0, np.zeros(3), uid="1.2.3")
    _write_series(two, pixels, [1, 0, 0, 0, 1, 0], (1.0, 1.0), 1.0, np.zeros(3) + 50, order=[7, 8], uid="1.2.4")
    with pytest.raises(DicomError, match="holds 2 series .*1.2.3: 2 files.*1.2.4: 2 files"):
        read_dicom_series(two)
    gap = tmp_path / "gap"
    _write_series(gap, np.ones((4, 4, 4), np.uint16), [1, 0, 0, 0, 1, 0], (1.0, 1.0), 1.0, np.zeros(3))
    (gap / "im001.dcm").unlink()
    with pytest.raises(DicomError, match="not evenly spaced"):
        read_dicom_series(gap)
    (tmp_path / "empty").mkdir()
    assert _run(config, [str(tmp_path / "empty"), *folders[1:]], tmp_path / "e.nii.gz", "--method", "average") == 2
    assert "is a folder without DICOM images" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the model path

def test_empty_slices_skip_the_network_and_batches_share_one_generator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_model: Callable[..., Any]) -> None:
    fuser = Fuser.from_model(make_tiny_model(size=16, scale=2))
    fuser.sampler = SamplerConfig(type="respaced", steps=2)
    sliced = slice_volumes([read_volume(p) for p in _triplet(tmp_path / "in")], "axial")
    seen: list[tuple[str, ...]] = []
    original = Fuser.fuse

    def spy(self: Fuser, batch: Any, **kwargs: Any) -> Any:
        seen.append(batch.case_ids)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(Fuser, "fuse", spy)
    result = fuse_slices(sliced, (18, 20), fuser=fuser, batch=2, keep_samples=False, progress=False)
    assert seen == [("0", "1"), ("3", "4"), ("5", "6"), ("7",)]  # slice 2 is empty: never sent to the network
    assert result.empty == (EMPTY,) and result.batch == 2 and result.images.shape == (8, 18, 20, 3)
    assert not result.images[EMPTY].any() and all(result.images[k].any() for k in range(8) if k != EMPTY)
    one = fuse_slices(sliced, (18, 20), fuser=fuser, batch=1, progress=False)
    alone = original(fuser, _slice_batch(sliced, 0, (18, 20)), progress=False)
    assert np.array_equal(one.images[0], alone.image(0))  # batch 1: the first slice is the 2-D result
    assert not np.array_equal(one.images[1], original(fuser, _slice_batch(sliced, 1, (18, 20)),
                                                      progress=False).image(0))  # later slices: the next noise


def _slice_batch(sliced: Any, index: int, size: tuple[int, int]) -> Any:
    from data.fusion_dataset import FusionBatch
    from data.images import to_tensor

    sources = infer.upsample(sliced.sources(index), size)
    return FusionBatch(*(to_tensor(src)[None] for src in sources), target=None, case_ids=("x",))


def test_a_fused_volume_that_would_not_fit_in_memory_is_refused_before_fusing(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, config: Path) -> None:
    assert volume_bytes(8, (18, 20), False) == 8 * 18 * 20 * 9 and volume_bytes(8, (18, 20), True) == 8 * 18 * 20 * 21
    monkeypatch.setattr(infer, "free_memory_bytes", lambda device: volume_bytes(8, (18, 20), False) - 1)
    out = tmp_path / "fused.nii.gz"
    assert _run(config, _triplet(tmp_path / "in"), out, "--method", "average") == 2
    assert "the fused volume (8 axial slices of 18x20, height x width) needs about" in capsys.readouterr().err
    assert not out.exists()


def test_slices_per_batch_fits_free_memory() -> None:
    assert slices_per_batch(8, 100, None) == 8
    assert slices_per_batch(8, 100, 800) == 8
    assert slices_per_batch(8, 100, 350) == 3
    assert slices_per_batch(8, 100, 50) == 1


def _checkpoint(config: Path, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return TFSDiffModel(load_config(config), torch.device("cpu")).save(tmp_path / "ckpt")


@pytest.mark.slow
def test_model_volume_with_uncertainty_volume(tmp_path: Path, config: Path) -> None:
    inputs = _triplet(tmp_path / "in")
    out = tmp_path / "fused.nii.gz"
    assert _run(config, inputs, out, "--checkpoint", str(_checkpoint(config, tmp_path)), "--samples", "2",
                "--uncertainty", "--batch-slices", "4") == 0
    fused, affine = _rgb(out)
    spread = nib.load(str(tmp_path / "fused_uncertainty.nii.gz"))
    assert spread.get_data_dtype() == np.float32 and spread.shape == fused.shape[:3] == (20, 18, 8)
    np.testing.assert_allclose(spread.affine, affine)
    values = np.asarray(spread.dataobj)
    assert values.max() > 0 and not values[:, :, EMPTY].any() and not fused[:, :, EMPTY].any()
    record = json.loads((tmp_path / "fused.json").read_text(encoding="utf-8"))
    assert record["batch_slices"] == 4 and record["sampler"]["samples"] == 2
    assert record["seed"] == load_config(config).seed
    assert record["uncertainty"]["path"] == str(tmp_path / "fused_uncertainty.nii.gz")


@pytest.mark.slow
def test_shipped_model_fuses_a_tiny_volume_and_its_first_slice_as_the_2d_mode_does(tmp_path: Path) -> None:
    config = ROOT / "config" / "demo_x4_64_256.json"
    inputs = _triplet(tmp_path / "in", shape=(16, 16, 3))
    out = tmp_path / "fused.nii.gz"
    assert _run(config, inputs, out, "--batch-slices", "1") == 0
    fused, _ = _rgb(out)
    assert fused.shape == (64, 64, 3, 3)
    record = json.loads((tmp_path / "fused.json").read_text(encoding="utf-8"))
    assert record["method"] == "tfsdiff" and record["sampler"]["type"] == "respaced"
    assert record["checkpoint"].endswith("tfsdiff_x4_64_256.pth")
    pngs = []
    for k, plane in enumerate(_windowed(inputs), start=1):
        pngs.append(tmp_path / f"slice0_{k}.png")
        Image.fromarray(plane[:, :, 0].T[::-1]).save(pngs[-1])
    single = tmp_path / "slice0.png"
    assert infer.main(["-c", str(config), "--inputs", *map(str, pngs), "--out", str(single), "--no-progress"]) == 0
    with Image.open(single) as image:
        assert np.array_equal(fused[:, :, 0], np.asarray(image)[::-1].transpose(1, 0, 2))


def test_bench_volumes_builds_a_t1_t2_pet_triplet_on_one_mni_grid(tmp_path: Path, capsys) -> None:
    from bench.volumes import main, mni_triplet

    paths = mni_triplet(tmp_path)
    volumes, moved = on_one_grid([read_volume(str(p)) for p in paths], None)
    assert not any(moved) and volumes[0].data.shape == (99, 117, 95)
    np.testing.assert_allclose(nib.affines.voxel_sizes(volumes[0].affine), [2.0, 2.0, 2.0])
    t1, t2, pet = (v.data for v in volumes)
    brain = t1 > np.percentile(t1[t1 > 0], 50)
    assert np.corrcoef(t1[brain], t2[brain])[0, 1] < 0  # T2-like: white matter dark, where T1 is bright
    assert np.abs(np.diff(pet, axis=0)).mean() < np.abs(np.diff(t2, axis=0)).mean()  # PET-like: smooth
    assert main(["--threads", "0", "--cases", "grid"]) == 2
    assert "--threads 0: expected at least 1" in capsys.readouterr().err

