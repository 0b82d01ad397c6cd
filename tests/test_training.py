"""End to end on a tiny embedded dataset: train, checkpoint, resume exactly, stop on NaN, sample with a finite PSNR."""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import sr
from core.config import config_to_dict, load_config
from metrics.registry import psnr_rgb
from model import model as model_module

pytestmark = pytest.mark.slow  # sr.py end to end (tests/conftest.py: the two tiers)

TRAINING = {"datasets.train.batch_size": 3, "model.beta_schedule.train.n_timestep": 40,
            "model.beta_schedule.val.n_timestep": 40, "train.n_iter": 6, "train.val_freq": 1000,
            "train.save_checkpoint_freq": 3}
MakeRunConfig = Callable[[Path, str, Mapping[str, Any]], Path]
WriteConfig = Callable[..., Path]


@pytest.fixture()
def write_config(tmp_path: Path, make_run_config: MakeRunConfig) -> WriteConfig:
    """``write_config(name, changes)``: the training test config in ``tmp_path``, with ``changes`` by dotted key."""
    return lambda name, changes=None: make_run_config(tmp_path, name, {**TRAINING, **(changes or {})})


def run_dir(tmp_path: Path, name: str, phase: str = "train") -> Path:
    (found,) = sorted((tmp_path / "experiments").glob(f"{name}_{phase}_*"))
    return found


def step_losses(run: Path) -> dict[int, str]:
    text = (run / "logs" / "train.log").read_text()
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"step (\d+) \(epoch \d+.*?\): (loss [^,\n]+)", text)}


