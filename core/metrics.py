"""Image conversion and the metrics logged by validation: RGB PSNR / SSIM, and the grey PSNR / SSIM of `eval.py`.

Metrics are pure functions with an explicit data range and colour space, the image under test first:

* :func:`psnr_rgb`, :func:`ssim_rgb`: on the 8-bit RGB image, PSNR with peak 255 over all channels, SSIM as
  scikit-image's ``structural_similarity`` (7x7 uniform window, data_range 255) averaged over the three channels.
* :func:`grey_psnr_ssim`: on the grey image (:func:`core.fusion_metrics.to_grey`), exactly what
  ``eval.py --reference gt`` reports for PSNR and SSIM in the chosen convention.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from core.fusion_metrics import Convention, psnr, ssim, to_grey
from core.scoring import metric_label

PSNR_RGB_LABEL = "PSNR (RGB, peak 255)"
SSIM_RGB_LABEL = "SSIM (RGB, data_range 255)"
PSNR_GREY_LABEL = metric_label("PSNR", "paper")  # "PSNR (grey, peak 255)", the label of grey_psnr_ssim's PSNR
SSIM_GREY_LABEL = metric_label("SSIM", "paper")  # "SSIM (grey, data_range 255)"


def tensor2img(tensor: torch.Tensor, min_max: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(3, H, W) or (H, W) float tensor in `min_max` -> (H, W, 3) or (H, W) uint8 array (rounded, clipped)."""
    low, high = min_max
    x = tensor.detach().float().cpu().clamp(low, high)
    x = (x - low) / (high - low) * 255.0
    arr = x.round().to(torch.uint8).numpy()
    return np.transpose(arr, (1, 2, 0)) if arr.ndim == 3 else arr


def _check_rgb(img: np.ndarray, ref: np.ndarray) -> None:
    if img.shape != ref.shape:
        raise ValueError(f"metric inputs differ in shape: {img.shape} vs {ref.shape}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"RGB metrics expect (H, W, 3) images, got shape {img.shape}")
    if img.dtype != np.uint8 or ref.dtype != np.uint8:
        raise TypeError(f"metrics expect uint8 images, got {img.dtype} and {ref.dtype}")


def psnr_rgb(img: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of two (H, W, 3) uint8 RGB images, peak 255, over all channels; `inf` for identical images."""
    _check_rgb(img, ref)
    if np.array_equal(img, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, img, data_range=255))


def ssim_rgb(img: np.ndarray, ref: np.ndarray) -> float:
    """SSIM (scikit-image, data_range 255) of two (H, W, 3) uint8 RGB images, the mean over the channels."""
    _check_rgb(img, ref)
    return float(structural_similarity(ref, img, data_range=255, channel_axis=-1))


def grey_psnr_ssim(img: np.ndarray, ref: np.ndarray, convention: Convention = "paper") -> tuple[float, float]:
    """(PSNR in dB, SSIM) of the grey images of two (H, W, 3) uint8 RGB images, as `eval.py --reference gt` gives.

    Paper convention: "PSNR (grey, peak 255)" and "SSIM (grey, data_range 255)"; see core.fusion_metrics.
    """
    _check_rgb(img, ref)
    img_grey, ref_grey = to_grey(img), to_grey(ref)
    return psnr(img_grey, ref_grey, convention), ssim(img_grey, ref_grey, convention)
