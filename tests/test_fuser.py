"""model/fuser.py and model/residual.py: a fuser built from released weights creates no optimiser, scaler or loss;
`Fuser.fuse` gives exactly what the sampling path inlined in evaluate_model gave; the residual maths are the ones
training and sampling used; train_step counts its own position."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.model as model_module
from core.config import SamplerConfig
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from data.images import to_tensor
from metrics.registry import tensor2img
from model.evaluation import evaluate_model
from model.fuser import Fuser, pad_to_multiple
from model.model import TFSDiffModel
from model.release import export_release
from model.residual import Residual
from model.samplers import build_sampler, sample_loop
from model.schedule import NoiseSchedule

RULE, SCALE = "laplacian_ycbcr", 4.0
RESIDUAL = {"model.diffusion.residual_base": RULE, "model.diffusion.residual_scale": SCALE}
MakeModel = Callable[..., TFSDiffModel]


def _batch(make_rgb: Callable[..., np.ndarray], seed: int, size: tuple[int, int] = (16, 16)) -> FusionBatch:
    sources = [torch.stack([to_tensor(make_rgb(seed + 10 * i + k, size)) for i in range(2)]) for k in range(3)]
    return FusionBatch(*sources, target=None, case_ids=("a", "b"))


def _previous_path(model: TFSDiffModel, batch: FusionBatch, sampler: SamplerConfig, process: bool) -> torch.Tensor:
    """The sampling that evaluate_model inlined before the fuser, written out: val schedule, sampler, the model's
    sampling net in eval mode, seeded generator, padding, mean of the samples, crop, residual scale and base."""
    schedule = NoiseSchedule.from_spec(model.cfg.model.beta_schedule.val)
    chain = build_sampler(schedule, sampler, model.cfg.model.diffusion.clip_denoised)
    generator = torch.Generator(device=model.device).manual_seed(model.cfg.seed)
    rule, scale = model.cfg.model.diffusion.residual_base, model.cfg.model.diffusion.residual_scale
    base = None
    if rule is not None:
        sources = [[tensor2img(src[i]) for src in (batch.src1, batch.src2, batch.src3)] for i in range(len(batch))]
        base = torch.stack([to_tensor(fuse(rule, case)) for case in sources])
    h, w = batch.condition.shape[-2:]
    padded = pad_to_multiple(batch.condition, model.size_multiple)
    bounds = None
    if base is not None and sampler.clip == "image":
        padded_base = pad_to_multiple(base, model.size_multiple)
        bounds = (scale * (-1.0 - padded_base), scale * (1.0 - padded_base))
    model.diffusion.eval()
    try:
        result = sum(sample_loop(model.sampling_net, chain, padded, generator, model.diffusion.channels,
                                 continuous=process, progress=False, bounds=bounds)
                     for _ in range(sampler.samples)) / sampler.samples
    finally:
        model.diffusion.train()
    result = result[..., :h, :w]
    return result if base is None else (result / scale + base).clamp(-1.0, 1.0)


@pytest.mark.parametrize("changes,sampler,size", [
    ({}, SamplerConfig(type="respaced", steps=4), (16, 16)),
    (RESIDUAL, SamplerConfig(type="respaced", steps=3, start_step=10, clip="image", samples=2), (13, 18)),
    (RESIDUAL, SamplerConfig(type="ddim", steps=4, eta=0.5), (16, 16)),
], ids=["plain", "residual-image-clip-2-samples-odd-size", "residual-ddim"])
def test_fuse_equals_the_previous_sampling_path(changes: dict[str, Any], sampler: SamplerConfig,
                                                size: tuple[int, int], make_tiny_model: MakeModel,
                                                make_rgb: Callable[..., np.ndarray]) -> None:
    model = make_tiny_model(ema=True, changes=changes)
    batch = _batch(make_rgb, 30, size)
    for process in (False, True):
        expected = _previous_path(model, batch, sampler, process)
        model.diffusion.train()
        fused = Fuser.from_model(model).fuse(batch, sampler=sampler, process=process, progress=False)
        assert model.diffusion.denoise_fn.training  # the training network's mode is restored
        assert torch.equal(fused.images, expected[-1] if process else expected)
        if process:
            assert torch.equal(fused.process, expected)
            assert np.array_equal(fused.strip(1), np.concatenate([tensor2img(f[1]) for f in expected], axis=1))
        assert np.array_equal(fused.image(0), tensor2img(fused.images[0]))


def test_fuser_from_a_release_builds_no_optimiser_scaler_or_loss(
        tmp_path: Path, make_tiny_model: MakeModel, make_batches: Callable[[int], Any],
        make_rgb: Callable[..., np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny_model(ema=True, changes=RESIDUAL)
    for x0, condition in make_batches(2):  # step 1 copies the weights into the EMA, step 2 averages (decay 0.5)
        model.train_step(x0, condition, torch.zeros_like(x0))
    checkpoint = model.save(tmp_path / "ckpt")
    release = tmp_path / "release" / "tiny.pth"
    export_release(checkpoint, "config/tiny.json", release)

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sampling must not build training machinery")

    monkeypatch.setattr(torch.optim, "Adam", forbidden)
    monkeypatch.setattr(torch.amp, "GradScaler", forbidden)
    monkeypatch.setattr(model_module, "build_loss", forbidden)
    monkeypatch.setattr(model_module, "WeightEMA", forbidden)
    fuser = Fuser.from_checkpoint(model.cfg, release, device=torch.device("cpu"))
    assert not any(hasattr(fuser, name) for name in ("optimizer", "scaler", "loss_fn", "ema"))
    assert not any(isinstance(value, (torch.optim.Optimizer, TFSDiffModel)) for value in vars(fuser).values())
    assert fuser.step == 2 and fuser.residual == Residual(RULE, SCALE)
    assert not fuser.net.module.training and not any(p.requires_grad for p in fuser.net.module.parameters())
    monkeypatch.undo()
    # the release holds the EMA weights, which the model samples with: both fuse the same
    batch = _batch(make_rgb, 50)
    assert torch.equal(fuser.fuse(batch, progress=False).images,
                       Fuser.from_model(model).fuse(batch, progress=False).images)
    from_checkpoint = Fuser.from_checkpoint(model.cfg, checkpoint, device=torch.device("cpu"))
    assert torch.equal(from_checkpoint.fuse(batch, progress=False).images,
                       fuser.fuse(batch, progress=False).images)
    trained = Fuser.from_checkpoint(model.cfg, checkpoint, device=torch.device("cpu"), use_ema=False)
    assert not torch.equal(trained.fuse(batch, progress=False).images, fuser.fuse(batch, progress=False).images)


def test_evaluate_model_takes_a_fuser_or_a_model_and_one_generator_per_split(
        make_tiny_model: MakeModel, make_rgb: Callable[..., np.ndarray]) -> None:
    model = make_tiny_model(changes=RESIDUAL)
    batches = [_batch(make_rgb, 60), _batch(make_rgb, 70)]
    fuser = Fuser.from_model(model)
    via_model = evaluate_model(model, batches, None, progress=False).fused
    via_fuser = evaluate_model(fuser, batches, None, progress=False).fused
    assert all(np.array_equal(a, b) for a, b in zip(via_model, via_fuser, strict=True))
    generator = fuser.generator()
    by_hand = [fuser.fuse(b, generator=generator, progress=False) for b in batches]
    assert all(np.array_equal(via_fuser[2 * k + i], fused.image(i)) for k, fused in enumerate(by_hand) for i in (0, 1))
    assert not np.array_equal(via_fuser[2], fuser.fuse(batches[1], progress=False).image(0))  # a fresh generator


def test_residual_parametrisation_round_trips_and_bounds_the_image() -> None:
    g = torch.Generator().manual_seed(0)
    x0, base = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1 for _ in range(2))
    residual, plain = Residual(RULE, SCALE), Residual()
    assert plain.to_residual(x0, None) is x0 and plain.from_residual(x0, None) is x0 and plain.to_image(x0, None) is x0
    r = residual.to_residual(x0, base)
    assert torch.equal(r, (x0 - base) * SCALE)
    assert torch.allclose(residual.from_residual(r, base), x0, atol=1e-6)
    low, high = residual.clip_bounds(base)
    assert torch.equal(residual.to_image(low, base), residual.from_residual(low, base).clamp(-1, 1))
    assert torch.allclose(residual.from_residual(low, base), torch.full_like(base, -1.0), atol=1e-6)
    assert torch.allclose(residual.from_residual(high, base), torch.ones_like(base), atol=1e-6)


def test_train_step_counts_its_own_position(make_tiny_model: MakeModel, make_batches: Callable[[int], Any]) -> None:
    model = make_tiny_model()
    for x0, condition in make_batches(2):
        model.train_step(x0, condition)
    assert (model.step, model.epoch, model.batch_in_epoch) == (2, 0, 0)  # without an epoch length: the step only
    for x0, condition in make_batches(3):
        model.train_step(x0, condition, batches_per_epoch=2)
    assert (model.step, model.epoch, model.batch_in_epoch) == (5, 1, 1)


def test_fuser_loads_an_official_checkpoint(tmp_path: Path, make_tiny_model: MakeModel,
                                            make_rgb: Callable[..., np.ndarray]) -> None:
    model = make_tiny_model(changes={"model.tmfa.placement": "all_channels"})
    torch.save(model.diffusion.state_dict(), tmp_path / "I7_E1_gen.pth")
    fuser = Fuser.from_checkpoint(model.cfg, tmp_path / "I7_E1", device=torch.device("cpu"))
    assert (fuser.step, fuser.epoch) == (0, 0)  # an official position is in its _opt.pth, which sampling never reads
    batch = _batch(make_rgb, 90)
    assert torch.equal(fuser.fuse(batch, progress=False).images,
                       Fuser.from_model(model).fuse(batch, progress=False).images)