@pytest.mark.parametrize("patch_size", [None, 16], ids=["whole", "patches"])
def test_resume_matches_uninterrupted_run(tmp_path: Path, write_config: WriteConfig, patch_size: int | None) -> None:
    patches = {"datasets.train.patch_size": patch_size}
    assert sr.main(["-c", str(write_config("full", patches)), "--no-progress"]) == 0
    full = run_dir(tmp_path, "full")
    assert sorted(p.name for p in (full / "checkpoint").glob("*.pth")) == ["I3_E1.pth", "I6_E3.pth"]
    assert (full / "checkpoint" / "latest").read_text().strip() == "I6_E3.pth"

    half = write_config("resumed", {"path.resume_state": str(full / "checkpoint" / "I3_E1.pth"), **patches})
    assert sr.main(["-c", str(half), "--no-progress"]) == 0
    resumed = run_dir(tmp_path, "resumed")

    full_losses, resumed_losses = step_losses(full), step_losses(resumed)
    assert sorted(resumed_losses) == [4, 5, 6]
    assert all(resumed_losses[s] == full_losses[s] for s in (4, 5, 6))
    a = torch.load(full / "checkpoint" / "I6_E3.pth", weights_only=True)
    b = torch.load(resumed / "checkpoint" / "I6_E3.pth", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == (6, 3, 0)


def test_validation_samples_with_finite_psnr(tmp_path: Path, write_config: WriteConfig) -> None:
    cfg = write_config("short", {"train.n_iter": 3, "train.val_freq": 3})
    assert sr.main(["-c", str(cfg), "--no-progress"]) == 0
    ckpt = run_dir(tmp_path, "short") / "checkpoint"
    assert sr.main(["-p", "val", "-c", str(cfg), "--checkpoint", str(ckpt), "--no-progress"]) == 0
    results = run_dir(tmp_path, "short", "val") / "results"
    fused = sorted(results.glob("*_fused.png"))
    assert len(fused) == 2
    for path in fused:
        case = path.name.removesuffix("_fused.png")
        for suffix in ("src1", "src2", "src3", "hr"):
            assert (results / f"{case}_{suffix}.png").is_file()
        value = psnr_rgb(np.asarray(Image.open(path)), np.asarray(Image.open(results / f"{case}_hr.png")))
        assert np.isfinite(value) and value > 0


def test_val_cases_overrides_the_configs_data_len(tmp_path: Path, write_config: WriteConfig,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Also: a run folder records the resolved config (base merged in, --cases applied) as config.json."""
    write_config("cases", {"train.n_iter": 1})
    cfg = tmp_path / "child.json"
    cfg.write_text('// on top of a base\n{"base": "cases.json", "train": {"val_freq": 5}}', encoding="utf-8")
    assert sr.main(["-c", str(cfg), "--no-progress"]) == 0
    ckpt = run_dir(tmp_path, "cases") / "checkpoint"
    recorded = json.loads((ckpt.parent / sr.RUN_CONFIG).read_text(encoding="utf-8"))
    assert recorded == config_to_dict(load_config(cfg)) and recorded["train"]["val_freq"] == 5
    counts, data_lens = [], []
    for cases in ("1", "-1"):
        for folder in (tmp_path / "experiments").glob("cases_val_*"):
            shutil.rmtree(folder)
        assert sr.main(["-p", "val", "-c", str(cfg), "--checkpoint", str(ckpt), "--cases", cases, "--no-progress"]) == 0
        counts.append(len(list((run_dir(tmp_path, "cases", "val") / "results").glob("*_fused.png"))))
        data_lens.append(load_config(run_dir(tmp_path, "cases", "val") / sr.RUN_CONFIG).datasets.val.data_len)
    assert counts == [1, 4]  # the config's data_len is 2; the embedded val split has 4 cases
    assert data_lens == [1, -1]
    assert sr.main(["-c", str(cfg), "--cases", "1", "--no-progress"]) == 2
    assert "--cases is for -p val" in capsys.readouterr().err
    assert sr.main(["-p", "val", "-c", str(cfg), "--checkpoint", str(ckpt), "--cases", "0", "--no-progress"]) == 2
    assert "--cases must be -1 (all) or a positive number of cases, got 0" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path, write_config: WriteConfig,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = model_module.build_loss

    def poisoned(*args, **kwargs):
        loss_fn = real_build(*args, **kwargs)
        calls = {"n": 0}

        def wrapped(terms, x0):
            calls["n"] += 1
            out = loss_fn(terms, x0)
            return {**out, "loss": out["loss"] * float("nan")} if calls["n"] > 4 else out
        return wrapped

    monkeypatch.setattr(model_module, "build_loss", poisoned)
    assert sr.main(["-c", str(write_config("nan")), "--no-progress"]) == 1
    run = run_dir(tmp_path, "nan")
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["I3_E1.pth", "latest"]
    assert "non-finite loss at step 5" in (run / "logs" / "train.log").read_text()
    assert torch.load(run / "checkpoint" / "I3_E1.pth", weights_only=True)["step"] == 3


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path, write_config: WriteConfig,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config("kill", {"train.n_iter": 3})
    assert sr.main(["-c", str(cfg), "--no-progress"]) == 0
    folder = run_dir(tmp_path, "kill") / "checkpoint"
    before = (folder / "I3_E1.pth").read_bytes()
    model = model_module.TFSDiffModel(sr.load_config(cfg), torch.device("cpu"))
    model.load(folder)
    model.step = 4

    def killed(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(model_module.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["I3_E1.pth", "latest"]
    assert (folder / "latest").read_text().strip() == "I3_E1.pth"
    assert (folder / "I3_E1.pth").read_bytes() == before


def test_config_error_exits_with_key_path(tmp_path: Path, write_config: WriteConfig,
                                          capsys: pytest.CaptureFixture) -> None:
    cfg = write_config("bad", {"train.val_frq": 10})
    assert sr.main(["-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.val_frq" in err and "val_freq" in err
    assert not (tmp_path / "experiments").exists()


def test_missing_dataset_folder_is_a_clear_error(tmp_path: Path, write_config: WriteConfig) -> None:
    cfg = write_config("nodata", {"datasets.train.dataroot": str(tmp_path / "nowhere")})
    assert sr.main(["-c", str(cfg), "--no-progress"]) == 2  # an input error
    assert "nowhere" in (run_dir(tmp_path, "nodata") / "logs" / "train.log").read_text()


def test_val_without_checkpoint_is_refused(write_config: WriteConfig, capsys: pytest.CaptureFixture) -> None:
    assert sr.main(["-p", "val", "-c", str(write_config("nockpt"))]) == 2
    assert "--checkpoint" in capsys.readouterr().err
