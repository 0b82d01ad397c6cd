"""The grey image of an RGB image, as the CDDFuse evaluator reads images: OpenCV's ``COLOR_RGB2GRAY`` applied to the
float32 image (``0.299 R + 0.587 G + 0.114 B``, ITU-R BT.601) and rounded (``numpy.round``).

Every grey-image metric (``metrics.fusion``, which re-exports :func:`to_grey`) and the grey NIfTI output of volume
fusion (``data.volume_io``) use it; it lives in the core layer so that ``data/`` needs nothing of ``metrics/``.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["to_grey"]


def to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) grey image, values 0..255 -> (H, W) float64 grey, rounded to integer levels."""
    if img.ndim == 2:
        return np.round(img.astype(np.float64))
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"to_grey expects an (H, W) or (H, W, 3) image, got shape {img.shape}")
    grey = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.round(grey).astype(np.float64)
