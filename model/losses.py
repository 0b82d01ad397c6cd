"""Training losses of TFS-Diff.

- "psf" (paper Eq. 2-4, default): lambda1 * MSE(eps_pred, eps) + lambda2 * (1 - SSIM(x0_hat, x0)), where x0_hat is the
  clean image recovered from the predicted noise (clipped to [-1, 1] when `clip_denoised`), and SSIM is the Gaussian
  SSIM of Wang et al. (2004) (11x11 window, sigma 1.5, valid region) on images mapped to [0, 1].
- "mse": MSE(eps_pred, eps) alone: the paper's "w/o PSF" ablation (and SR3's l2 objective with mean reduction).
- "official": what the official code optimises: sum-reduced L1(eps, eps_pred) + the kornia<=0.5 SSIM loss
  mean(clamp(1 - SSIM, 0, 1) / 2) between the *target image* and the *predicted noise* (reflect padding,
  max_val 1 on [-1, 1] data). Kept for reproducing official runs; it is not what the paper describes.

Each is registered in `core.registry.LOSSES` by a builder whose parameters are the `model.loss` keys it reads (end of
this module); `model.loss.type` accepts exactly those names and `tests/test_registries.py` runs each one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from core.registry import LOSSES
from model.diffusion import TrainingTerms

LossFn = Callable[[TrainingTerms, torch.Tensor], dict[str, torch.Tensor]]


def gaussian_window(size: int, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, max_val: float = 1.0,
             padding: Literal["valid", "reflect"] = "valid") -> torch.Tensor:
    """Per-pixel SSIM (Wang et al., 2004, Eq. 13) of two (B, C, H, W) tensors, computed per channel."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"SSIM window {window_size} is larger than the image {tuple(a.shape[-2:])}")
    channels = a.shape[1]
    window = gaussian_window(window_size, dtype=a.dtype, device=a.device).expand(channels, 1, -1, -1)
    if padding == "reflect":
        pad = window_size // 2
        a, b = (F.pad(x, (pad, pad, pad, pad), mode="reflect") for x in (a, b))

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim_torch(img: torch.Tensor, ref: torch.Tensor, window_size: int = 11, max_val: float = 1.0) -> torch.Tensor:
    """Differentiable mean SSIM (Gaussian window of side window_size, sigma 1.5) of two (B, C, H, W) tensors in
    [0, max_val]; the SSIM term of the PSF loss."""
    return ssim_map(img, ref, window_size, max_val).mean()


@dataclass(frozen=True)
class PSFLoss:
    """lambda_mse * MSE(eps_pred, eps) + lambda_ssim * (1 - SSIM(x0_hat, x0)); both weights in (0, 1]."""

    lambda_mse: float = 1.0
    lambda_ssim: float = 0.1
    window_size: int = 11

    def __call__(self, terms: TrainingTerms, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        mse = F.mse_loss(terms.eps_pred, terms.noise, reduction="mean")
        ssim_value = ssim_torch((terms.x0_hat + 1) / 2, (x0 + 1) / 2, self.window_size)
        total = self.lambda_mse * mse + self.lambda_ssim * (1 - ssim_value)
        return {"loss": total, "mse": mse.detach(), "ssim": ssim_value.detach()}


def mse_loss(terms: TrainingTerms, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE(eps_pred, eps), mean-reduced: the "w/o PSF" ablation."""
    mse = F.mse_loss(terms.eps_pred, terms.noise, reduction="mean")
    return {"loss": mse, "mse": mse.detach()}


def official_loss(terms: TrainingTerms, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official code's loss: L1_sum(eps, eps_pred) + kornia SSIM loss(x0, eps_pred) (see module docstring)."""
    l1 = F.l1_loss(terms.eps_pred, terms.noise, reduction="sum")
    kornia_ssim = (torch.clamp(1 - ssim_map(x0, terms.eps_pred, 11, 1.0, padding="reflect"), 0, 1) / 2).mean()
    return {"loss": l1 + kornia_ssim, "l1_sum": l1.detach(), "ssim_loss": kornia_ssim.detach()}


# The losses `model.loss.type` chooses from (core.registry.LOSSES); a builder's parameters are the keys it reads.


@LOSSES.register("psf")
def _psf(lambda_mse: float, lambda_ssim: float, ssim_window: int) -> LossFn:
    return PSFLoss(lambda_mse, lambda_ssim, ssim_window)


@LOSSES.register("mse")
def _mse(lambda_mse: float) -> LossFn:  # the config accepts lambda_mse for "mse"; the MSE alone is not weighted
    return mse_loss


@LOSSES.register("official", ssim_window=11)
def _official() -> LossFn:
    return official_loss


def build_loss(kind: str, lambda_mse: float = 1.0, lambda_ssim: float = 0.1, window_size: int = 11) -> LossFn:
    """The loss selected by `model.loss.type` in the config."""
    try:
        spec = LOSSES.get(kind)
    except ValueError:
        *rest, last = map(repr, LOSSES.names())
        raise ValueError(f"unknown loss type {kind!r}; expected {', '.join(rest)} or {last}") from None
    values = {"lambda_mse": lambda_mse, "lambda_ssim": lambda_ssim, "ssim_window": window_size}
    return spec.build(**{key: values[key] for key in spec.keys})
