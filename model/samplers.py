"""Reverse-diffusion samplers behind one contract, and the one generic sampling loop.

Every sampler is built from a `model.schedule.NoiseSchedule` table (never from the diffusion module or the
network). A sampler holds `timesteps`, the kept indices 0..T-1 of the full chain in descending order, the noise level
gamma = sqrt(alpha_bar) fed to the network at each of them, and `step(eps, i, x_t, generator) -> (x_prev, x0_hat)`
for the i-th kept step. The step before `timesteps[i]` is always read from the list (`timesteps[i + 1]`, or "none"
after the last one, where alpha_bar_prev = 1); it is never computed by arithmetic. Every per-step coefficient is a
python float computed before the loop, so the loop never synchronises host and device.

- `AncestralSampler.full_chain`: the reference, SR3's full-chain ancestral DDPM (Ho et al., 2020, Eq. 6-7, 15),
  with the float32 schedule buffers, so its output is bit-identical to the original loop for the same seed.
- `AncestralSampler.respaced`: DDPM over N kept steps with betas recomputed from the kept alpha_bar
  (Nichol & Dhariwal, 2021, Sec. 4; guided-diffusion's respacing), noise level sqrt(alpha_bar) of the kept step.
- `DDIMSampler`: Song et al. (2021), Eq. 12 with sigma from Eq. 16 scaled by eta.
Images are (B, C, H, W) in [-1, 1]; noise levels are in (0, 1].

Each is registered by name in `core.registry.SAMPLERS` beside its builder (end of this module); that name is what
`model.sampler.type` and `--sampler` accept, and `tests/test_registries.py` runs every registered sampler.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from core.config import SamplerConfig
from core.registry import SAMPLERS
from model.schedule import NoiseSchedule

NoiseNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Bounds = tuple[torch.Tensor, torch.Tensor]  # per-pixel (low, high) for x0 instead of [-1, 1]


def clip_x0(x0_hat: torch.Tensor, bounds: Bounds | None) -> torch.Tensor:
    """x0_hat clipped to [-1, 1], or to per-pixel `bounds` (low, high)."""
    if bounds is None:
        return x0_hat.clamp(-1.0, 1.0)
    return torch.minimum(torch.maximum(x0_hat, bounds[0]), bounds[1])


class Sampler(Protocol):
    """The contract every sampler obeys."""

    timesteps: tuple[int, ...]  # kept indices into the full chain, descending, ending at the last kept one
    noise_levels: tuple[float, ...]  # gamma fed to the network at step i
    start_noise: float  # x at the first kept step is start_noise * N(0, I): 1, or sqrt(1 - gamma_0^2) from a zero signal

    def step(self, eps: torch.Tensor, i: int, x_t: torch.Tensor, generator: torch.Generator,
             bounds: Bounds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t at kept step i and the predicted noise -> (x at the next kept step, predicted x0); x0 is clipped to
        [-1, 1], or to `bounds` when given (when the sampler clips at all)."""
        ...


def spaced_timesteps(num_timesteps: int, steps: int, start: int | None = None) -> tuple[int, ...]:
    """`steps` evenly spaced indices of 0..S-1, both ends included (guided-diffusion's `space_timesteps`),
    descending; S = `start` (1..T), default T."""
    start = num_timesteps if start is None else start
    if not 1 <= start <= num_timesteps:
        raise ValueError(f"sampler start step must be in 1..{num_timesteps} (the schedule's n_timestep), got {start}")
    if not 1 <= steps <= start:
        raise ValueError(f"sampler steps must be in 1..{start} (the chain's first step), got {steps}")
    if steps == 1:
        return (start - 1,)
    stride = (start - 1) / (steps - 1)
    return tuple(sorted({round(k * stride) for k in range(steps)}, reverse=True))


def is_channels_last(x: torch.Tensor) -> bool:
    """True when the 4-d tensor x is laid out NHWC (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _noise(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its device), moved to like's device and memory format."""
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device).to(like.device)
    return noise.contiguous(memory_format=torch.channels_last) if is_channels_last(like) else noise


def _floats(values: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, ...]:
    """Python floats (never numpy scalars or tensors, so per-step arithmetic never syncs or leaves torch)."""
    values = values.tolist() if isinstance(values, (np.ndarray, torch.Tensor)) else values
    return tuple(float(v) for v in values)


