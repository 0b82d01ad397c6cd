"""SR3's original reverse loop (`p_mean_variance` / `p_sample` / `p_sample_loop`), kept as the reference that the
samplers of `model.samplers` are tested against. It reads the float32 schedule buffers of a `GaussianDiffusion`,
exactly as the SR3 and official TFS-Diff code do; only tests use it."""
from __future__ import annotations

import torch

from model.diffusion import GaussianDiffusion


def p_mean_variance(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int,
                    condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of p(x_{t-1} | x_t, condition) at time index t in 0..T-1 (DDPM Eq. 6-7)."""
    d = diffusion
    level = float(d.schedule.sqrt_alphas_cumprod_prev[t + 1])
    noise_level = torch.full((x_t.shape[0],), level, dtype=torch.float32, device=x_t.device)
    eps = d.denoise_fn(condition, x_t, noise_level)
    x0_hat = d.sqrt_recip_alphas_cumprod[t] * x_t - d.sqrt_recipm1_alphas_cumprod[t] * eps
    if d.clip_denoised:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean = d.posterior_mean_coef1[t] * x0_hat + d.posterior_mean_coef2[t] * x_t
    return mean, d.posterior_log_variance_clipped[t]


@torch.no_grad()
def p_sample(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int, condition: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1}; no noise is added at t = 0."""
    mean, log_variance = p_mean_variance(diffusion, x_t, t, condition)
    if t == 0:
        return mean
    noise = torch.randn(x_t.shape, generator=generator, device=generator.device).to(x_t.device)
    return mean + noise * (0.5 * log_variance).exp()


@torch.no_grad()
def p_sample_loop(diffusion: GaussianDiffusion, condition: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x_T ~ N(0, I) from `generator`, then T calls of `p_sample`: the fused image (B, C, H, W)."""
    b, _, h, w = condition.shape
    img = torch.randn((b, diffusion.channels, h, w), generator=generator)
    for t in reversed(range(diffusion.num_timesteps)):
        img = p_sample(diffusion, img, t, condition, generator)
    return img
