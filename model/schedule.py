"""Noise schedules: the SR3 beta schedules and a frozen float64 table of the quantities derived from them.

`NoiseSchedule` is what every consumer of a schedule reads: the diffusion process (training noise levels and the
float32 buffers of the official checkpoint layout) and the samplers (`model.samplers`), which are built from a
table and never see the network or the diffusion module, the way diffusers' schedulers never see the model.
Validation and inference build their table from `model.beta_schedule.val`; nothing swaps schedules inside a model.

All arrays are float64, read-only, indexed by the time index t = 0..T-1 (DDPM's t = 1..T), except
`sqrt_alphas_cumprod_prev`, which has T + 1 entries: sqrt(alpha_bar_{t-1}) for t = 0..T with alpha_bar_{-1} = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


class ScheduleSpec(Protocol):
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


def _frozen(values: np.ndarray) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The derived quantities of one beta schedule (DDPM, Ho et al. 2020, Eq. 4, 6-7), float64 and read-only."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray  # beta~_t (Eq. 7)
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray  # coefficient of x0 in the posterior mean (Eq. 7)
    posterior_mean_coef2: np.ndarray  # coefficient of x_t
    sqrt_alphas_cumprod_prev: np.ndarray  # T + 1 entries: the continuous noise levels' interval ends

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> NoiseSchedule:
        betas = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        return cls(
            betas=_frozen(betas),
            alphas_cumprod=_frozen(alphas_cumprod),
            alphas_cumprod_prev=_frozen(alphas_cumprod_prev),
            sqrt_alphas_cumprod=_frozen(np.sqrt(alphas_cumprod)),
            sqrt_one_minus_alphas_cumprod=_frozen(np.sqrt(1.0 - alphas_cumprod)),
            log_one_minus_alphas_cumprod=_frozen(np.log(1.0 - alphas_cumprod)),
            sqrt_recip_alphas_cumprod=_frozen(np.sqrt(1.0 / alphas_cumprod)),
            sqrt_recipm1_alphas_cumprod=_frozen(np.sqrt(1.0 / alphas_cumprod - 1)),
            posterior_variance=_frozen(posterior_variance),
            posterior_log_variance_clipped=_frozen(np.log(np.maximum(posterior_variance, 1e-20))),
            posterior_mean_coef1=_frozen(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
            posterior_mean_coef2=_frozen((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
            sqrt_alphas_cumprod_prev=_frozen(np.sqrt(np.append(1.0, alphas_cumprod))),
        )

    @classmethod
    def from_spec(cls, spec: ScheduleSpec) -> NoiseSchedule:
        """The table of a `model.beta_schedule.{train,val}` entry."""
        return cls.from_betas(make_beta_schedule(spec.schedule, spec.n_timestep, spec.linear_start,
                                                 spec.linear_end))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def float32_buffers(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The official schedule buffers (`SCHEDULE_BUFFERS`), each cast once to float32 (SR3 semantics)."""
        return {name: torch.tensor(getattr(self, name), dtype=torch.float32, device=device)
                for name in SCHEDULE_BUFFERS}