class AncestralSampler:
    """Ancestral DDPM steps x_t -> x_{t_prev} along the kept steps; no noise is added after the last one."""

    def __init__(self, timesteps: Sequence[int], noise_levels: Sequence[float], recip: Sequence[float],
                 recipm1: Sequence[float], coef1: Sequence[float], coef2: Sequence[float], sigma: Sequence[float],
                 clip_denoised: bool) -> None:
        self.timesteps = tuple(int(t) for t in timesteps)
        self.noise_levels = _floats(noise_levels)
        self._recip, self._recipm1 = _floats(recip), _floats(recipm1)
        self._coef1, self._coef2, self._sigma = _floats(coef1), _floats(coef2), _floats(sigma)
        self.clip_denoised = clip_denoised
        self.start_noise = 1.0

    @classmethod
    def full_chain(cls, schedule: NoiseSchedule, clip_denoised: bool = True) -> AncestralSampler:
        """Every step T-1..0 with the schedule cast to float32 (SR3's `p_sample_loop` on its float32 buffers)."""
        b = schedule.float32_buffers()
        t = torch.arange(schedule.num_timesteps - 1, -1, -1)
        sigma = (0.5 * b["posterior_log_variance_clipped"]).exp()  # sigma_t^2 = beta~_t, the posterior variance (Eq. 7)
        return cls(t, schedule.sqrt_alphas_cumprod_prev[t.numpy() + 1], b["sqrt_recip_alphas_cumprod"][t],
                   b["sqrt_recipm1_alphas_cumprod"][t], b["posterior_mean_coef1"][t], b["posterior_mean_coef2"][t],
                   sigma[t], clip_denoised)

    @classmethod
    def respaced(cls, schedule: NoiseSchedule, steps: int, clip_denoised: bool = True,
                 start: int | None = None) -> AncestralSampler:
        """DDPM over `steps` kept steps: beta_k = 1 - alpha_bar_k / alpha_bar_prev(k), in float64. With `start`,
        the kept steps span 0..start-1 and the chain starts from a zero signal noised to the first one's level."""
        kept = spaced_timesteps(schedule.num_timesteps, steps, start)
        ab = schedule.alphas_cumprod[list(kept)]
        ab_prev = np.append(ab[1:], 1.0)  # alpha_bar of the next kept step in sampling order; 1 after the last
        betas = 1.0 - ab / ab_prev
        variance = betas * (1.0 - ab_prev) / (1.0 - ab)  # posterior variance beta~ (Eq. 7)
        sampler = cls(kept, np.sqrt(ab), np.sqrt(1.0 / ab), np.sqrt(1.0 / ab - 1.0),
                      betas * np.sqrt(ab_prev) / (1.0 - ab), (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
                      np.sqrt(np.maximum(variance, 1e-20)), clip_denoised)
        if start is not None:
            sampler.start_noise = float(np.sqrt(1.0 - ab[0]))
        return sampler

    def step(self, eps: torch.Tensor, i: int, x_t: torch.Tensor, generator: torch.Generator,
             bounds: Bounds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x0_hat = self._recip[i] * x_t - self._recipm1[i] * eps  # x0 from x_t and eps (Ho et al., Eq. 15)
        if self.clip_denoised:
            x0_hat = clip_x0(x0_hat, bounds)
        mean = self._coef1[i] * x0_hat + self._coef2[i] * x_t  # posterior mean mu~_t(x_t, x0) (Ho et al., Eq. 7)
        if i == len(self.timesteps) - 1:
            return mean, x0_hat
        return mean + _noise(x_t.shape, x_t, generator) * self._sigma[i], x0_hat


class DDIMSampler:
    """DDIM (Song et al., 2021): Eq. 12 with sigma_t(eta) of Eq. 16; eta = 0 is deterministic."""

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float, clip_denoised: bool = True,
                 start: int | None = None) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
        self.timesteps = spaced_timesteps(schedule.num_timesteps, steps, start)
        ab = schedule.alphas_cumprod[list(self.timesteps)]
        self.start_noise = 1.0 if start is None else float(np.sqrt(1.0 - ab[0]))
        ab_prev = np.append(ab[1:], 1.0)
        sigma = eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))  # Eq. 16 times eta
        self.noise_levels = _floats(np.sqrt(ab))
        self.eta = eta
        self.clip_denoised = clip_denoised
        self._recip, self._recipm1 = _floats(np.sqrt(1.0 / ab)), _floats(np.sqrt(1.0 / ab - 1.0))
        self._sqrt_ab_prev = _floats(np.sqrt(ab_prev))
        self._dir = _floats(np.sqrt(np.maximum(1.0 - ab_prev - sigma ** 2, 0.0)))
        self._sigma = _floats(sigma)

    def step(self, eps: torch.Tensor, i: int, x_t: torch.Tensor, generator: torch.Generator,
             bounds: Bounds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x0_hat = self._recip[i] * x_t - self._recipm1[i] * eps  # "predicted x0" term of Eq. 12
        if self.clip_denoised:
            x0_hat = clip_x0(x0_hat, bounds)
            eps = (self._recip[i] * x_t - x0_hat) / self._recipm1[i]  # noise consistent with the clipped x0
        x_prev = self._sqrt_ab_prev[i] * x0_hat + self._dir[i] * eps  # Eq. 12: x0 part + "direction pointing to x_t"
        if self._sigma[i] == 0.0:
            return x_prev, x0_hat
        return x_prev + self._sigma[i] * _noise(x_t.shape, x_t, generator), x0_hat  # Eq. 12: random noise sigma_t eps_t


# The samplers `model.sampler.type` and --sampler choose from (core.registry.SAMPLERS): a name, its builder and spec.


@SAMPLERS.register("ddpm", help="full chain (reference)", uses_steps=False)
def _ddpm(schedule: NoiseSchedule, cfg: SamplerConfig, clip_denoised: bool) -> AncestralSampler:
    return AncestralSampler.full_chain(schedule, clip_denoised)


@SAMPLERS.register("respaced", help="DDPM over --steps steps")
def _respaced(schedule: NoiseSchedule, cfg: SamplerConfig, clip_denoised: bool) -> AncestralSampler:
    return AncestralSampler.respaced(schedule, cfg.steps, clip_denoised, cfg.start_step)


@SAMPLERS.register("ddim", help="DDIM", uses_eta=True)
def _ddim(schedule: NoiseSchedule, cfg: SamplerConfig, clip_denoised: bool) -> DDIMSampler:
    return DDIMSampler(schedule, cfg.steps, cfg.eta, clip_denoised, cfg.start_step)


def build_sampler(schedule: NoiseSchedule, cfg: SamplerConfig, clip_denoised: bool = True) -> Sampler:
    """The sampler of `cfg` on `schedule` (for sampling: the table of `model.beta_schedule.val`)."""
    spec = SAMPLERS.get(cfg.type)
    if spec.uses_steps and cfg.steps is None:
        raise ValueError(f"sampler type {cfg.type!r} needs steps")
    return spec.build(schedule, cfg, clip_denoised)


@torch.no_grad()
def sample_loop(net: NoiseNet, sampler: Sampler, condition: torch.Tensor, generator: torch.Generator, channels: int,
                *, continuous: bool = False, progress: bool = True, bounds: Bounds | None = None,
                start: torch.Tensor | None = None) -> torch.Tensor:
    """Sample from x_T ~ N(0, I) (drawn from `generator`; times `sampler.start_noise` when the chain starts from a
    zero signal at a lower step) along `sampler`'s kept steps, clipping x0 to `bounds` (B, channels, H, W each)
    instead of [-1, 1] when given. `start` (B, channels, H, W), only for a chain that starts at a lower step, is the
    clean signal it starts from instead of zero: x_S = gamma_S start + sqrt(1 - gamma_S^2) eps.

    `condition` (B, 9, H, W); its memory format is kept for x. Returns the result (B, channels, H, W), or with
    `continuous` (K, B, channels, H, W): x_T, about ten intermediate states, and the result last.
    """
    b, _, h, w = condition.shape
    x = _noise((b, channels, h, w), condition, generator)
    if sampler.start_noise != 1.0:
        x = x * sampler.start_noise
    if start is not None:
        if sampler.start_noise == 1.0:
            raise ValueError("a start signal needs a chain that starts at a lower step (start_step)")
        x = x + (1.0 - sampler.start_noise ** 2) ** 0.5 * start.to(x)
    levels = torch.tensor(sampler.noise_levels, dtype=torch.float32)[:, None].expand(-1, b).contiguous()
    levels = levels.to(condition.device)  # (n, B): one host-to-device copy before the loop
    n = len(sampler.timesteps)
    every = 1 | (n // 10)
    frames = [x]
    for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
        eps = net(condition, x, levels[i])
        x, _ = sampler.step(eps, i, x, generator, bounds)
        if continuous and (n - 1 - i) % every == 0:
            frames.append(x)
    return torch.stack(frames) if continuous else x
