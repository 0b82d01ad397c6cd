"""infer.py --input-dir (a folder of cases in one call), --samples K --uncertainty (the samples' spread, from
`Fuser.fuse(keep_samples=True)`), and the HxW sizes and aspect-ratio warning of --out-size (issue 23)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import infer
import model.fuser as fuser_module
from core.config import SamplerConfig, load_config
from core.outputs import FOLDER_MARKER
from core.results_layout import KINDS, write_case
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from data.images import to_tensor
from metrics.figure import GAP, LABEL_WIDTH, MIN_TILE
from model.fuser import Fuser
from model.model import TFSDiffModel

SIZE, LOW = 16, 8  # the x2 model of the config fixture (conftest.tiny_x2_config)
MakeRGB = Callable[..., np.ndarray]
CASES = ("case01", "scan_7")


@pytest.fixture()
def config(tiny_x2_config: Path) -> Path:
    return tiny_x2_config


def _scans(folder: Path, make_rgb: MakeRGB, shape: tuple[int, int] = (LOW, LOW)) -> Path:
    """A folder of two cases named like harvard_trimodal (``case01_1_CT.png``...; ``scan_7`` has an underscore in
    its id and names with no modality or two words after k), plus a README that is skipped and a hidden file."""
    folder.mkdir(parents=True)
    names = {"case01": ("1_CT", "2_MR-T2", "3_SPECT-Tc"), "scan_7": ("1", "2_T2", "3_PET_axial")}
    for i, (case, suffixes) in enumerate(names.items()):
        for k, suffix in enumerate(suffixes, start=1):
            Image.fromarray(make_rgb(10 * i + k, shape, grey=k < 3)).save(folder / f"{case}_{suffix}.png")
    (folder / "README.md").write_text("not a case\n", encoding="utf-8")
    (folder / ".hidden_1_x.png").write_bytes(b"")
    return folder


def _checkpoint(config: Path, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return TFSDiffModel(load_config(config), torch.device("cpu")).save(tmp_path / "ckpt")


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ----------------------------------------------------------------------------------------------- folder mode

def test_folder_mode_writes_the_layout_for_every_case_and_eval_scores_it(tmp_path: Path, capsys, config: Path,
                                                                         make_rgb: MakeRGB) -> None:
    scans = _scans(tmp_path / "scans", make_rgb)
    out = tmp_path / "out"
    assert infer.main(["-c", str(config), "--method", "pca", "--input-dir", str(scans), "--out", str(out),
                       "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 entry" in err and "README.md" in err and ".hidden" not in err
    assert "s per case after loading" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [FOLDER_MARKER] + [f"{case}_{kind}.png" for case in CASES for kind in ("src1", "src2", "src3", "fused")])
    sources = [_read(out / f"scan_7_src{k}.png") for k in (1, 2, 3)]
    assert sources[0].shape == (SIZE, SIZE, 3)  # the inputs' size times the model's scale
    assert np.array_equal(sources[2], infer.upsample([make_rgb(13, (LOW, LOW))], (SIZE, SIZE))[0])
    assert np.array_equal(_read(out / "scan_7_fused.png"), fuse("pca", sources))
    assert eval_cli.main([str(out), "--reference", "sources", "--no-progress"]) == 0
    assert (out / "metrics_sources.md").is_file()


def test_find_cases_splits_at_the_last_k_and_sorts(tmp_path: Path, make_rgb: MakeRGB) -> None:
    scans = _scans(tmp_path / "scans", make_rgb)
    cases = infer.find_cases(scans)
    assert list(cases) == list(CASES)
    assert [p.name for p in cases["scan_7"]] == ["scan_7_1.png", "scan_7_2_T2.png", "scan_7_3_PET_axial.png"]


@pytest.mark.parametrize("change,expected", [
    (lambda d: (d / "case01_3_SPECT-Tc.png").unlink(),
     "case 'case01': no file for k = 3 (has case01_1_CT.png, case01_2_MR-T2.png)"),
    (lambda d: (d / "scan_7_1_again.jpg").write_bytes(b"x"),
     "case 'scan_7': more than one file for k = 1 (scan_7_1.png, scan_7_1_again.jpg, scan_7_2_T2.png"),
], ids=["missing", "ambiguous"])
def test_folder_mode_refuses_an_incomplete_or_ambiguous_case_before_writing(
        tmp_path: Path, capsys, config: Path, make_rgb: MakeRGB, change: Callable[[Path], Any], expected: str) -> None:
    scans = _scans(tmp_path / "scans", make_rgb)
    change(scans)
    out = tmp_path / "out"
    assert infer.main(["-c", str(config), "--method", "average", "--input-dir", str(scans), "--out",
                       str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_folder_mode_follows_the_output_rule(tmp_path: Path, capsys, config: Path, make_rgb: MakeRGB) -> None:
    scans = _scans(tmp_path / "scans", make_rgb)
    base = ["-c", str(config), "--method", "average", "--input-dir", str(scans), "--no-progress", "--out"]
    assert infer.main([*base, str(scans / "res"), "--overwrite"]) == 2  # inside the input folder
    assert "lies inside the input folder" in capsys.readouterr().err and not (scans / "res").exists()
    assert infer.main([*base, str(tmp_path), "--overwrite"]) == 2  # contains the inputs
    assert "contains the input" in capsys.readouterr().err
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine", encoding="utf-8")
    assert infer.main([*base, str(users), "--overwrite"]) == 2
    assert "was not written by TFS-Diff" in capsys.readouterr().err
    assert (users / "notes.txt").read_text(encoding="utf-8") == "mine"
    out = tmp_path / "out"
    assert infer.main([*base, str(out)]) == 0
    first = (out / "case01_fused.png").read_bytes()
    assert infer.main([*base, str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert infer.main([*base[:3], "maximum", *base[4:], str(out), "--overwrite"]) == 0
    assert (out / "case01_fused.png").read_bytes() != first and not list(tmp_path.glob(".out*"))


def test_folder_mode_and_uncertainty_argument_errors(tmp_path: Path, capsys, config: Path,
                                                     make_rgb: MakeRGB) -> None:
    scans = _scans(tmp_path / "scans", make_rgb)
    ins = ["--inputs", *(str(p) for p in sorted(scans.glob("case01_*")))]
    for argv, message in (
            (["--input-dir", str(scans)], "--input-dir needs --out FOLDER"),
            (["--input-dir", str(tmp_path / "none"), "--out", "o"], "does not exist"),
            ([*ins, "--input-dir", str(scans), "--out", "o"], "give one of them"),
            (["--input-dir", str(scans), "--out", "o", "--samples", "2", "--uncertainty", "u.png"],
             "pass --uncertainty without a file name"),
            ([*ins, "--out", "o.png", "--method", "average", "--uncertainty"], "method 'average' is deterministic"),
            (["--uncertainty"], "--uncertainty needs --inputs or --input-dir"),
            ([*ins, "--out", "o.png", "--uncertainty", "u.jpg", "--samples", "2"], "expected a .png file name"),
            ([*ins, "--out", "o.png", "--uncertainty"], "--uncertainty needs --samples K with K >= 2 (got 1)"),
            ([*ins, "--out", "o.png", "--uncertainty", "--samples", "1"], "with K >= 2 (got 1)")):
        assert infer.main(["-c", str(config), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists() and not Path("o.png").exists()


@pytest.mark.slow
def test_folder_mode_with_the_model_equals_single_cases_and_writes_uncertainty(tmp_path: Path, config: Path,
                                                                                make_rgb: MakeRGB) -> None:
    checkpoint = _checkpoint(config, tmp_path)
    scans = _scans(tmp_path / "scans", make_rgb, shape=(LOW, LOW + 3))
    out = tmp_path / "out"
    model = ["-c", str(config), "--checkpoint", str(checkpoint), "--samples", "2", "--no-progress"]
    assert infer.main([*model, "--input-dir", str(scans), "--out", str(out), "--uncertainty", "--process"]) == 0
    assert {p.name for p in out.iterdir()} == {FOLDER_MARKER} | {f"{c}_{k}.png" for c in CASES for k in KINDS
                                                                   if k != "hr"}
    for case in CASES:
        files = [str(p) for p in sorted(scans.glob(f"{case}_[123]*.png"))]
        single = tmp_path / "single" / f"{case}.png"
        assert infer.main([*model, "--inputs", *files, "--out", str(single), "--uncertainty"]) == 0
        assert np.array_equal(_read(single), _read(out / f"{case}_fused.png"))
        with Image.open(out / f"{case}_uncertainty.png") as grey:
            assert grey.mode == "L" and grey.size == (2 * (LOW + 3), SIZE)
        assert np.array_equal(_read(single.with_name(f"{case}_uncertainty.png")),
                              _read(out / f"{case}_uncertainty.png"))


# ----------------------------------------------------------------------------------------------- uncertainty

def _fuse_batch(make_rgb: MakeRGB, size: tuple[int, int] = (16, 12)) -> FusionBatch:
    sources = [torch.stack([to_tensor(make_rgb(40 + 10 * i + k, size)) for i in range(2)]) for k in range(3)]
    return FusionBatch(*sources, target=None, case_ids=("a", "b"))


@pytest.mark.parametrize("changes", [{}, {"model.diffusion.residual_base": "laplacian_ycbcr",
                                          "model.diffusion.residual_scale": 4.0}], ids=["plain", "residual"])
def test_keeping_the_samples_leaves_the_mean_bit_for_bit(changes: dict[str, Any], make_tiny_model: Callable[..., Any],
                                                         make_rgb: MakeRGB) -> None:
    fuser = Fuser.from_model(make_tiny_model(changes=changes))
    sampler = SamplerConfig(type="respaced", steps=3, samples=3, clip="image")
    batch = _fuse_batch(make_rgb)
    for process in (False, True):
        plain = fuser.fuse(batch, sampler=sampler, process=process, progress=False)
        kept = fuser.fuse(batch, sampler=sampler, process=process, progress=False, keep_samples=True)
        assert plain.samples is None and kept.samples is not None
        assert torch.equal(plain.images, kept.images)
        assert kept.samples.shape == (3, 2, 3, 16, 12) and kept.samples.abs().max() <= 1.0
        spread = kept.spread(1)
        assert spread.shape == (16, 12) and spread.dtype == np.float64 and (spread >= 0).all() and spread.max() > 0
    one = fuser.fuse(batch, sampler=SamplerConfig(type="respaced", steps=3), progress=False, keep_samples=True)
    # a one-sample run's image is its only sample; one sample has no spread
    assert torch.equal(one.samples[0], one.images.clamp(-1.0, 1.0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        one.spread(0)
    with pytest.raises(ValueError, match="keep_samples=True"):
        fuser.fuse(batch, sampler=sampler, progress=False).spread(0)


def test_the_spread_is_zero_when_the_samples_are_identical(monkeypatch: pytest.MonkeyPatch,
                                                           make_tiny_model: Callable[..., Any],
                                                           make_rgb: MakeRGB) -> None:
    fuser = Fuser.from_model(make_tiny_model())
    same = torch.linspace(-1.5, 1.5, 2 * 3 * 16 * 12).reshape(2, 3, 16, 12)  # beyond [-1, 1]: clipped per sample
    monkeypatch.setattr(fuser_module, "sample_loop", lambda *args, **kwargs: same.clone())
    result = fuser.fuse(_fuse_batch(make_rgb), sampler=SamplerConfig(type="respaced", steps=3, samples=4),
                        progress=False, keep_samples=True)
    assert torch.equal(result.images, same)  # the mean before clipping, as before
    assert all(torch.equal(s, same.clamp(-1.0, 1.0)) for s in result.samples)
    assert np.array_equal(result.spread(0), np.zeros((16, 12)))


def test_the_spread_is_the_std_of_the_luminance_in_grey_levels() -> None:
    grey = torch.zeros(2, 1, 3, 1, 2)
    grey[0, 0, :, 0, 0], grey[1, 0, :, 0, 0] = -1.0, 1.0  # one pixel: black in one sample, white in the other
    grey[0, 0, 0, 0, 1] = grey[1, 0, 0, 0, 1] = 0.5  # the other pixel: the same red in both
    spread = fuser_module.FusedBatch(grey.mean(0), samples=grey).spread(0)
    np.testing.assert_allclose(spread, [[127.5, 0.0]])  # std of {0, 255} (divided by K) and of equal values


# ----------------------------------------------------------------------------------------------- sizes

def test_aspect_warning_names_both_ratios(tmp_path: Path, capsys, config: Path, make_rgb: MakeRGB) -> None:
    assert infer.aspect_warning((8, 12), (16, 24), "the inputs") is None
    assert infer.aspect_warning((64, 64), (256, 258), "the inputs") is None  # within 1 %
    message = infer.aspect_warning((8, 12), (16, 16), "the inputs")
    assert message is not None and "--out-size 16x16 (height x width)" in message
    assert "1.000" in message and "the inputs 8x12 have 1.500" in message
    paths = []
    for k in (1, 2, 3):
        paths.append(tmp_path / f"s{k}.png")
        Image.fromarray(make_rgb(k, (8, 12))).save(paths[-1])
    out = tmp_path / "o.png"
    base = ["-c", str(config), "--method", "average", "--inputs", *map(str, paths), "--out", str(out), "--overwrite"]
    assert infer.main(base) == 0
    err = capsys.readouterr().err
    assert "aspect ratio" not in err and "(8x12, height x width)" in err and "(16x24)" in err
    assert infer.main([*base, "--out-size", "20", "10"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "aspect ratio (width / height) 0.500" in err and "8x12 have 1.500" in err
    assert _read(out).shape == (20, 10, 3)
    scans = _scans(tmp_path / "scans", make_rgb)
    assert infer.main(["-c", str(config), "--method", "average", "--input-dir", str(scans), "--out",
                       str(tmp_path / "res"), "--out-size", "16", "32", "--no-progress"]) == 0
    assert "8x8 have 1.000: the sources are stretched to it, not cropped (2 cases: case01, scan_7)" in \
        capsys.readouterr().err
    assert _read(tmp_path / "res" / "case01_fused.png").shape == (16, 32, 3)


def test_the_figure_shows_the_uncertainty_maps_of_a_method_that_has_them(tmp_path: Path, make_rgb: MakeRGB) -> None:
    for method, with_map in (("average", False), ("tfsdiff", True)):
        for i, case in enumerate(CASES):
            write_case(tmp_path / "res" / method, case, [make_rgb(i + k) for k in (1, 2, 3)], make_rgb(9 + i),
                       uncertainty=make_rgb(20 + i)[..., 0] if with_map else None)
    figure = tmp_path / "fig.png"
    assert eval_cli.main([str(tmp_path / "res"), "--reference", "sources", "--figure", str(figure),
                          "--no-progress"]) == 0
    with Image.open(figure) as img:  # columns: 3 inputs, 2 methods, the spread of tfsdiff
        assert img.width == LABEL_WIDTH + 6 * (MIN_TILE + GAP)
    (tmp_path / "res" / "tfsdiff" / "scan_7_uncertainty.png").unlink()
    assert eval_cli.main([str(tmp_path / "res"), "--reference", "sources", "--figure", str(figure), "--overwrite",
                          "--no-progress"]) == 0
    with Image.open(figure) as img:  # a map missing for a shown case: no column
        assert img.width == LABEL_WIDTH + 5 * (MIN_TILE + GAP)


def test_bench_uncertainty_ranking_of_spread_against_error() -> None:
    from paper.uncertainty import ranking
    spread = np.arange(20, dtype=np.float64)
    result = ranking(spread, spread * 2, 0.1)  # a perfect ranking: the top 2 pixels hold the largest errors
    assert result.pixels == 20 and result.spearman == pytest.approx(1.0) and result.pearson == pytest.approx(1.0)
    assert result.top_error == pytest.approx(37.0) and result.rest_error == pytest.approx(17.0)
    assert result.top_share == pytest.approx(74 / 380)
    assert ranking(spread, -spread + 20, 0.1).spearman == pytest.approx(-1.0)
