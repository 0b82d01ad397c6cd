"""model.diffusion.residual_base / residual_scale: the diffusion models the scaled residual between the target and a
fusion rule applied to the bicubic-upsampled sources; training batches carry that rule's image of the whole sources,
cropped and flipped with the case; sampling divides by the scale and adds the rule's image back."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sr
from dataclasses import replace

from core.config import ConfigError, DatasetConfig, SamplerConfig, parse_config
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse
from data.images import read_image, to_tensor
from data.layout import sr_dir, write_case
from data.loader import dataset_from_config
from metrics.registry import tensor2img
from model.checkpoint_io import CheckpointError
from model.evaluation import evaluate_model
from model.model import TFSDiffModel, build_diffusion
from model.samplers import build_sampler, sample_loop
from model.schedule import NoiseSchedule

R_RES, L_RES, PATCH = 32, 8, 16
RULE = "laplacian_ycbcr"
SCALE = 2.0
RESIDUAL = {"model.diffusion.residual_base": RULE, "model.diffusion.residual_scale": SCALE}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, make_rgb: Callable[..., np.ndarray]) -> Path:
    root = tmp_path_factory.mktemp("residual") / "train"
    for case in range(3):
        images = [Image.fromarray(make_rgb(10 * case + k, (R_RES, R_RES))) for k in range(3)]
        write_case(root, f"case{case}", images, images[0], [L_RES])
    return root


def _whole_base(root: Path, case: str) -> np.ndarray:
    return fuse(RULE, [read_image(sr_dir(root, k, L_RES, R_RES) / f"{case}.png") for k in (1, 2, 3)])


@pytest.mark.parametrize("cache_images", [False, True], ids=["decoded", "cached"])
def test_training_patches_carry_the_rule_of_the_whole_sources_cropped_and_flipped(split: Path,
                                                                                  cache_images: bool) -> None:
    cfg = DatasetConfig(dataroot=str(split), l_resolution=L_RES, r_resolution=R_RES, batch_size=3,
                        patch_size=PATCH, cache_images=cache_images)
    dataset, sampler, loader = dataset_from_config(cfg, seed=2, train=True, base_rule=RULE)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        (batch,) = list(loader)
        for row, (index, flip, crop) in enumerate(sampler.epoch_order(epoch)):
            patch = _whole_base(split, dataset.case_ids[index])[crop.box()]
            assert torch.equal(batch.base[row], to_tensor(patch[:, ::-1] if flip else patch))
    assert batch.base.shape == batch.target.shape == (3, 3, PATCH, PATCH)
    plain = dataset_from_config(cfg, seed=2, train=True)[2]
    assert next(iter(plain)).base is None


@pytest.fixture()
def models(make_tiny_model: Callable[..., TFSDiffModel]) -> tuple[TFSDiffModel, TFSDiffModel]:
    """A residual tiny model and a plain one with the same weights."""
    residual_model, plain_model = make_tiny_model(changes=RESIDUAL), make_tiny_model()
    plain_model.diffusion.load_state_dict(residual_model.diffusion.state_dict())
    return residual_model, plain_model


def test_train_step_diffuses_the_residual_and_scores_ssim_on_the_image(models: tuple[TFSDiffModel, TFSDiffModel],
                                                                       make_batches: Callable) -> None:
    (x0, condition), = make_batches(1)
    base = torch.rand(x0.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    residual_model, plain_model = models
    with pytest.raises(ValueError, match="residual_base"):
        residual_model.train_step(x0, condition)
    with pytest.raises(ValueError, match="residual_base"):
        plain_model.train_step(x0, condition, base)
    state = residual_model.generator.get_state()
    torch.manual_seed(1)  # dropout
    residual_losses = residual_model.train_step(x0, condition, base)
    plain_model.generator.set_state(state)
    torch.manual_seed(1)
    plain_losses = plain_model.train_step((x0 - base) * SCALE, condition)
    assert residual_losses["mse"] == pytest.approx(plain_losses["mse"], rel=1e-6)
    assert residual_losses["ssim"] != pytest.approx(plain_losses["ssim"], rel=1e-3)


def test_sampling_adds_the_rule_of_the_sources_to_the_sampled_residual(models: tuple[TFSDiffModel, TFSDiffModel],
                                                                        make_rgb: Callable) -> None:
    sources = [to_tensor(make_rgb(40 + k, (16, 16)))[None] for k in range(3)]
    batch = FusionBatch(*sources, target=None, case_ids=("a",))
    residual_model, plain_model = models
    fused = evaluate_model(residual_model, [batch], None, progress=False).fused[0]
    residual = evaluate_model(plain_model, [batch], None, progress=False).fused[0]
    base = fuse(RULE, [make_rgb(40 + k, (16, 16)) for k in range(3)])
    expected = ((to_tensor(residual) / SCALE + to_tensor(base)).clamp(-1, 1) + 1) * 127.5
    assert np.abs(fused.astype(float) - expected.permute(1, 2, 0).numpy()).max() <= 1.0 + 1e-6
    assert not np.array_equal(fused, residual)


def test_a_checkpoint_samples_only_with_its_own_residual_base_and_scale(
        tmp_path: Path, models: tuple[TFSDiffModel, TFSDiffModel], make_tiny_model: Callable[..., TFSDiffModel]) -> None:
    residual_model, plain_model = models
    with pytest.raises(CheckpointError, match="residual_base"):
        residual_model.load(plain_model.save(tmp_path / "plain"), weights_only=True)
    other_scale = make_tiny_model(changes={**RESIDUAL, "model.diffusion.residual_scale": 1.0})
    with pytest.raises(CheckpointError, match="residual_scale = 2.0"):
        other_scale.load(residual_model.save(tmp_path / "scaled"), weights_only=True)


def test_residual_scale_needs_a_base_and_a_positive_value(make_tiny_config: Callable[..., dict]) -> None:
    for changes, reason in (({"model.diffusion.residual_scale": 2.0}, "only used with residual_base"),
                            ({**RESIDUAL, "model.diffusion.residual_scale": 0.0}, "expected a number > 0")):
        with pytest.raises(ConfigError, match=f"model.diffusion.residual_scale: {reason}"):
            parse_config(make_tiny_config(changes=changes))


def test_train_max_step_is_checked_against_the_training_schedule(make_tiny_config: Callable[..., dict]) -> None:
    sampler = {"model.sampler": {"type": "respaced", "steps": 2, "start_step": 7}}
    cfg = parse_config(make_tiny_config(changes={"model.diffusion.train_max_step": 7, **sampler}))
    assert build_diffusion(cfg.model).max_step == 7
    n_train = cfg.model.beta_schedule.train.n_timestep
    too_big = f"{n_train + 1} exceeds beta_schedule.train.n_timestep"
    for value, reason in ((0, "expected an integer >= 1"), (n_train + 1, too_big)):
        with pytest.raises(ConfigError, match=f"train_max_step: {reason}"):
            parse_config(make_tiny_config(changes={"model.diffusion.train_max_step": value, **sampler}))
    for start in (None, 8):  # the sampler must start within the trained steps: the full chain, or above them
        changes = {"model.diffusion.train_max_step": 7, "model.sampler.start_step": start}
        with pytest.raises(ConfigError, match="sampler.start_step: the chain must start at a step that training"):
            parse_config(make_tiny_config(changes={**sampler, **changes}))


@pytest.mark.slow
def test_sr_trains_and_validates_a_residual_model(tmp_path: Path, make_run_config: Callable) -> None:
    cfg = make_run_config(tmp_path, "residual", {**RESIDUAL, "train.n_iter": 2, "train.val_freq": 2,
                                                 "train.save_checkpoint_freq": 2,
                                                 "model.beta_schedule.train.n_timestep": 10,
                                                 "model.beta_schedule.val.n_timestep": 10})
    assert sr.main(["-c", str(cfg), "--no-progress"]) == 0
    (run,) = (tmp_path / "experiments").glob("residual_train_*")
    saved = torch.load(run / "checkpoint" / "I2_E1.pth", weights_only=False)
    assert saved["config"]["model"]["diffusion"]["residual_base"] == RULE
    log = (run / "logs" / "train.log").read_text()
    assert "validation at step 2" in log


def test_residual_sampling_keeps_odd_non_square_sizes(models: tuple[TFSDiffModel, TFSDiffModel],
                                                      make_rgb: Callable) -> None:
    """The base is fused at the sources' own size and added after the padded sample is cropped back."""
    residual_model, _ = models
    sources = [to_tensor(make_rgb(60 + k, (15, 21)))[None] for k in range(3)]
    fused = evaluate_model(residual_model, [FusionBatch(*sources, target=None, case_ids=("odd",))], None,
                           progress=False).fused[0]
    assert fused.shape == (15, 21, 3)


