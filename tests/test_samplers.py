"""Samplers: one contract for all, exactness of the full chain and of respacing, DDIM equations, CLI overrides."""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

import pytest
import torch

from core.config import ConfigError, PerformanceConfig, SamplerConfig, config_to_dict, load_config, parse_config
from core.cli import add_sampler_args, sampler_from_args
from model.diffusion import GaussianDiffusion
from model.net_runner import NetRunner, prepare_net
from model.schedule import NoiseSchedule
from model.samplers import AncestralSampler, DDIMSampler, build_sampler, sample_loop, spaced_timesteps
from tests.sr3_reference import p_sample_loop

T = 20
SAMPLERS = [SamplerConfig(), SamplerConfig(type="respaced", steps=7), SamplerConfig(type="ddim", steps=7),
            SamplerConfig(type="ddim", steps=5, eta=1.0)]


@pytest.fixture(scope="module")
def diffusion(make_tiny_diffusion: Callable[[int], GaussianDiffusion]) -> GaussianDiffusion:
    return make_tiny_diffusion(T)


@pytest.fixture(scope="module")
def condition() -> torch.Tensor:
    return torch.rand(2, 9, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


def run(diffusion: GaussianDiffusion, sampler, condition: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(seed), 3,
                       progress=False)


@pytest.mark.parametrize("cfg", SAMPLERS, ids=lambda c: f"{c.type}-{c.steps}-{c.eta}")
def test_sampler_contract(diffusion: GaussianDiffusion, condition: torch.Tensor, cfg: SamplerConfig) -> None:
    sampler = build_sampler(diffusion.schedule, cfg)
    n = cfg.steps or T
    assert len(sampler.timesteps) == len(sampler.noise_levels) == n
    assert sampler.timesteps[0] == T - 1 and sampler.timesteps[-1] == 0
    assert all(a > b for a, b in zip(sampler.timesteps, sampler.timesteps[1:]))
    assert all(a < b for a, b in zip(sampler.noise_levels, sampler.noise_levels[1:]))
    x_t, eps = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    x_prev, x0_hat = sampler.step(eps, 0, x_t, torch.Generator().manual_seed(0))
    assert x_prev.shape == x0_hat.shape == x_t.shape and x0_hat.abs().max() <= 1.0
    a, b = run(diffusion, sampler, condition), run(diffusion, sampler, condition)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, run(diffusion, sampler, condition, seed=2))


