"""Weight EMA: the update rule, checkpoint round trip (v2 and v1), exact resume, and sampling with the EMA weights."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.config import ConfigError, EMASchedulerConfig, parse_config
from model.model import CheckpointError, TFSDiffModel, WeightEMA

MakeModel = Callable[..., TFSDiffModel]
Batches = list[tuple[torch.Tensor, torch.Tensor]]
Train = Callable[[TFSDiffModel, Batches], None]


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_update_rule() -> None:
    net = nn.Linear(2, 2)
    ema = WeightEMA(net, EMASchedulerConfig(step_start_ema=2, update_ema_every=2, ema_decay=0.75))
    for step, value in ((1, 1.0), (2, 2.0), (3, 6.0), (4, 10.0), (5, 20.0), (6, 6.0)):
        with torch.no_grad():
            net.weight.fill_(value)
        ema.update(net, step)
    # steps 1-2 copy (2.0); step 3 skipped (odd); step 4: 0.75 * 2 + 0.25 * 10 = 4; step 6: 0.75 * 4 + 0.25 * 6
    assert torch.allclose(ema.net.weight, torch.full((2, 2), 4.5))
    assert not ema.net.training and not any(p.requires_grad for p in ema.net.parameters())


@pytest.mark.slow
def test_ema_lags_the_weights_and_is_used_for_sampling(make_tiny_model: MakeModel,
                                                       make_batches: Callable[[int], Batches],
                                                       train_steps: Train) -> None:
    model = make_tiny_model(ema=True)
    train_steps(model, make_batches(3))
    assert model.ema is not None and model.sampling_net.module is model.ema.net
    raw, avg = params(model.diffusion.denoise_fn), params(model.ema.net)
    assert any(not torch.equal(a, b) for a, b in zip(raw, avg))
    plain = make_tiny_model()
    assert plain.ema is None and plain.sampling_net.module is plain.diffusion.denoise_fn


@pytest.mark.slow
def test_save_and_load_round_trip(tmp_path: Path, make_tiny_model: MakeModel,
                                  make_batches: Callable[[int], Batches], train_steps: Train) -> None:
    model = make_tiny_model(ema=True)
    train_steps(model, make_batches(3))
    path = model.save(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert saved["version"] == 2 and saved["ema"] is not None

    resumed = make_tiny_model(ema=True)
    resumed.load(path)
    for a, b in zip(params(model.ema.net), params(resumed.ema.net)):
        assert torch.equal(a, b)

    sampling = make_tiny_model()
    sampling.load(path, weights_only=True)
    for a, b in zip(params(model.ema.net), params(sampling.diffusion.denoise_fn)):
        assert torch.equal(a, b)
    sampling.load(path, weights_only=True, use_ema=False)
    for a, b in zip(params(model.diffusion.denoise_fn), params(sampling.diffusion.denoise_fn)):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_resume_with_ema_continues_exactly(tmp_path: Path, make_tiny_model: MakeModel,
                                          make_batches: Callable[[int], Batches], train_steps: Train) -> None:
    data = make_batches(4)
    full = make_tiny_model(ema=True)
    train_steps(full, data)

    first = make_tiny_model(ema=True)
    train_steps(first, data[:2])
    path = first.save(tmp_path)
    second = make_tiny_model(ema=True)
    second.load(path)
    train_steps(second, data[2:])
    for a, b in zip(params(full.diffusion.denoise_fn) + params(full.ema.net),
                    params(second.diffusion.denoise_fn) + params(second.ema.net)):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_version_one_checkpoint_loads_and_starts_the_ema(tmp_path: Path, make_tiny_model: MakeModel,
                                                         make_batches: Callable[[int], Batches],
                                                         train_steps: Train) -> None:
    model = make_tiny_model()
    train_steps(model, make_batches(1))
    state = model.checkpoint()
    del state["ema"], state["scaler"]
    state["version"] = 1
    torch.save(state, tmp_path / "I1_E0.pth")
    with_ema = make_tiny_model(ema=True)
    with_ema.load(tmp_path / "I1_E0.pth")
    assert with_ema.step == 1
    for a, b in zip(params(model.diffusion.denoise_fn), params(with_ema.ema.net)):
        assert torch.equal(a, b)


def test_newer_checkpoint_version_is_refused(tmp_path: Path, make_tiny_model: MakeModel) -> None:
    model = make_tiny_model(ema=True)
    state = model.checkpoint()
    state["version"] = 99
    torch.save(state, tmp_path / "I0_E0.pth")
    with pytest.raises(CheckpointError, match="I0_E0.pth has checkpoint version 99"):
        model.load(tmp_path / "I0_E0.pth")


@pytest.mark.parametrize("key,value,expected", [
    ("ema_decay", 1.0, "train.ema_scheduler.ema_decay: expected a number in [0, 1)"),
    ("update_ema_every", 0, "train.ema_scheduler.update_ema_every: expected an integer >= 1"),
    ("step_start_emma", 3, "did you mean 'step_start_ema'"),
])
def test_ema_config_errors(key: str, value: float, expected: str,
                           make_tiny_config: Callable[..., dict[str, Any]]) -> None:
    data = make_tiny_config(ema=True, changes={f"train.ema_scheduler.{key}": value})
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


@pytest.mark.slow
def test_channels_last_bf16_training_step_runs(make_tiny_model: MakeModel, make_batches: Callable[[int], Batches],
                                               train_steps: Train) -> None:
    model = make_tiny_model(ema=True, changes={"performance": {"channels_last": True, "autocast": "bf16"}})
    first = params(model.diffusion.denoise_fn)
    train_steps(model, make_batches(1))
    conv = model.diffusion.denoise_fn.downs[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(first, params(model.diffusion.denoise_fn)))
