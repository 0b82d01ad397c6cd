"""Image conversion and the two metrics reported during validation (PSNR, SSIM), both on 8-bit RGB images.

Metrics are pure functions with an explicit data range: PSNR with peak 255, SSIM as scikit-image's
`structural_similarity` (Gaussian-free 7x7 window, data_range 255) averaged over the three colour channels.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def tensor2img(tensor: torch.Tensor, min_max: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(3, H, W) or (H, W) float tensor in `min_max` -> (H, W, 3) or (H, W) uint8 array (rounded, clipped)."""
    low, high = min_max
    x = tensor.detach().float().cpu().clamp(low, high)
    x = (x - low) / (high - low) * 255.0
    arr = x.round().to(torch.uint8).numpy()
    return np.transpose(arr, (1, 2, 0)) if arr.ndim == 3 else arr


def _check(img: np.ndarray, ref: np.ndarray) -> None:
    if img.shape != ref.shape:
        raise ValueError(f"metric inputs differ in shape: {img.shape} vs {ref.shape}")
    if img.dtype != np.uint8 or ref.dtype != np.uint8:
        raise TypeError(f"metrics expect uint8 images, got {img.dtype} and {ref.dtype}")


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB with peak 255; `inf` for identical images."""
    _check(img, ref)
    if np.array_equal(img, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, img, data_range=255))


def ssim(img: np.ndarray, ref: np.ndarray) -> float:
    """SSIM (scikit-image, data_range 255), over all channels of an (H, W, 3) image or one (H, W) image."""
    _check(img, ref)
    channel_axis = -1 if img.ndim == 3 else None
    return float(structural_similarity(ref, img, data_range=255, channel_axis=channel_axis))