def test_samples_average_before_clipping(models: tuple[TFSDiffModel, TFSDiffModel], make_rgb: Callable) -> None:
    """model.sampler.samples = n: the mean of n samples drawn one after another from the seeded generator, taken
    before the residual is scaled back, added to the base and clipped."""
    residual_model, _ = models
    sources = [to_tensor(make_rgb(70 + k, (16, 16)))[None] for k in range(3)]
    batch = FusionBatch(*sources, target=None, case_ids=("a",))
    one = SamplerConfig(type="respaced", steps=3)
    schedule = NoiseSchedule.from_spec(residual_model.cfg.model.beta_schedule.val)
    chain = build_sampler(schedule, one)
    generator = torch.Generator().manual_seed(residual_model.cfg.seed)
    residual_model.diffusion.eval()  # as evaluate_model samples (no dropout)
    draws = [sample_loop(residual_model.sampling_net, chain, batch.condition, generator, 3, progress=False)
             for _ in range(2)]
    base = to_tensor(fuse(RULE, [make_rgb(70 + k, (16, 16)) for k in range(3)]))
    expected = tensor2img(((draws[0] + draws[1]) / 2 / SCALE + base).clamp(-1, 1)[0])
    averaged = evaluate_model(residual_model, [batch], None, sampler=replace(one, samples=2), progress=False).fused[0]
    assert np.array_equal(averaged, expected)
    single = evaluate_model(residual_model, [batch], None, sampler=one, progress=False).fused[0]
    assert np.array_equal(single, tensor2img((draws[0] / SCALE + base).clamp(-1, 1)[0]))


