"""Released weights (model/release.py): export, manifest, verification on load, and what a release refuses to do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint_io import CheckpointError, sha256_file
from model.model import TFSDiffModel
from model.release import export_release, main as release_main
from tests.test_ema import batches, new_model, train


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    model = new_model()
    train(model, batches(3))
    path = model.save(tmp_path_factory.mktemp("ckpt"))
    assert path is not None
    return path


def test_export_writes_weights_and_a_manifest_that_matches(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "release" / "tiny.pth"
    manifest = export_release(trained_checkpoint, "config/tiny.json", out)
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == manifest
    assert manifest["file"] == "tiny.pth" and manifest["weights"] == "ema" and manifest["step"] == 3
    assert manifest["bytes"] == out.stat().st_size and manifest["sha256"] == sha256_file(out)
    state = torch.load(out, weights_only=True)
    assert state["release"] and state["ema"] is None and "optimizer" not in state and "rng" not in state
    assert manifest["parameters"] == sum(p.numel() for p in new_model().diffusion.denoise_fn.parameters())


@pytest.mark.parametrize("use_ema", [True, False])
def test_release_samples_with_the_chosen_weights(trained_checkpoint: Path, tmp_path: Path, use_ema: bool) -> None:
    out = tmp_path / "tiny.pth"
    export_release(trained_checkpoint, "config/tiny.json", out, use_ema=use_ema)
    source = torch.load(trained_checkpoint, weights_only=True)
    expected = source["ema"] if use_ema else {k.removeprefix("denoise_fn."): v for k, v in source["model"].items()
                                              if k.startswith("denoise_fn.")}
    model = new_model()
    model.load(out, weights_only=True)
    assert model.step == 3
    for name, value in model.diffusion.denoise_fn.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_release_cannot_resume_training(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pth"
    export_release(trained_checkpoint, "config/tiny.json", out)
    with pytest.raises(CheckpointError, match="cannot resume training"):
        new_model().load(out)


def test_export_refuses_missing_ema_and_releases(tmp_path: Path) -> None:
    model: TFSDiffModel = new_model(ema_scheduler=None)
    train(model, batches(1))
    checkpoint = model.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        export_release(checkpoint, "config/tiny.json", tmp_path / "a.pth")
    export_release(checkpoint, "config/tiny.json", tmp_path / "a.pth", use_ema=False)
    with pytest.raises(CheckpointError, match="already a release"):
        export_release(tmp_path / "a.pth", "config/tiny.json", tmp_path / "b.pth", use_ema=False)


@pytest.mark.parametrize("damage, message", [
    ("flip", "SHA-256"),
    ("truncate", "bytes"),
    ("lfs", "Git LFS pointer"),
])
def test_damaged_release_fails_naming_the_file(trained_checkpoint: Path, tmp_path: Path, damage: str,
                                               message: str) -> None:
    out = tmp_path / "tiny.pth"
    export_release(trained_checkpoint, "config/tiny.json", out)
    data = bytearray(out.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=message) as info:
        new_model().load(out, weights_only=True)
    assert str(out) in str(info.value)


def test_cli_exit_codes(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert release_main(["--checkpoint", str(trained_checkpoint), "--config", "config/tiny.json",
                         "--out", str(tmp_path / "r.pth")]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == "r.pth"
    assert release_main(["--checkpoint", str(tmp_path / "missing.pth"), "--config", "c.json",
                         "--out", str(tmp_path / "s.pth")]) == 2
    assert release_main(["--checkpoint", str(trained_checkpoint), "--config", "c.json",
                         "--out", str(tmp_path / "s.bin")]) == 2
    assert not (tmp_path / "s.pth").exists() and not (tmp_path / "s.bin").exists()
