"""Released weights (model/release.py): export, manifest, verification on load, and what a release refuses to do."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.hashing import sha256_file
from model.checkpoint_io import CheckpointError
from model.model import TFSDiffModel
from model.release import export_release, main as release_main

pytestmark = pytest.mark.slow  # every test exports a trained checkpoint (tests/conftest.py: the two tiers)

MakeModel = Callable[..., TFSDiffModel]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, make_tiny_model: MakeModel,
                       make_batches: Callable[[int], Batches],
                       train_steps: Callable[[TFSDiffModel, Batches], None]) -> Path:
    model = make_tiny_model(ema=True)
    train_steps(model, make_batches(3))
    path = model.save(tmp_path_factory.mktemp("ckpt"))
    assert path is not None
    return path


def test_export_writes_weights_and_a_manifest_that_matches(trained_checkpoint: Path, tmp_path: Path,
                                                           make_tiny_model: MakeModel) -> None:
    out = tmp_path / "release" / "tiny.pth"
    manifest = export_release(trained_checkpoint, "config/tiny.json", out)
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == manifest
    assert manifest["file"] == "tiny.pth" and manifest["weights"] == "ema" and manifest["step"] == 3
    assert manifest["bytes"] == out.stat().st_size and manifest["sha256"] == sha256_file(out)
    state = torch.load(out, weights_only=True)
    assert state["release"] and state["ema"] is None and "optimizer" not in state and "rng" not in state
    assert manifest["parameters"] == sum(p.numel() for p in make_tiny_model().diffusion.denoise_fn.parameters())


@pytest.mark.parametrize("use_ema", [True, False])
def test_release_samples_with_the_chosen_weights(trained_checkpoint: Path, tmp_path: Path, use_ema: bool,
                                                 make_tiny_model: MakeModel) -> None:
    out = tmp_path / "tiny.pth"
    export_release(trained_checkpoint, "config/tiny.json", out, use_ema=use_ema)
    source = torch.load(trained_checkpoint, weights_only=True)
    expected = source["ema"] if use_ema else {k.removeprefix("denoise_fn."): v for k, v in source["model"].items()
                                              if k.startswith("denoise_fn.")}
    model = make_tiny_model(ema=True)
    model.load(out, weights_only=True)
    assert model.step == 3
    for name, value in model.diffusion.denoise_fn.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_release_cannot_resume_training(trained_checkpoint: Path, tmp_path: Path, make_tiny_model: MakeModel) -> None:
    out = tmp_path / "tiny.pth"
    export_release(trained_checkpoint, "config/tiny.json", out)
    with pytest.raises(CheckpointError, match="cannot resume training"):
        make_tiny_model(ema=True).load(out)


def test_export_refuses_missing_ema_and_releases(tmp_path: Path, make_tiny_model: MakeModel,
                                                 make_batches: Callable[[int], Batches],
                                                 train_steps: Callable[[TFSDiffModel, Batches], None]) -> None:
    model = make_tiny_model()
    train_steps(model, make_batches(1))
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
                                               message: str, make_tiny_model: MakeModel) -> None:
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
        make_tiny_model(ema=True).load(out, weights_only=True)
    assert str(out) in str(info.value)


def test_cli_exit_codes(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.json"  # the command checks that --config exists and describes the network
    config.write_text(json.dumps(torch.load(trained_checkpoint, weights_only=True)["config"]), encoding="utf-8")
    assert release_main(["--checkpoint", str(trained_checkpoint), "--config", str(config),
                         "--out", str(tmp_path / "r.pth")]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == "r.pth"
    assert release_main(["--checkpoint", str(tmp_path / "missing.pth"), "--config", "c.json",
                         "--out", str(tmp_path / "s.pth")]) == 2
    assert release_main(["--checkpoint", str(trained_checkpoint), "--config", "c.json",
                         "--out", str(tmp_path / "s.bin")]) == 2
    assert not (tmp_path / "s.pth").exists() and not (tmp_path / "s.bin").exists()
