"""Schedules against closed forms, the forward process, the training noise levels, and the losses."""
from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from model.diffusion import GaussianDiffusion, TrainingTerms
from model.losses import PSFLoss, build_loss, mse_loss, official_loss, ssim_map, ssim_torch
from model.samplers import AncestralSampler, sample_loop
from model.schedule import NoiseSchedule, make_beta_schedule
from model.unet import UNet

PAPER = SimpleNamespace(schedule="linear", n_timestep=4000, linear_start=1e-6, linear_end=1e-2)
PAPER_SCHEDULE = NoiseSchedule.from_spec(PAPER)


def test_linear_schedule_closed_form() -> None:
    betas = make_beta_schedule("linear", 4000, 1e-6, 1e-2)
    assert betas.dtype == np.float64 and betas.shape == (4000,)
    assert betas[0] == pytest.approx(1e-6) and betas[-1] == pytest.approx(1e-2)
    assert betas[1] - betas[0] == pytest.approx((1e-2 - 1e-6) / 3999)


def test_other_schedules_closed_forms() -> None:
    quad = make_beta_schedule("quad", 10, 1e-4, 1e-2)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(1e-2)
    assert np.allclose(np.sqrt(quad), np.linspace(1e-2, 1e-1, 10))
    warm = make_beta_schedule("warmup10", 100, 1e-4, 1e-2)
    assert np.allclose(warm[:10], np.linspace(1e-4, 1e-2, 10)) and np.all(warm[10:] == 1e-2)
    assert np.all(make_beta_schedule("const", 5, 1e-4, 0.3) == 0.3)
    assert np.allclose(make_beta_schedule("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
    cos = make_beta_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert np.prod(1 - cos[:500]) == pytest.approx(f(500) / f(0), rel=1e-9)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_beta_schedule("sigmoid", 10)


@pytest.fixture(scope="module")
def diffusion(make_tiny_unet: Callable[..., UNet]) -> GaussianDiffusion:
    return GaussianDiffusion(make_tiny_unet(), NoiseSchedule.from_spec(PAPER))


def test_buffers_match_closed_forms(diffusion: GaussianDiffusion) -> None:
    betas = np.linspace(1e-6, 1e-2, 4000)
    alpha_bar = np.cumprod(1 - betas)
    assert np.allclose(diffusion.alphas_cumprod.numpy(), alpha_bar, rtol=1e-5)
    assert np.allclose(diffusion.schedule.sqrt_alphas_cumprod_prev, np.sqrt(np.append(1.0, alpha_bar)))
    var = betas[1:] * (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:])
    assert np.allclose(diffusion.posterior_variance.numpy()[1:], var, rtol=1e-5)
    assert diffusion.posterior_variance[0].item() == 0.0


def test_training_noise_levels(diffusion: GaussianDiffusion) -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    levels = diffusion.sample_noise_levels(4096, g1)
    assert torch.equal(levels, diffusion.sample_noise_levels(4096, g2))
    assert levels.dtype == torch.float32 and levels.shape == (4096,)
    low = diffusion.schedule.sqrt_alphas_cumprod_prev[-1]
    assert levels.min().item() >= low - 1e-7 and levels.max().item() <= 1.0
    assert len(torch.unique(levels)) == 4096  # per sample, continuous
    diffusion.timestep_sampling = "per_batch"
    try:
        batch = diffusion.sample_noise_levels(64, torch.Generator().manual_seed(1)).double().numpy()
    finally:
        diffusion.timestep_sampling = "per_sample"
    t = np.searchsorted(-diffusion.schedule.sqrt_alphas_cumprod_prev, -batch)  # all in one interval
    assert len(set(t.tolist())) == 1


def test_training_noise_levels_stop_at_max_step(make_tiny_unet: Callable[..., UNet]) -> None:
    truncated = GaussianDiffusion(make_tiny_unet(), NoiseSchedule.from_spec(PAPER), max_step=200)
    levels = truncated.sample_noise_levels(4096, torch.Generator().manual_seed(3)).double().numpy()
    table = truncated.schedule.sqrt_alphas_cumprod_prev
    assert levels.min() >= table[200] - 1e-6 and levels.min() < table[199]  # down to step 200, not beyond
    assert levels.max() > table[2]  # from step 1
    assert len(np.unique(np.searchsorted(-table, -levels))) >= 195  # the steps in between, drawn uniformly
    for bad in (0, 4001):
        with pytest.raises(ValueError, match="max_step must be in 1..4000"):
            GaussianDiffusion(make_tiny_unet(), NoiseSchedule.from_spec(PAPER), max_step=bad)


def test_zero_start_samples_begin_as_the_chain_from_start_step_does(make_tiny_unet: Callable[..., UNet]) -> None:
    net = make_tiny_unet()
    plain = GaussianDiffusion(net, NoiseSchedule.from_spec(PAPER), max_step=200)
    mixed = GaussianDiffusion(net, NoiseSchedule.from_spec(PAPER), max_step=200, zero_start=0.5)
    x0, cond = torch.rand(64, 3, 8, 8) * 2 - 1, torch.rand(64, 9, 8, 8) * 2 - 1
    mixed.eval()
    with torch.no_grad():
        a = plain.training_terms(x0, cond, torch.Generator().manual_seed(2))
        b = mixed.training_terms(x0, cond, torch.Generator().manual_seed(2))
    gamma = float(PAPER_SCHEDULE.sqrt_alphas_cumprod_prev[200])
    started = b.noise_level == gamma
    assert 16 <= int(started.sum()) <= 48  # about half
    kept = ~started
    torch.testing.assert_close(b.noise_level[kept], a.noise_level[kept])
    torch.testing.assert_close(b.noise[kept], a.noise[kept])  # the others are untouched
    # the network input of a zero-start sample (x_t that its target noise implies) is the state a respaced chain
    # with start_step 200 begins from: sqrt(1 - gamma^2) eps, no signal, at the chain's first noise level
    sampler = AncestralSampler.respaced(PAPER_SCHEDULE, 5, start=200)
    assert sampler.noise_levels[0] == pytest.approx(gamma, abs=1e-7)
    x_t = GaussianDiffusion.q_sample(x0, b.noise_level, b.noise)[started]
    torch.testing.assert_close(x_t, sampler.start_noise * a.noise[started], atol=1e-5, rtol=1e-5)
    # and predicting that target recovers x0 exactly
    recovered = GaussianDiffusion.predict_x0(x_t, b.noise_level[started], b.noise[started])
    torch.testing.assert_close(recovered, x0[started], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs max_step"):
        GaussianDiffusion(net, NoiseSchedule.from_spec(PAPER), zero_start=0.5)


def test_q_sample_and_predict_x0_are_inverse(diffusion: GaussianDiffusion) -> None:
    x0, noise = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    level = torch.tensor([0.3, 0.9])
    x_t = diffusion.q_sample(x0, level, noise)
    torch.testing.assert_close(x_t[1], 0.9 * x0[1] + math.sqrt(1 - 0.81) * noise[1])
    torch.testing.assert_close(diffusion.predict_x0(x_t, level, noise), x0, atol=1e-5, rtol=1e-5)


def test_training_terms_are_reproducible(diffusion: GaussianDiffusion) -> None:
    x0, cond = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 9, 16, 16) * 2 - 1
    diffusion.eval()
    a = diffusion.training_terms(x0, cond, torch.Generator().manual_seed(0))
    b = diffusion.training_terms(x0, cond, torch.Generator().manual_seed(0))
    assert torch.equal(a.eps_pred, b.eps_pred) and torch.equal(a.noise, b.noise)
    assert a.x0_hat.abs().max() <= 1.0


def test_sampling_is_seeded(make_tiny_diffusion: Callable[[int], GaussianDiffusion]) -> None:
    diff = make_tiny_diffusion(20)
    cond = torch.rand(1, 9, 16, 16)
    sampler = AncestralSampler.full_chain(diff.schedule)

    def run(continuous: bool = False) -> torch.Tensor:
        return sample_loop(diff.denoise_fn, sampler, cond, torch.Generator().manual_seed(1), 3,
                           continuous=continuous, progress=False)
    a, b, strip = run(), run(), run(continuous=True)
    assert torch.equal(a, b) and torch.equal(strip[-1], a)
    assert a.shape == (1, 3, 16, 16) and a.abs().max() < 10


def test_ssim_matches_scikit_image_gaussian() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    b = np.clip(a + 0.1 * rng.standard_normal((32, 32)), 0, 1)
    ours = ssim_torch(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    ref_map = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)[1]
    assert ours == pytest.approx(ref_map[5:-5, 5:-5].mean(), abs=1e-6)
    x = torch.rand(1, 3, 16, 16)
    assert ssim_torch(x, x).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="larger than the image"):
        ssim_map(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def terms(eps_pred: torch.Tensor, noise: torch.Tensor, x0_hat: torch.Tensor) -> TrainingTerms:
    return TrainingTerms(noise=noise, eps_pred=eps_pred, x0_hat=x0_hat, noise_level=torch.ones(noise.shape[0]))


def test_psf_loss_formula() -> None:
    torch.manual_seed(0)
    noise, eps = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    x0, x0_hat = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    out = PSFLoss(0.7, 0.4)(terms(eps, noise, x0_hat), x0)
    expected = 0.7 * ((eps - noise) ** 2).mean() + 0.4 * (1 - ssim_torch((x0_hat + 1) / 2, (x0 + 1) / 2))
    torch.testing.assert_close(out["loss"], expected)
    perfect = PSFLoss(1.0, 1.0)(terms(noise, noise, x0), x0)["loss"]
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(mse_loss(terms(eps, noise, x0_hat), x0)["loss"], ((eps - noise) ** 2).mean())


def test_psf_loss_gradient_reaches_both_terms() -> None:
    eps = torch.randn(1, 3, 16, 16, requires_grad=True)
    x0_hat = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    PSFLoss()(terms(eps, torch.randn(1, 3, 16, 16), x0_hat), torch.rand(1, 3, 16, 16))["loss"].backward()
    assert eps.grad.abs().sum() > 0 and x0_hat.grad.abs().sum() > 0


def test_official_loss_is_l1_sum_plus_ssim_of_target_and_noise() -> None:
    torch.manual_seed(0)
    noise, eps, x0 = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    out = official_loss(terms(eps, noise, torch.zeros_like(x0)), x0)
    l1 = (eps - noise).abs().sum()
    kornia = (torch.clamp(1 - ssim_map(x0, eps, padding="reflect"), 0, 1) / 2).mean()
    torch.testing.assert_close(out["loss"], l1 + kornia)
    assert build_loss("official") is official_loss and build_loss("mse") is mse_loss
    with pytest.raises(ValueError, match="unknown loss type"):
        build_loss("l1")  # type: ignore[arg-type]