def test_full_chain_is_bit_identical_to_reference(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    """The full-chain sampler reproduces SR3's loop (T calls of `p_sample`, golden-tested) bit for bit."""
    expected = p_sample_loop(diffusion, condition, torch.Generator().manual_seed(1))
    assert torch.equal(run(diffusion, AncestralSampler.full_chain(diffusion.schedule), condition), expected)


def test_respaced_with_all_steps_equals_full_chain(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    full = run(diffusion, AncestralSampler.full_chain(diffusion.schedule), condition)
    respaced = run(diffusion, AncestralSampler.respaced(diffusion.schedule, T), condition)
    assert (full - respaced).abs().max().item() <= 1e-5


def test_ddim_eta_one_with_all_steps_is_ddpm(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    """Song et al. (2021), Sec. 4.1: eta = 1 gives the DDPM posterior (same mean and variance)."""
    ddpm = run(diffusion, AncestralSampler.respaced(diffusion.schedule, T), condition)
    ddim = run(diffusion, DDIMSampler(diffusion.schedule, T, eta=1.0), condition)
    assert (ddpm - ddim).abs().max().item() <= 1e-4


def test_ddim_eta_zero_ignores_the_generator(diffusion: GaussianDiffusion) -> None:
    sampler = DDIMSampler(diffusion.schedule, 5, eta=0.0)
    x_t, eps = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    state = g1.get_state()
    for i in range(5):
        assert torch.equal(sampler.step(eps, i, x_t, g1)[0], sampler.step(eps, i, x_t, g2)[0])
    assert torch.equal(g1.get_state(), state)


@pytest.mark.parametrize("steps", [1, 2, 5, T])
def test_ddim_eta_zero_moves_along_the_forward_process(diffusion: GaussianDiffusion, steps: int) -> None:
    """With the true noise, Eq. 12 (eta 0) maps q(x_t | x0) to q(x_prev | x0) at the listed previous step."""
    sampler = DDIMSampler(diffusion.schedule, steps, eta=0.0)
    x0, eps = torch.rand(1, 3, 8, 8) * 1.6 - 0.8, torch.randn(1, 3, 8, 8)
    gammas = [*sampler.noise_levels, 1.0]
    for i in range(steps):
        x_t = gammas[i] * x0 + (1 - gammas[i] ** 2) ** 0.5 * eps
        x_prev, x0_hat = sampler.step(eps, i, x_t, torch.Generator())
        torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)
        torch.testing.assert_close(x_prev, gammas[i + 1] * x0 + (1 - gammas[i + 1] ** 2) ** 0.5 * eps, atol=1e-4,
                                   rtol=0)


def test_a_chain_started_at_a_lower_step_begins_from_a_noised_zero_signal(diffusion: GaussianDiffusion,
                                                                          condition: torch.Tensor) -> None:
    schedule = NoiseSchedule.from_spec(SimpleNamespace(schedule="linear", n_timestep=20, linear_start=1e-4,
                                                       linear_end=0.1))
    assert spaced_timesteps(20, 4, start=7) == (6, 4, 2, 0)
    with pytest.raises(ValueError, match="start step"):
        spaced_timesteps(20, 4, start=21)
    with pytest.raises(ValueError, match="1..3"):
        spaced_timesteps(20, 4, start=3)
    for cfg in (SamplerConfig(type="respaced", steps=4, start_step=7),
                SamplerConfig(type="ddim", steps=4, start_step=7)):
        sampler = build_sampler(schedule, cfg)
        assert sampler.timesteps == (6, 4, 2, 0)
        assert sampler.start_noise == pytest.approx(float(np.sqrt(1 - schedule.alphas_cumprod[6])))
        frames = sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(2), 3,
                             continuous=True, progress=False)
        noise = torch.randn(frames[0].shape, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(frames[0], noise * sampler.start_noise)
    assert build_sampler(schedule, SamplerConfig(type="respaced", steps=4)).start_noise == 1.0


def test_a_chain_may_start_from_a_noised_start_signal(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    """start_from "condition" (SR3): x_S = gamma_S start + sqrt(1 - gamma_S^2) eps, the same noise as a zero start."""
    schedule = NoiseSchedule.from_spec(SimpleNamespace(schedule="linear", n_timestep=20, linear_start=1e-4,
                                                       linear_end=0.1))
    start = condition[:, :3]
    gamma = float(np.sqrt(schedule.alphas_cumprod[6]))
    for cfg in (SamplerConfig(type="respaced", steps=4, start_step=7),
                SamplerConfig(type="ddim", steps=4, start_step=7)):
        sampler = build_sampler(schedule, cfg)
        frames = {name: sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(2), 3,
                                    continuous=True, progress=False, start=signal)
                  for name, signal in (("zero", None), ("start", start), ("zeros", torch.zeros_like(start)))}
        assert torch.allclose(frames["start"][0], frames["zero"][0] + gamma * start, atol=1e-6)
        assert torch.equal(frames["zeros"], frames["zero"])
        assert not torch.allclose(frames["start"][-1], frames["zero"][-1])
    with pytest.raises(ValueError, match="needs a chain that starts at a lower step"):
        sample_loop(diffusion.denoise_fn, build_sampler(schedule, SamplerConfig(type="respaced", steps=4)),
                    condition, torch.Generator().manual_seed(2), 3, progress=False, start=start)


def test_start_from_condition_needs_a_start_step_and_a_single_image_task() -> None:
    with pytest.raises(ConfigError, match="start_from.*set start_step too"):
        SamplerConfig(type="respaced", steps=4, start_from="condition")
    cfg = config_to_dict(load_config("config/sr3_x4_64_256.json"))
    cfg["model"]["sampler"] = {"type": "ddim", "steps": 5, "start_step": 50, "start_from": "condition"}
    assert parse_config(copy.deepcopy(cfg)).model.sampler.start_from == "condition"
    fusion = config_to_dict(load_config("config/demo.json"))
    fusion["model"]["sampler"] = {"type": "ddim", "steps": 5, "start_step": 50, "start_from": "condition"}
    with pytest.raises(ConfigError, match="model.sampler.start_from.*task 'fusion' is conditioned on three"):
        parse_config(fusion)
    sr3 = load_config("config/sr3_x4_64_256.json")  # its sampler starts from the condition at step 50
    assert sampler_from_args(parse(["--steps", "20", "--start-step", "300"]), sr3) == SamplerConfig(
        type="respaced", steps=20, start_step=300, start_from="condition")
    assert sampler_from_args(parse(["--start-step", "300", "--start-from", "zero"]), sr3).start_from == "zero"
    with pytest.raises(ConfigError, match="--start-from.*set start_step too"):
        sampler_from_args(parse(["--sampler", "ddim", "--steps", "5", "--start-from", "condition"]), sr3)
    with pytest.raises(ConfigError, match="--start-from.*task 'fusion' is conditioned on three"):
        sampler_from_args(parse(["--start-step", "300", "--start-from", "condition"]), load_config("config/demo.json"))


def test_spaced_timesteps() -> None:
    assert spaced_timesteps(1000, 10) == (999, 888, 777, 666, 555, 444, 333, 222, 111, 0)
    assert spaced_timesteps(10, 10) == tuple(range(9, -1, -1))
    assert spaced_timesteps(10, 1) == (9,)
    with pytest.raises(ValueError, match="1..10"):
        spaced_timesteps(10, 11)


def test_channels_last_condition_gives_same_samples(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    sampler = build_sampler(diffusion.schedule, SamplerConfig(type="ddim", steps=4))
    plain = sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(3), 3, progress=False)
    nhwc = sample_loop(diffusion.denoise_fn, sampler, condition.contiguous(memory_format=torch.channels_last),
                       torch.Generator().manual_seed(3), 3, progress=False)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert (plain - nhwc).abs().max().item() <= 1e-4


def test_continuous_returns_frames_ending_with_result(diffusion: GaussianDiffusion, condition: torch.Tensor) -> None:
    sampler = build_sampler(diffusion.schedule, SamplerConfig(type="respaced", steps=7))
    frames = sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(1), 3,
                         continuous=True, progress=False)
    assert frames.shape == (8, 2, 3, 16, 16)
    assert torch.equal(frames[-1], run(diffusion, sampler, condition))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sampler_args(parser)
    return parser.parse_args(argv)


def test_sampler_from_args_overrides_config() -> None:
    cfg = load_config("config/demo.json")
    assert sampler_from_args(parse([]), cfg) == cfg.model.sampler == SamplerConfig(type="respaced", steps=20)
    assert sampler_from_args(parse(["--sampler", "ddpm"]), cfg) == SamplerConfig()
    assert sampler_from_args(parse(["--sampler", "ddim", "--steps", "50", "--eta", "0.5"]), cfg) == \
        SamplerConfig(type="ddim", steps=50, eta=0.5)
    assert sampler_from_args(parse(["--sampler", "respaced"]), cfg) == cfg.model.sampler  # the config's steps
    assert sampler_from_args(parse(["--steps", "50"]), cfg) == SamplerConfig(type="respaced", steps=50)
    with pytest.raises(ConfigError, match="--steps.*required"):
        sampler_from_args(parse(["--sampler", "ddim"]), cfg)
    with pytest.raises(ConfigError, match="--eta.*only used by type 'ddim'"):
        sampler_from_args(parse(["--sampler", "respaced", "--steps", "5", "--eta", "0.3"]), cfg)
    with pytest.raises(ConfigError, match="--steps.*exceeds"):
        sampler_from_args(parse(["--sampler", "ddim", "--steps", "1001"]), cfg)
    assert sampler_from_args(parse(["--samples", "3"]), cfg) == SamplerConfig(type="respaced", steps=20, samples=3)
    assert sampler_from_args(parse(["--start-step", "300"]), cfg) == SamplerConfig(type="respaced", steps=20,
                                                                                  start_step=300)
    with pytest.raises(ConfigError, match="--start-step.*at least steps"):
        sampler_from_args(parse(["--start-step", "10"]), cfg)
    with pytest.raises(ConfigError, match="--start-step.*only for type"):
        sampler_from_args(parse(["--sampler", "ddpm", "--start-step", "10"]), cfg)
    with pytest.raises(ConfigError, match="--start-step.*exceeds"):
        sampler_from_args(parse(["--start-step", "1001"]), cfg)
    with pytest.raises(ConfigError, match="--samples"):
        sampler_from_args(parse(["--samples", "0"]), cfg)


def test_sampler_config_errors_name_the_key() -> None:
    data = config_to_dict(load_config("config/demo.json"))
    data["model"]["sampler"] = {"type": "ddpm", "steps": 10}
    with pytest.raises(ConfigError, match="model.sampler.steps.*full chain"):
        parse_config(data)
    data["model"]["sampler"] = {"type": "ddim", "steps": 2000}
    with pytest.raises(ConfigError, match="model.sampler.steps.*exceeds"):
        parse_config(data)
    data["model"]["sampler"] = {"type": "ddim", "steps": 10, "eta": 1.5}
    with pytest.raises(ConfigError, match="model.sampler.eta"):
        parse_config(data)


def test_net_runner_switches_keep_the_function(diffusion: GaussianDiffusion) -> None:
    fast_net = prepare_net(copy.deepcopy(diffusion.denoise_fn), PerformanceConfig(channels_last=True))
    plain = NetRunner(diffusion.denoise_fn, PerformanceConfig(), torch.device("cpu"))
    nhwc = NetRunner(fast_net, PerformanceConfig(channels_last=True), torch.device("cpu"))
    bf16 = NetRunner(fast_net, PerformanceConfig(channels_last=True, autocast="bf16"), torch.device("cpu"))
    args = (torch.rand(2, 9, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.9]))
    with torch.no_grad():
        reference, a, b = plain(*args), nhwc(*args), bf16(*args)
    assert a.dtype == b.dtype == torch.float32
    assert (reference - a).abs().max().item() <= 1e-4
    assert (reference - b).abs().max().item() <= 0.1 * reference.abs().max().item()
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        NetRunner(diffusion.denoise_fn, PerformanceConfig(autocast="fp16"), torch.device("cpu"))


def test_fp16_without_gpu_is_a_config_error() -> None:
    data = config_to_dict(load_config("config/demo.json"))
    data["performance"] = {"autocast": "fp16"}
    with pytest.raises(ConfigError, match="performance.autocast.*GPU"):
        parse_config(data)
