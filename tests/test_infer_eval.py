"""Tests of infer.py, eval.py, metrics/tables.py, metrics/figure.py and the baseline rules of data/fusion_rules.py."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import infer
from core.config import load_config
from data.fusion_rules import FUSION_RULES, _pca_weights, fuse, haar_dwt2, haar_idwt2, rgb_to_ycbcr
from data.layout import hr_dir, sr_dir
from model.fuser import pad_to_multiple
from model.model import TFSDiffModel

SIZE, LOW = 16, 8
MakeRGB = Callable[..., np.ndarray]
MakeResults = Callable[..., None]


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------------------------- baseline rules

def test_haar_dwt_is_orthonormal_and_invertible() -> None:
    img = np.random.default_rng(0).normal(size=(6, 10))
    bands = haar_dwt2(img)
    np.testing.assert_allclose(haar_idwt2(*bands), img, atol=1e-12)
    assert sum(float(np.sum(b**2)) for b in bands) == pytest.approx(float(np.sum(img**2)))


@pytest.mark.parametrize("rule", sorted(FUSION_RULES))
def test_every_rule_keeps_identical_sources_and_any_size(rule: str, make_rgb: MakeRGB) -> None:
    src = make_rgb(1, (13, 21), grey=True)
    np.testing.assert_array_equal(fuse(rule, [src, src, src]), src)
    assert fuse(rule, [make_rgb(2, (13, 21)), make_rgb(3, (13, 21)), make_rgb(4, (13, 21))]).shape == (13, 21, 3)


def test_maximum_and_average_luminance_with_chroma_of_the_most_colourful_source() -> None:
    rng = np.random.default_rng(5)
    grey1, grey2, base = (np.repeat(rng.integers(60, 190, (SIZE, SIZE, 1)), 3, axis=2) for _ in range(3))
    colour = (base + np.array([20, 0, -20])).astype(np.uint8)  # mild tint: no clipping after fusion
    sources = [grey1.astype(np.uint8), grey2.astype(np.uint8), colour]
    ycc = [rgb_to_ycbcr(s) for s in sources]
    ys = [c[..., 0] for c in ycc]
    for rule, expected_y in (("maximum", np.max(ys, axis=0)), ("average", np.mean(ys, axis=0))):
        out = rgb_to_ycbcr(fuse(rule, sources))
        np.testing.assert_allclose(out[..., 0], expected_y, atol=1.0)  # uint8 RGB rounding
        np.testing.assert_allclose(out[..., 1:], ycc[2][..., 1:], atol=1.5)


def test_dwt_keeps_the_finest_detail_and_averages_the_approximation() -> None:
    flat = np.full((SIZE, SIZE, 3), 100, np.uint8)
    checker = flat.copy()
    checker[(np.indices((SIZE, SIZE)).sum(axis=0) % 2) == 1] = 150
    # level-1 diagonal detail of the checker is kept (+-25); every approximation is the mean of 100, 125, 100
    expected = np.where(checker == 150, np.rint(325 / 3 + 25), np.rint(325 / 3 - 25)).astype(np.uint8)
    np.testing.assert_array_equal(fuse("dwt", [flat, checker, flat]), expected)


# ----------------------------------------------------------------------------------------------- eval.py

PERFECT = 200  # the fused seed of make_results that reproduces the targets


def test_eval_writes_tables_per_scale_with_ablation_and_figure(tmp_path: Path, capsys,
                                                               make_results: MakeResults) -> None:
    ids = ["c1", "c2", "c3"]
    for scale in ("x2", "x4"):
        make_results(tmp_path / scale / "tfsdiff", ids, PERFECT)
        make_results(tmp_path / scale / "average", ids, 300)
        make_results(tmp_path / scale / "wo_tmfa", ids, 400)
    prefix, figure = tmp_path / "out" / "table", tmp_path / "fig.png"
    code = eval_cli.main([str(tmp_path), "--out", str(prefix), "--figure", str(figure), "--cases", "c2",
                          "--no-progress"])
    assert code == 0
    markdown = Path(f"{prefix}.md").read_text(encoding="utf-8")
    assert "## Scale ×2 (3 cases)" in markdown and "## Scale ×4 (3 cases)" in markdown
    assert markdown.count("### Ablation") == 2 and "| w/o TMFA |" in markdown
    assert ("| Method | MSE (grey) ↓ | VIF (grey, VIFF) ↑ | SSIM (grey, data_range 255) ↑ | PSNR (grey, peak 255) ↑ | "
            "LPIPS (RGB, AlexNet) ↓ | MAE (grey) ↓ | RMSE (grey) ↓ | AG (grey) ↓ |") in markdown
    assert "| TFS-Diff (ours) | **0.00 ± 0.00** |" in markdown  # perfect fusion wins MSE, in bold
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    with open(f"{prefix}_per_image.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 3 and {r["case_id"] for r in rows} == set(ids)
    assert all(r["MSE"] == "0.0" for r in rows if r["method"] == "tfsdiff")
    summary = Path(f"{prefix}.csv").read_text(encoding="utf-8")
    assert summary.startswith("scale,method,metric,higher_is_better,mean,std,n")
    assert r"\textbf" in Path(f"{prefix}.tex").read_text(encoding="utf-8")
    with Image.open(figure) as img:  # rows: 2 scales x 1 case; columns: 3 inputs, 3 methods, ground truth
        assert img.height == 30 + 2 * (128 + 4) and img.width == 120 + 7 * (128 + 4)


def test_methods_are_ordered_rules_then_other_methods_then_ablations_then_tfsdiff() -> None:
    names = ["wo_psf_x4", "tfsdiff", "pca", "official_x4", "wo_tmfa", "laplacian_ycbcr", "tfsdiff_x4", "average"]
    assert sorted(names, key=eval_cli._method_order) == [
        "average", "laplacian_ycbcr", "pca", "official_x4", "tfsdiff_x4", "wo_psf_x4", "wo_tmfa", "tfsdiff"]


def test_eval_sources_reference_and_missing_lpips_weights(tmp_path: Path, monkeypatch, capsys,
                                                          make_results: MakeResults) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    make_results(tmp_path / "res" / "dwt", ["a", "b"], 50, with_target=False)
    code = eval_cli.main([str(tmp_path / "res" / "dwt"), "--reference", "sources", "--suite", "all", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "alexnet-owt-7be5be79.pth" in captured.err
    markdown = (tmp_path / "res" / "dwt" / "metrics_sources.md").read_text(encoding="utf-8")
    assert "mean over the three sources" in markdown and "| Qabf (grey) ↑ |" in markdown
    assert markdown.count("n/a") >= 1


def test_eval_pairing_errors_list_the_ids(tmp_path: Path, capsys, make_results: MakeResults) -> None:
    make_results(tmp_path / "tfsdiff", ["a", "b", "c"], 1)
    make_results(tmp_path / "pca", ["a", "c"], 2)
    assert eval_cli.main([str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pca: missing b" in err
    (tmp_path / "tfsdiff" / "b_fused.png").unlink()
    (tmp_path / "pca" / "c_hr.png").unlink()
    assert eval_cli.main([str(tmp_path), "--no-progress"]) == 2
    assert "cases without their src1/src2/src3/hr images: c" in capsys.readouterr().err
    assert eval_cli.main([str(tmp_path), "--reference", "sources", "--figure", str(tmp_path / "f.png"),
                          "--cases", "zz", "--no-progress"]) == 2
    assert "unknown case id(s) zz" in capsys.readouterr().err
    assert eval_cli.main([str(tmp_path / "nowhere")]) == 2


# ----------------------------------------------------------------------------------------------- infer.py

@pytest.fixture()
def config(tmp_path: Path, make_tiny_config: Callable[..., dict[str, Any]], make_rgb: MakeRGB) -> Path:
    """``tmp_path/tiny.json``: a x2 model of 3 steps with 8 channels and no attention, whose three splits are one
    folder of 3 random cases ``p1``..``p3`` (source ``k`` of case ``i`` seeded ``10 i + k``)."""
    root = tmp_path / "data"
    split = {"dataroot": str(root), "l_resolution": LOW, "r_resolution": SIZE, "batch_size": 2}
    cfg = make_tiny_config(SIZE, SIZE // LOW, steps=3, changes={
        "path.experiments_root": str(tmp_path / "exp"), "datasets.train": split, "datasets.val": split,
        "datasets.test": split, "model.unet.inner_channel": 8, "model.unet.norm_groups": 4, "model.unet.attn_res": []})
    for i, case in enumerate(["p1", "p2", "p3"]):
        for k in (1, 2, 3):
            _save(sr_dir(root, k, LOW, SIZE) / f"{case}.png", make_rgb(10 * i + k))
        _save(hr_dir(root, SIZE) / f"{case}.png", make_rgb(50 + i))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _tiny_checkpoint(config: Path, tmp_path: Path) -> Path:
    """The checkpoint of a fresh model of ``config``, initialised from seed 0."""
    torch.manual_seed(0)
    return TFSDiffModel(load_config(config), torch.device("cpu")).save(tmp_path / "ckpt")


@pytest.mark.slow
def test_infer_split_with_model_and_rule_then_eval(tmp_path: Path, monkeypatch, config: Path,
                                                   make_rgb: MakeRGB) -> None:
    checkpoint = _tiny_checkpoint(config, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert infer.main(["-c", str(config), "--checkpoint", str(checkpoint), "--process", "--no-progress"]) == 0
    out = tmp_path / "results" / "tiny" / "test" / "tfsdiff"
    names = {p.name for p in out.iterdir()}
    assert {f"p1_{s}.png" for s in ("fused", "src1", "src2", "src3", "hr", "process")} <= names
    assert infer.main(["-c", str(config), "--method", "pca", "--split", "val"]) == 0
    rule_out = tmp_path / "results" / "tiny" / "val" / "pca"
    src = np.asarray(Image.open(rule_out / "p2_src1.png"))
    np.testing.assert_array_equal(src, make_rgb(11))
    expected = fuse("pca", [np.asarray(Image.open(rule_out / f"p2_src{k}.png")) for k in (1, 2, 3)])
    np.testing.assert_array_equal(np.asarray(Image.open(rule_out / "p2_fused.png")), expected)
    assert eval_cli.main([str(out), str(tmp_path / "results" / "tiny" / "test"), "--no-progress"]) == 0


def test_infer_needs_a_checkpoint(tmp_path: Path, capsys, config: Path) -> None:
    assert infer.main(["-c", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_single_case_any_size(tmp_path: Path, config: Path, make_rgb: MakeRGB) -> None:
    """The inputs are the LR sources: the output is scale x their size (the tiny model is x2), or --out-size;
    non-square and non-multiple-of-4 sizes keep their shape (padded for the U-Net, cropped back)."""
    checkpoint = _tiny_checkpoint(config, tmp_path)
    paths = [tmp_path / "t1.png", tmp_path / "t2.png", tmp_path / "spect.png"]
    Image.fromarray(make_rgb(1, (21, 13))[..., 0]).save(paths[0])  # grey, portrait
    _save(paths[1], make_rgb(2, (21, 13), grey=True))
    _save(paths[2], make_rgb(3, (21, 13)))
    out = tmp_path / "fused" / "case.png"
    args = ["-c", str(config), "--checkpoint", str(checkpoint), "--inputs", *map(str, paths), "--out", str(out),
            "--overwrite"]
    for extra, size in (([], (26, 42)), (["--out-size", "16", "16"], (16, 16)), (["--out-size", "21", "30"], (30, 21))):
        assert infer.main([*args, *extra, "--process", "--no-progress"]) == 0
        with Image.open(out) as img:
            assert img.size == size and img.mode == "RGB"
        assert (tmp_path / "fused" / "case_process.png").is_file()
        assert infer.main([*args[:4], "--method", "maximum", *args[4:], *extra]) == 0
        with Image.open(out) as img:
            assert img.size == size


def test_pad_to_multiple_reflects_and_keeps_multiples() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    assert torch.equal(padded[..., :5, :6], x)
    assert torch.equal(padded[..., 5, :6], x[..., 3, :])  # reflection about the last row
    assert torch.equal(pad_to_multiple(x[..., :4, :4], 4), x[..., :4, :4])
    tiny = torch.ones(1, 1, 1, 1)
    assert pad_to_multiple(tiny, 4).shape == (1, 1, 4, 4)  # too small to reflect: edge replication


def test_infer_single_case_input_errors_name_the_file(tmp_path: Path, capsys, config: Path,
                                                     make_rgb: MakeRGB) -> None:
    good = tmp_path / "good.png"
    _save(good, make_rgb(1))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    small = tmp_path / "small.png"
    _save(small, make_rgb(2, (8, 8)))
    base = ["-c", str(config), "--method", "average", "--out", str(tmp_path / "o.png"), "--inputs"]
    assert infer.main([*base, str(good), str(good), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert infer.main([*base, str(good), str(corrupt), str(good)]) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert infer.main([*base, str(good), str(small), str(good)]) == 2
    assert "one size" in capsys.readouterr().err


PEERS = Path(__file__).resolve().parents[1].parent / "shared" / "peers"


@pytest.mark.skipif(not (PEERS / "IFCNN" / "weights").is_dir(), reason="needs ../shared/peers (the authors' weights)")
def test_infer_fuses_with_a_published_method(tmp_path: Path, config: Path, make_rgb: MakeRGB) -> None:
    """--method ifcnn --peer-dir DIR: the published method fuses the same bicubic-upsampled sources as the rules,
    single case and split mode alike."""
    from model.peers import ifcnn
    paths = []
    for k in (1, 2, 3):
        paths.append(tmp_path / f"s{k}.png")
        Image.fromarray(make_rgb(k, (16, 16))).save(paths[-1])
    out = tmp_path / "fused.png"
    peer_dir = str(PEERS / "IFCNN" / "weights")
    assert infer.main(["-c", str(config), "--method", "ifcnn", "--peer-dir", peer_dir, "--inputs",
                       *map(str, paths), "--out", str(out)]) == 0
    sources = infer.upsample([np.asarray(Image.open(p).convert("RGB")) for p in paths], (32, 32))
    expected = ifcnn.load(peer_dir).fuse(sources)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    assert infer.main(["-c", str(config), "--method", "ifcnn", "--peer-dir", peer_dir, "--out",
                       str(tmp_path / "split")]) == 0
    assert sorted(p.name for p in (tmp_path / "split" / "ifcnn").glob("*_fused.png"))
