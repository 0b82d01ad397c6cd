"""The conditional diffusion process of TFS-Diff, SR3 style (Saharia et al., 2022; Ho et al., 2020).

Forward process q(x_t | x_0) = N(gamma x_0, (1 - gamma^2) I) with gamma = sqrt(alpha_bar). Training draws, per
sample, a discrete step t in 1..T and a continuous gamma uniformly between sqrt(alpha_bar_{t-1}) and sqrt(alpha_bar_t)
(SR3's continuous noise level), so any sub-schedule can be sampled later without retraining. The network predicts
the noise. Sampling runs one of the samplers of `model.samplers` (default: SR3's full-chain ancestral DDPM).

`GaussianDiffusion` holds the noise network as `denoise_fn` and the schedule as buffers with the official names, so
its `state_dict()` has exactly the layout of the official `*_gen.pth` checkpoints. It knows nothing about data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from model.samplers import AncestralSampler, NoiseNet, Sampler, sample_loop

TimestepSampling = Literal["per_sample", "per_batch"]

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


class Schedule(Protocol):
    """What a beta schedule needs (matches `core.config.ScheduleConfig`)."""

    schedule: str
    n_timestep: int
    linear_start: float
    linear_end: float


def _warmup_beta(linear_start: float, linear_end: float, n_timestep: int, warmup_frac: float) -> np.ndarray:
    betas = linear_end * np.ones(n_timestep, dtype=np.float64)
    warmup_time = int(n_timestep * warmup_frac)
    betas[:warmup_time] = np.linspace(linear_start, linear_end, warmup_time, dtype=np.float64)
    return betas


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> np.ndarray:
    """The SR3 beta schedules, float64 of length n_timestep."""
    if schedule == "linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    if schedule == "quad":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2
    if schedule == "warmup10":
        return _warmup_beta(linear_start, linear_end, n_timestep, 0.1)
    if schedule == "warmup50":
        return _warmup_beta(linear_start, linear_end, n_timestep, 0.5)
    if schedule == "const":
        return linear_end * np.ones(n_timestep, dtype=np.float64)
    if schedule == "jsd":
        return 1.0 / np.linspace(n_timestep, 1, n_timestep, dtype=np.float64)
    if schedule == "cosine":  # Nichol & Dhariwal (2021), Eq. 17
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas = np.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.clip(1 - alphas[1:] / alphas[:-1], None, 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}")


@dataclass(frozen=True)
class TrainingTerms:
    """What one training forward pass produces; all (B, C, H, W) except `noise_level` (B,)."""

    noise: torch.Tensor
    eps_pred: torch.Tensor
    x0_hat: torch.Tensor
    noise_level: torch.Tensor


class GaussianDiffusion(nn.Module):
    """SR3 Gaussian diffusion around a noise network eps(condition, x_t, noise_level)."""

    def __init__(self, denoise_fn: nn.Module, schedule: Schedule, channels: int = 3, clip_denoised: bool = True,
                 timestep_sampling: TimestepSampling = "per_sample") -> None:
        super().__init__()
        self.denoise_fn = denoise_fn
        self.channels = channels
        self.clip_denoised = clip_denoised
        self.timestep_sampling = timestep_sampling
        self.set_new_noise_schedule(schedule)

    def set_new_noise_schedule(self, schedule: Schedule) -> None:
        """(Re)compute the schedule buffers in float64 and store them as float32 (SR3 semantics)."""
        betas = make_beta_schedule(schedule.schedule, schedule.n_timestep, schedule.linear_start, schedule.linear_end)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.alphas_cumprod_f64 = alphas_cumprod  # float64 copy for respaced samplers (not a buffer)
        self.sqrt_alphas_cumprod_prev = np.sqrt(np.append(1.0, alphas_cumprod))
        self.num_timesteps = int(betas.shape[0])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        values = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        device = next((p.device for p in self.denoise_fn.parameters()), torch.device("cpu"))
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(values[name], dtype=torch.float32, device=device))

    # ----- training -------------------------------------------------------------------------------------------
    def sample_noise_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Continuous gamma ~ U(sqrt(alpha_bar_{t-1}), sqrt(alpha_bar_t)), t ~ U{1..T}; (B,) float32 on CPU."""
        n_t = batch if self.timestep_sampling == "per_sample" else 1
        t = torch.randint(1, self.num_timesteps + 1, (n_t,), generator=generator).expand(batch).numpy()
        u = torch.rand(batch, generator=generator, dtype=torch.float64).numpy()
        low, high = self.sqrt_alphas_cumprod_prev[t - 1], self.sqrt_alphas_cumprod_prev[t]
        return torch.from_numpy(low + u * (high - low)).float()

    @staticmethod
    def q_sample(x0: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = gamma x_0 + sqrt(1 - gamma^2) eps (DDPM Eq. 4 with the continuous gamma)."""
        gamma = noise_level.view(-1, 1, 1, 1)
        return gamma * x0 + (1 - gamma ** 2).sqrt() * noise

    @staticmethod
    def predict_x0(x_t: torch.Tensor, noise_level: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - gamma^2) eps) / gamma, the inverse of `q_sample`."""
        gamma = noise_level.view(-1, 1, 1, 1)
        return (x_t - (1 - gamma ** 2).sqrt() * eps) / gamma

    def training_terms(self, x0: torch.Tensor, condition: torch.Tensor, generator: torch.Generator,
                       net: NoiseNet | None = None, shard: tuple[int, slice] | None = None) -> TrainingTerms:
        """Noise x0 at random continuous levels and predict the noise back.

        Noise and levels come from `generator` (a CPU generator, so runs are reproducible across devices).
        `net` defaults to `denoise_fn`; the trainer passes its DataParallel/DDP wrapper here. With `shard`
        = (global batch size, this process's slice), `x0` is one process's part of a global batch: the noise of the
        whole global batch is drawn (identically on every process) and this part is used, so N processes train on
        exactly what one process would.
        """
        net = self.denoise_fn if net is None else net
        batch, part = shard if shard is not None else (x0.shape[0], slice(None))
        noise_level = self.sample_noise_levels(batch, generator)[part].to(x0.device)
        noise = torch.randn((batch, *x0.shape[1:]), generator=generator)[part].to(x0.device)
        x_t = self.q_sample(x0, noise_level, noise)
        eps_pred = net(condition, x_t, noise_level)
        x0_hat = self.predict_x0(x_t, noise_level, eps_pred)
        if self.clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        return TrainingTerms(noise=noise, eps_pred=eps_pred, x0_hat=x0_hat, noise_level=noise_level)

    # ----- sampling -------------------------------------------------------------------------------------------
    def p_mean_variance(self, x_t: torch.Tensor, t: int, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t, condition) at time index t in 0..T-1 (DDPM Eq. 6-7)."""
        level = float(self.sqrt_alphas_cumprod_prev[t + 1])
        noise_level = torch.full((x_t.shape[0],), level, dtype=torch.float32, device=x_t.device)
        eps = self.denoise_fn(condition, x_t, noise_level)
        x0_hat = self.sqrt_recip_alphas_cumprod[t] * x_t - self.sqrt_recipm1_alphas_cumprod[t] * eps
        if self.clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = self.posterior_mean_coef1[t] * x0_hat + self.posterior_mean_coef2[t] * x_t
        return mean, self.posterior_log_variance_clipped[t]

    @torch.no_grad()
    def p_sample(self, x_t: torch.Tensor, t: int, condition: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1}; no noise is added at t = 0."""
        mean, log_variance = self.p_mean_variance(x_t, t, condition)
        if t == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, device=generator.device).to(x_t.device)
        return mean + noise * (0.5 * log_variance).exp()

    @torch.no_grad()
    def p_sample_loop(self, condition: torch.Tensor, generator: torch.Generator, continuous: bool = False,
                      progress: bool = True, sampler: Sampler | None = None,
                      net: NoiseNet | None = None) -> torch.Tensor:
        """Sample from x_T ~ N(0, I) with `sampler` (default: the full chain, i.e. `p_sample` T times) and `net`
        (default: `denoise_fn`).

        Returns the fused image (B, C, H, W) in [-1, 1], or with `continuous` the denoising process as a
        tensor (K, B, C, H, W) holding x_T and about ten intermediate states, the last one being the result.
        """
        sampler = AncestralSampler.full_chain(self) if sampler is None else sampler
        net = self.denoise_fn if net is None else net
        return sample_loop(net, sampler, condition, generator, self.channels, continuous=continuous,
                           progress=progress)
