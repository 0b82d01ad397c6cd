"""SR3, the first stage of the paper's sequential baselines (model.task "sr3"): the model and its configs, its data
(`prepare_data.py sr3`: train and val subjects only), training and resuming through sr.py, release, and
`--method sr3+NAME` in infer.py (single-case and split mode) and paper.real_scans (`--sr3`)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import infer
import sr
from core.config import ConfigError, load_config, parse_config
from data.fusion_rules import FUSION_RULES, fuse
from data.images import read_image
from data.layout import hr_dir, single_sr_dir, sr_dir, write_single_case
from data.prepare_data import main as prepare_main
from data.sr_dataset import SRBatch, SRDataset
from model import release
from model.fuser import Fuser
from model.model import TFSDiffModel, build_diffusion
from model.sr3 import SR3Error, SuperResolver, fusion_method_of, load_sr3
from paper import real_scans

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
SR3_CHANGES = {"model.task": "sr3", "model.unet.in_channel": 6, "model.tmfa": {"placement": "off"},
               "model.loss": {"type": "mse"}}
TEST_SUBJECTS = ("21", "28", "41")  # prepare_data's default test subjects
# kind -> (folder names, pair ids): train/val subjects 11-16, and the test subjects' pairs (21001 and 28001 share their
# MRI between CT-MRI and SPECT-MRI: real test triplets)
PAIRS = {"CT-MRI": (("CT", "MRI"), ("11001", "11002", "12001", "21001", "28001")),
         "SPECT-MRI": (("MRI", "SPECT"), ("13001", "14001", "14002", "21001", "28001")),
         "PET-MRI": (("MRI", "PET"), ("15001", "16001", "41001"))}
PAIR_SIZE, SIZE, SCALE = 32, 16, 4


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _make_pairs(root: Path, make_rgb: Callable[..., np.ndarray]) -> Path:
    """Harvard pair folders of PAIRS: a random image per (modality, id), the MRI of an id the same in every kind."""
    for kind, (names, ids) in PAIRS.items():
        for name in names:
            for pair_id in ids:
                seed = int(pair_id) * 10 + ("CT", "MRI", "SPECT", "PET").index(name)
                _save(root / kind / name / f"{pair_id}.png",
                      make_rgb(seed, (PAIR_SIZE, PAIR_SIZE), grey=name in ("CT", "MRI")))
    return root


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("// test config\n" + json.dumps(data, indent=1), encoding="utf-8")
    return path


def _sr3_config(make_tiny_config: Callable[..., dict], size: int = SIZE, scale: int = SCALE,
                changes: dict[str, Any] | None = None) -> dict[str, Any]:
    return make_tiny_config(size, scale, changes={**SR3_CHANGES, **(changes or {})})


# ------------------------------------------------------------------------------------------------ model and configs


def test_the_sr3_model_is_the_unet_on_one_source(make_tiny_config: Callable[..., dict]) -> None:
    cfg = parse_config(_sr3_config(make_tiny_config))
    net = build_diffusion(cfg.model).denoise_fn
    assert net.downs[0].in_channels == 6 and net.condition_channels == 3 and not hasattr(net, "SE_block")
    g = torch.Generator().manual_seed(0)
    eps = net(torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g), torch.rand(2))
    assert eps.shape == (2, 3, SIZE, SIZE)
    fusion = build_diffusion(parse_config(make_tiny_config(SIZE, SCALE)).model).denoise_fn
    assert fusion.downs[0].in_channels == 12


@pytest.mark.parametrize(("changes", "key", "message"), [
    ({"model.unet.in_channel": 12}, "model.unet.in_channel", "expected 3 + out_channel = 6"),
    ({"model.tmfa": {"placement": "condition"}}, "model.tmfa.placement", "set model.tmfa.placement to 'off'"),
    ({"model.diffusion.residual_base": "average"}, "model.diffusion.residual_base", "set it to null"),
    ({"model.task": "sr4"}, "model.task", "expected one of 'fusion', 'sr3', got 'sr4'"),
])
def test_sr3_config_errors_name_the_key(make_tiny_config: Callable[..., dict], changes: dict[str, Any], key: str,
                                        message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_sr3_config(make_tiny_config, changes=changes))
    assert err.value.key == key and message in err.value.reason


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_committed_sr3_configs_have_the_network_and_budget_of_our_row(scale: int) -> None:
    low = 256 // scale
    ours = load_config(CONFIG_DIR / f"sr3_x{scale}_{low}_256.json")
    stage1 = load_config(CONFIG_DIR / f"harvard_x{scale}_residual_{low}_256.json")
    stage2 = load_config(CONFIG_DIR / f"harvard_x{scale}_residual_start200_{low}_256.json")
    assert ours.model.task == "sr3" and ours.model.tmfa.placement == "off" and ours.model.loss.type == "mse"
    assert ours.model.diffusion.residual_base is None and ours.model.diffusion.train_max_step is None
    assert ours.model.unet == type(stage1.model.unet)(**{**vars(stage1.model.unet), "in_channel": 6})
    assert ours.model.beta_schedule == stage1.model.beta_schedule and ours.seed == stage1.seed
    assert ours.train.n_iter == stage2.train.n_iter == 10_000 and ours.train.ema_scheduler == stage1.train.ema_scheduler
    for split in ("train", "val"):
        mine, theirs = getattr(ours.datasets, split), getattr(stage1.datasets, split)
        assert mine.dataroot == str(ROOT / f"datasets/sr3_harvard/{split}")
        assert (mine.l_resolution, mine.r_resolution, mine.batch_size, mine.patch_size) == (
            theirs.l_resolution, theirs.r_resolution, theirs.batch_size, theirs.patch_size)
    assert ours.datasets.test is None and ours.path.pretrained == str(ROOT / f"pretrained/sr3_x{scale}_{low}_256.pth")
    parameters = sum(p.numel() for p in build_diffusion(ours.model).denoise_fn.parameters())
    assert 2_820_000 < parameters < 2_840_000  # the 2.83 M of the TFS-Diff row, less TMFA and 6 input channels


# ------------------------------------------------------------------------------------------------ data


@pytest.mark.slow
def test_sr3_data_hold_the_train_and_val_sources_and_never_a_test_subject(tmp_path: Path, make_rgb) -> None:
    pairs = _make_pairs(tmp_path / "pairs", make_rgb)
    common = ["--input", str(pairs), "--size", str(SIZE), "--scales", str(SCALE), "--copies", "2", "--quiet"]
    assert prepare_main(["sr3", *common, "--out", str(tmp_path / "sr3")]) == 0
    assert prepare_main(["pairs", *common, "--out", str(tmp_path / "fusion")]) == 0
    manifest = json.loads((tmp_path / "sr3" / "manifest.json").read_text())
    fusion = json.loads((tmp_path / "fusion" / "manifest.json").read_text())
    assert manifest["task"] == "sr3" and manifest["subjects"]["test"] == list(TEST_SUBJECTS)
    assert sorted(p.name for p in (tmp_path / "sr3").iterdir() if p.is_dir()) == ["train", "val"]
    train_val = set(manifest["subjects"]["train"]) | set(manifest["subjects"]["val"])
    assert not train_val & set(TEST_SUBJECTS)
    for split in ("train", "val"):
        ids = manifest["splits"][split]
        # every source of every triplet of the fusion dataset's split, in order
        assert ids == [f"{case}_s{k}" for case in fusion["splits"][split] for k in (1, 2, 3)]
        assert sorted(SRDataset(tmp_path / "sr3" / split, SIZE // SCALE, SIZE).case_ids) == sorted(ids)
        for image_id in ids:
            triplet = manifest["cases"][image_id]["triplet"]
            files = manifest["triplet_cases"][triplet]["from"]
            subjects = {re.fullmatch(r".*/(\d+)\d{3}\.png", f).group(1) for f in files}
            assert subjects <= set(manifest["subjects"][split]), (image_id, files)
            assert not re.search(r"_(21|28|41)\d{3}_", image_id)
            # the same degradation of the same HR source as the fusion dataset's input k
            k = manifest["cases"][image_id]["source"]
            np.testing.assert_array_equal(
                read_image(single_sr_dir(tmp_path / "sr3" / split, SIZE // SCALE, SIZE) / f"{image_id}.png"),
                read_image(sr_dir(tmp_path / "fusion" / split, k, SIZE // SCALE, SIZE) / f"{triplet}.png"))
    # no HR image is a test subject's image (as the writer would resize it)
    test_images = [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
                   for p in pairs.rglob("*.png") if p.stem[:-3] in TEST_SUBJECTS]
    for path in (tmp_path / "sr3").rglob("hr_16/*.png"):
        assert not any(np.array_equal(read_image(path), image) for image in test_images), path
    assert prepare_main(["sr3", *common, "--out", str(tmp_path / "bad"), "--gt-fusion", "pca"]) == 2


# ------------------------------------------------------------------------------------------------ training


def _sr_dataset(root: Path, make_rgb: Callable[..., np.ndarray], size: int, scale: int) -> Path:
    """A synthetic single-image dataset (train: 4 images, val: 2) of smooth random images."""
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            small = make_rgb(100 * (split == "val") + i, (size // 4, size // 4))
            image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
            write_single_case(root / split, f"img{i}", image, [size // scale])
    return root


@pytest.mark.slow
def test_sr3_trains_validates_resumes_and_releases_through_sr_py(tmp_path: Path, make_rgb,
                                                                  make_tiny_config: Callable[..., dict]) -> None:
    data = _sr_dataset(tmp_path / "data", make_rgb, 32, 4)

    def config(name: str, **changes: Any) -> Path:
        return _write_json(tmp_path / f"{name}.json", _sr3_config(make_tiny_config, 32, 4, {
            "name": name, "path.experiments_root": str(tmp_path / "experiments"),
            "datasets.train.dataroot": str(data / "train"), "datasets.val.dataroot": str(data / "val"),
            "datasets.val.batch_size": 2, "train.n_iter": 4, "train.val_freq": 2, "train.save_checkpoint_freq": 2,
            "train.ema_scheduler": {"step_start_ema": 1, "update_ema_every": 1, "ema_decay": 0.5}, **changes}))

    assert sr.main(["-c", str(config("full")), "--no-progress"]) == 0
    (full,) = (tmp_path / "experiments").glob("full_train_*")
    assert sorted(p.name for p in (full / "checkpoint").glob("*.pth")) == ["I2_E1.pth", "I4_E2.pth"]
    results = sorted(p.name for p in (full / "results" / "step_2").iterdir())
    assert results == sorted(f"img{i}_{kind}.png" for i in (0, 1) for kind in ("src1", "fused", "hr"))
    log = (full / "logs" / "train.log").read_text()
    assert "validation at step 4: 2 cases; model: PSNR (grey" in log and "bicubic baseline: PSNR" in log

    resumed_cfg = config("resumed", **{"path.resume_state": str(full / "checkpoint" / "I2_E1.pth")})
    assert sr.main(["-c", str(resumed_cfg), "--no-progress"]) == 0
    (resumed,) = (tmp_path / "experiments").glob("resumed_train_*")
    a, b = (torch.load(run / "checkpoint" / "I4_E2.pth", weights_only=True) for run in (full, resumed))
    assert a["config"]["model"]["task"] == "sr3"
    for part in ("model", "ema"):
        assert all(torch.equal(value, b[part][key]) for key, value in a[part].items()), part

    weights = tmp_path / "pretrained" / "sr3_tiny.pth"
    assert release.main(["--checkpoint", str(full), "--config", str(config("full")), "--out", str(weights)]) == 0
    assert sr.main(["-p", "val", "-c", str(config("full")), "--checkpoint", str(weights), "--no-progress"]) == 0
    fusion_cfg = _write_json(tmp_path / "fusion.json", make_tiny_config(32, 4))
    assert release.main(["--checkpoint", str(full), "--config", str(fusion_cfg), "--out",
                         str(tmp_path / "wrong.pth")]) == 2  # a fusion config does not describe an SR3 network


# ------------------------------------------------------------------------------------------------ sr3+NAME


@pytest.fixture()
def sr3_model(tmp_path: Path, make_tiny_config: Callable[..., dict]) -> tuple[Path, Path]:
    """(config file, checkpoint) of a tiny randomly initialised SR3 model at x4, 16 px, without released weights."""
    cfg = _write_json(tmp_path / "sr3" / "sr3_tiny.json", _sr3_config(make_tiny_config, changes={
        "model.unet.inner_channel": 8, "model.unet.norm_groups": 4, "model.unet.attn_res": []}))
    torch.manual_seed(0)
    return cfg, TFSDiffModel(load_config(cfg), torch.device("cpu")).save(tmp_path / "sr3" / "ckpt")


def _sr3_then(method: str, sources: list[np.ndarray], sr3_cfg: Path, checkpoint: Path) -> np.ndarray:
    """What sr3+NAME must give: the SR3 images of the three sources (one seeded batch), fused by NAME."""
    resolver = SuperResolver(Fuser.from_checkpoint(load_config(sr3_cfg), checkpoint))
    return fuse(method, resolver(sources))


@pytest.mark.slow
def test_sr3_then_average_fuses_one_case(tmp_path: Path, make_rgb, make_tiny_config: Callable[..., dict],
                                         sr3_model: tuple[Path, Path]) -> None:
    sr3_cfg, checkpoint = sr3_model
    fusion_cfg = _write_json(tmp_path / "fusion.json", make_tiny_config(SIZE, SCALE))
    inputs = [str(_save(tmp_path / f"in{k}.png", make_rgb(k, (SIZE // SCALE, SIZE // SCALE), grey=k < 3)))
              for k in (1, 2, 3)]
    args = ["-c", str(fusion_cfg), "--inputs", *inputs, "--method", "sr3+average", "--sr3-config", str(sr3_cfg),
            "--sr3-checkpoint", str(checkpoint), "--no-progress"]
    for name in ("a.png", "b.png"):
        assert infer.main([*args, "--out", str(tmp_path / name)]) == 0
    fused = read_image(tmp_path / "a.png")
    assert fused.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(fused, read_image(tmp_path / "b.png"))  # seeded
    sources = infer.upsample([read_image(p) for p in inputs], (SIZE, SIZE))
    np.testing.assert_array_equal(fused, _sr3_then("average", sources, sr3_cfg, checkpoint))
    assert not np.array_equal(fused, fuse("average", sources))  # SR3 changed the sources


@pytest.mark.slow
def test_sr3_then_a_rule_fuses_a_split_that_eval_scores(tmp_path: Path, make_rgb,
                                                        make_tiny_config: Callable[..., dict],
                                                        sr3_model: tuple[Path, Path]) -> None:
    sr3_cfg, checkpoint = sr3_model
    root = tmp_path / "data"
    for i, case in enumerate(["p1", "p2"]):
        for k in (1, 2, 3):
            _save(sr_dir(root, k, SIZE // SCALE, SIZE) / f"{case}.png", make_rgb(10 * i + k))
        _save(hr_dir(root, SIZE) / f"{case}.png", make_rgb(50 + i))
    split = {"dataroot": str(root), "l_resolution": SIZE // SCALE, "r_resolution": SIZE, "batch_size": 2}
    fusion_cfg = _write_json(tmp_path / "fusion.json", make_tiny_config(SIZE, SCALE, changes={
        "datasets.train": split, "datasets.val": split, "datasets.test": split}))
    out = tmp_path / "results"
    assert infer.main(["-c", str(fusion_cfg), "--method", "sr3+laplacian_ycbcr", "--sr3-config", str(sr3_cfg),
                       "--sr3-checkpoint", str(checkpoint), "--out", str(out), "--no-progress"]) == 0
    folder = out / "sr3+laplacian_ycbcr"
    sources = [read_image(folder / f"p2_src{k}.png") for k in (1, 2, 3)]
    np.testing.assert_array_equal(sources[0], make_rgb(11))  # the bicubic inputs, the reference every row shares
    np.testing.assert_array_equal(read_image(folder / "p2_fused.png"),
                                  _sr3_then("laplacian_ycbcr", sources, sr3_cfg, checkpoint))
    assert eval_cli.main([str(out), "--no-progress"]) == 0


def test_unknown_method_after_sr3_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        infer.parse_args(["-c", "unused.json", "--method", "sr3+nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'sr3+nope'" in err and "'sr3+laplacian_ycbcr'" in err
    with pytest.raises(SR3Error, match="'nope' is not a fusion method; expected sr3\\+ followed by one of "):
        fusion_method_of("sr3+nope")
    assert fusion_method_of("sr3+ifcnn") == "ifcnn" and fusion_method_of("average") is None


def test_missing_sr3_weights_or_config_is_a_clear_error(tmp_path: Path, make_rgb,
                                                        make_tiny_config: Callable[..., dict],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fusion_cfg = _write_json(tmp_path / "fusion.json", make_tiny_config(SIZE, SCALE))
    no_weights = _write_json(tmp_path / "sr3.json", _sr3_config(make_tiny_config, changes={
        "path.pretrained": str(tmp_path / "pretrained" / "sr3_missing.pth")}))
    inputs = [str(_save(tmp_path / f"in{k}.png", make_rgb(k, (4, 4)))) for k in (1, 2, 3)]
    base = ["-c", str(fusion_cfg), "--inputs", *inputs, "--out", str(tmp_path / "o.png"), "--method", "sr3+average"]
    assert infer.main([*base, "--sr3-config", str(no_weights)]) == 2
    err = capsys.readouterr().err
    assert "sr3_missing.pth" in err and "not trained in this repository" in err
    assert f"python sr.py -p train -c {no_weights}" in err and "--sr3-checkpoint PATH" in err
    assert infer.main([*base, "--sr3-config", str(no_weights), "--sr3-checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "--sr3-checkpoint: no checkpoint at" in capsys.readouterr().err
    assert infer.main(base) == 2  # no committed SR3 config for x4 at 16 px
    assert "config/sr3_x4_4_16.json does not exist" in capsys.readouterr().err
    assert infer.main([*base, "--sr3-config", str(fusion_cfg)]) == 2
    assert "not an SR3 config" in capsys.readouterr().err
    assert infer.main(["-c", str(no_weights), "--inputs", *inputs, "--out", str(tmp_path / "o.png")]) == 2
    assert "infer.py fuses with a fusion config" in capsys.readouterr().err
    assert infer.main([*base[:-2], "--sr3-config", str(no_weights)]) == 2  # --sr3-* without sr3+NAME
    assert "are for --method sr3+NAME" in capsys.readouterr().err
    x8 = _write_json(tmp_path / "sr3_x8.json", _sr3_config(make_tiny_config, scale=8))
    with pytest.raises(SR3Error, match="scale x8, but the fusion config's data are at x4"):
        load_sr3(load_config(fusion_cfg).datasets.train, x8)


def test_default_sr3_weights_are_the_committed_configs_release() -> None:
    fusion = load_config(CONFIG_DIR / "harvard_x4_residual_start200_64_256.json")
    if (ROOT / "pretrained" / "sr3_x4_64_256.pth").exists():
        pytest.skip("the x4 SR3 release exists here")
    with pytest.raises(SR3Error) as err:
        load_sr3(fusion.datasets.train)
    assert "the SR3 weights of config/sr3_x4_64_256.json" in str(err.value)
    assert "--out pretrained/sr3_x4_64_256.pth" in str(err.value)


def test_sr_batches_collate_and_move() -> None:
    items = [{"src1": torch.zeros(3, 4, 4), "target": torch.ones(3, 4, 4), "base": None, "case_id": f"c{i}"}
             for i in range(2)]
    batch = SRDataset.collate(items)
    assert isinstance(batch, SRBatch) and batch.condition.shape == (2, 3, 4, 4) and batch.sources == (batch.src1,)
    assert batch.to("cpu").case_ids == ("c0", "c1") and len(batch) == 2 and batch.base is None


# ------------------------------------------------------------------------------------------------ bench


@pytest.mark.slow
def test_real_scans_adds_sr3_rows(tmp_path: Path, make_rgb, make_tiny_config: Callable[..., dict],
                                  make_tiny_model: Callable[..., Any], sr3_model: tuple[Path, Path]) -> None:
    sr3_cfg, checkpoint = sr3_model
    pairs = _make_pairs(tmp_path / "pairs", make_rgb)
    weights = make_tiny_model(size=SIZE, scale=SCALE).save(tmp_path / "weights")
    test = {"dataroot": "unused", "l_resolution": SIZE // SCALE, "r_resolution": SIZE, "batch_size": 2}
    config = _write_json(tmp_path / "tiny.json", make_tiny_config(SIZE, SCALE, changes={
        "datasets.test": test, "path.pretrained": str(weights)}))
    out = tmp_path / "out"
    assert real_scans.main(["--data", str(pairs), "-c", str(config), "--out", str(out), "--sr3", str(checkpoint),
                            "--sr3-config", str(sr3_cfg), "--no-progress"]) == 0
    record = json.loads((out / "real_scans.json").read_text())
    sequential = [f"sr3+{rule}" for rule in FUSION_RULES]
    assert list(record["methods"]) == [*FUSION_RULES, *sequential, "tfsdiff"]
    assert record["sr3_seconds_per_case"] > 0 and record["sr3"] == str(checkpoint)
    markdown = (out / "real_scans.md").read_text()
    assert "| SR3 + Laplacian-YCbCr |" in markdown and "s per case (three sources)" in markdown
    case = "real_ct_spect_21001"
    folder = out / "x4" / "sr3+average"
    sources = [read_image(folder / f"{case}_src{k}.png") for k in (1, 2, 3)]
    np.testing.assert_array_equal(read_image(folder / f"{case}_fused.png"),
                                  _sr3_then("average", sources, sr3_cfg, checkpoint))
    assert real_scans.main(["--data", str(pairs), "-c", str(config), "--out", str(tmp_path / "o2"),
                            "--sr3-config", str(sr3_cfg)]) == 2  # --sr3-config without --sr3
