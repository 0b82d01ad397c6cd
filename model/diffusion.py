"""The conditional diffusion process of TFS-Diff, SR3 style (Saharia et al., 2022; Ho et al., 2020).

Forward process q(x_t | x_0) = N(gamma x_0, (1 - gamma^2) I) with gamma = sqrt(alpha_bar). Training draws, per
sample, a discrete step t in 1..T and a continuous gamma uniformly between sqrt(alpha_bar_{t-1}) and sqrt(alpha_bar_t)
(SR3's continuous noise level), so any sub-schedule can be sampled later without retraining. The network predicts
the noise. Sampling is not done here: the samplers of `model.samplers` are built from a schedule table
(`model.schedule`) and call the network directly.

`GaussianDiffusion` holds the noise network as `denoise_fn` and the *training* schedule as buffers with the official
names, so its `state_dict()` has exactly the layout of the official `*_gen.pth` checkpoints. It knows nothing about
data and never changes its schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from model.samplers import NoiseNet
from model.schedule import NoiseSchedule

TimestepSampling = Literal["per_sample", "per_batch"]


@dataclass(frozen=True)
class TrainingTerms:
    """What one training forward pass produces; all (B, C, H, W) except `noise_level` (B,)."""

    noise: torch.Tensor  # the target of eps_pred: the drawn noise (for zero starts, the noise that gives x0)
    eps_pred: torch.Tensor
    x0_hat: torch.Tensor
    noise_level: torch.Tensor


class GaussianDiffusion(nn.Module):
    """SR3 Gaussian diffusion around a noise network eps(condition, x_t, noise_level)."""

    def __init__(self, denoise_fn: nn.Module, schedule: NoiseSchedule, channels: int = 3, clip_denoised: bool = True,
                 timestep_sampling: TimestepSampling = "per_sample", max_step: int | None = None,
                 zero_start: float = 0.0) -> None:
        super().__init__()
        self.denoise_fn = denoise_fn
        self.channels = channels
        self.clip_denoised = clip_denoised
        self.timestep_sampling = timestep_sampling
        self.schedule = schedule
        if max_step is not None and not 1 <= max_step <= schedule.num_timesteps:
            raise ValueError(f"max_step must be in 1..{schedule.num_timesteps}, got {max_step}")
        self.max_step = schedule.num_timesteps if max_step is None else max_step
        if not 0.0 <= zero_start < 1.0 or (zero_start > 0 and max_step is None):
            raise ValueError(f"zero_start must be in [0, 1) and needs max_step, got {zero_start} (max_step {max_step})")
        self.zero_start = zero_start
        device = next((p.device for p in denoise_fn.parameters()), torch.device("cpu"))
        for name, value in schedule.float32_buffers(device).items():
            self.register_buffer(name, value)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    # ----- training -------------------------------------------------------------------------------------------
    def sample_noise_levels(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Continuous gamma ~ U(sqrt(alpha_bar_{t-1}), sqrt(alpha_bar_t)), t ~ U{1..max_step}; (B,) float32 on CPU.

        max_step is T unless the diffusion was built with a smaller one (`model.diffusion.train_max_step`).
        """
        n_t = batch if self.timestep_sampling == "per_sample" else 1
        t = torch.randint(1, self.max_step + 1, (n_t,), generator=generator).expand(batch).numpy()
        u = torch.rand(batch, generator=generator, dtype=torch.float64).numpy()
        levels = self.schedule.sqrt_alphas_cumprod_prev
        low, high = levels[t - 1], levels[t]
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
        target = noise
        if self.zero_start > 0:
            x_t, noise_level, target = self._zero_starts(x0, x_t, noise_level, noise, generator, batch, part)
        eps_pred = net(condition, x_t, noise_level)
        x0_hat = self.predict_x0(x_t, noise_level, eps_pred)
        if self.clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        return TrainingTerms(noise=target, eps_pred=eps_pred, x0_hat=x0_hat, noise_level=noise_level)

    def _zero_starts(self, x0: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor,
                     generator: torch.Generator, batch: int,
                     part: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replace a `zero_start` fraction of the batch by the state a chain started at step S = max_step begins
        from (`model.samplers`, start_step): x_S = sqrt(1 - gamma_S^2) eps, no signal, at gamma_S = sqrt(alpha_bar_S).
        The target is the noise that makes x0_hat = x0 there, (x_S - gamma_S x0) / sqrt(1 - gamma_S^2), so that
        step learns E[x0 | condition], the regression the chain starts from."""
        chosen = (torch.rand(batch, generator=generator) < self.zero_start)[part].to(x0.device)
        gamma = float(self.schedule.sqrt_alphas_cumprod_prev[self.max_step])
        sigma = (1.0 - gamma ** 2) ** 0.5
        start = sigma * noise
        mask = chosen.view(-1, 1, 1, 1)
        x_t = torch.where(mask, start, x_t)
        target = torch.where(mask, (start - gamma * x0) / sigma, noise)
        noise_level = torch.where(chosen, torch.full_like(noise_level, gamma), noise_level)
        return x_t, noise_level, target