def test_image_clip_lets_the_correction_reach_the_whole_range(models: tuple[TFSDiffModel, TFSDiffModel],
                                                               make_rgb: Callable) -> None:
    """model.sampler.clip: "x0" (default) clips the scaled residual to [-1, 1], so the fused image stays within
    1 / scale of the base; "image" clips x0 so that base + x0 / scale lies in [-1, 1]. Without a base the two are
    the same, bit for bit."""
    residual_model, plain_model = models
    sources = [to_tensor(make_rgb(80 + k, (16, 16)))[None] for k in range(3)]
    batch = [FusionBatch(*sources, target=None, case_ids=("a",))]
    base = fuse(RULE, [make_rgb(80 + k, (16, 16)) for k in range(3)]).astype(float)
    chain = SamplerConfig(type="respaced", steps=3)
    image_chain = replace(chain, clip="image")
    departure = {}
    for name, sampler in (("x0", chain), ("image", image_chain)):
        fused = evaluate_model(residual_model, [*batch], None, sampler=sampler, progress=False).fused[0]
        departure[name] = np.abs(fused.astype(float) - base).max()
    assert departure["x0"] <= 255 / 2 / SCALE + 1  # 1 / scale of the [-1, 1] range, in grey levels, plus rounding
    assert departure["image"] > departure["x0"] + 10
    plain = [evaluate_model(plain_model, [*batch], None, sampler=s, progress=False).fused[0] for s in (chain, image_chain)]
    assert np.array_equal(plain[0], plain[1])
