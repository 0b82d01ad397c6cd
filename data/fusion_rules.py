"""The ground-truth tri-modal fusion rule(s) of the embedded dataset, kept in one place.

Rule ``"laplacian_ycbcr"`` (``laplacian_ycbcr``), applied to three HxWx3 uint8 RGB sources of equal shape:

1. Each source is converted to YCbCr with ITU-R BT.601 full range (JPEG / JFIF / PIL), in float32:
   ``Y = 0.299 R + 0.587 G + 0.114 B``,
   ``Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B``,
   ``Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B``.
2. The three luminance channels are fused with a Laplacian pyramid built with OpenCV ``pyrDown`` / ``pyrUp``
   (5-tap Gaussian, reflect-101 borders, explicit ``dstsize`` so any H, W works). A pyramid of ``n`` levels has
   ``n - 1`` detail (band-pass) levels and one base (low-pass) level; ``n = min(levels, n_max)`` where ``n_max`` is
   the largest count whose coarsest level is still at least 4 px on its shorter side. Base level: mean of the
   three sources. Detail levels: per pixel, the coefficient of largest absolute value (ties: first source).
   The fused pyramid is collapsed (``pyrUp`` + add) to the fused Y.
3. Chroma (Cb, Cr) is copied whole from the source with the largest mean chroma magnitude
   ``mean(|Cb - 128| + |Cr - 128|)`` -- the pseudo-colour functional image (ties: first source).
4. Back to RGB with the inverse BT.601 full-range transform
   (``R = Y + 1.402 (Cr-128)``, ``G = Y - 0.344136 (Cb-128) - 0.714136 (Cr-128)``, ``B = Y + 1.772 (Cb-128)``),
   clipped to 0..255 and rounded half-to-even (``numpy.rint``) to uint8.

Baseline rules (for the reference rows of the metric tables). Each fuses the three BT.601 luminance channels as
below, copies chroma from the most colourful source exactly as in step 3, and converts back as in step 4:

* ``"average"``: Y = mean of the three Y.
* ``"maximum"``: Y = per-pixel maximum of the three Y.
* ``"pca"``: Y = sum_i w_i Y_i with ``w = |v| / sum |v|``, ``v`` the principal eigenvector of the 3x3 covariance
  of the three flattened Y channels (equal weights when all three are constant).
* ``"dwt"``: orthonormal 2-D Haar wavelet transform of each Y, ``levels`` levels (default 3; fewer when a level
  would be narrower than 2 px); approximation: mean of the three, detail bands: the coefficient of largest
  absolute value (ties: first source); inverse transform. Odd sizes are padded by edge replication at each level
  and cropped back.

Each rule is registered by name in `core.registry.FUSION_METHODS` where it is defined (a method without weights);
:data:`FUSION_RULES` is the registry's view of all methods without weights, which `model.diffusion.residual_base`,
``infer.py --method`` and ``prepare_data.py --gt-fusion`` accept and the tables list as baselines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Callable, Sequence

import cv2
import numpy as np

from core.registry import FUSION_METHODS, WEIGHT_FREE_FUSION

__all__ = ["FusionRule", "laplacian_ycbcr", "average", "maximum", "pca", "dwt", "haar_dwt2", "haar_idwt2",
           "FUSION_RULES", "fuse", "rgb_to_ycbcr", "ycbcr_to_rgb"]

FusionRule = Callable[[Sequence[np.ndarray]], np.ndarray]

_MIN_COARSE_SIDE = 4
_MIN_SIDE = 8


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (0..255, any dtype) -> HxWx3 float32 YCbCr, BT.601 full range."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1).astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """HxWx3 float YCbCr (BT.601 full range) -> HxWx3 uint8 RGB (clipped, rounded)."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    rgb = np.stack([r, g, b], axis=-1)
    return np.rint(np.clip(rgb, 0.0, 255.0)).astype(np.uint8)


def _pyramid_levels(height: int, width: int, levels: int) -> int:
    """Number of levels actually used: at most ``levels``, coarsest shorter side >= 4 px."""
    side, count = min(height, width), 1
    while count < levels and (side + 1) // 2 >= _MIN_COARSE_SIDE:
        side = (side + 1) // 2
        count += 1
    return count


def _laplacian_pyramid(img: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """float32 HxW image -> [detail_0 (finest), ..., detail_{n-2}, base] (n_levels arrays)."""
    pyramid: list[np.ndarray] = []
    current = img
    for _ in range(n_levels - 1):
        down = cv2.pyrDown(current)
        up = cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - up)
        current = down
    pyramid.append(current)
    return pyramid


def _collapse(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of ``_laplacian_pyramid``."""
    current = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        current = cv2.pyrUp(current, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return current


def _check_sources(sources: Sequence[np.ndarray]) -> None:
    """Raise ValueError unless ``sources`` are three equal-shape HxWx3 uint8 arrays with H, W >= 8."""
    if len(sources) != 3:
        raise ValueError(f"fusion expects exactly 3 sources, got {len(sources)}")
    for index, src in enumerate(sources):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            raise ValueError(f"fusion source {index} must be HxWx3 uint8, got shape {src.shape} dtype {src.dtype}")
    shapes = [tuple(src.shape) for src in sources]
    if len(set(shapes)) != 1:
        raise ValueError(f"fusion sources must share one shape, got shapes {shapes}")
    if min(shapes[0][:2]) < _MIN_SIDE:
        raise ValueError(f"fusion sources must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {shapes[0][:2]}")


@FUSION_METHODS.register("laplacian_ycbcr")
def laplacian_ycbcr(sources: Sequence[np.ndarray], levels: int = 4) -> np.ndarray:
    """Fuse three HxWx3 uint8 RGB images (see the module docstring for the exact rule).

    Args:
        sources: three HxWx3 uint8 RGB arrays of equal shape, H, W >= 8.
        levels: maximum number of pyramid levels (base included), >= 1.

    Returns:
        HxWx3 uint8 RGB fused image.
    """
    _check_sources(sources)
    if levels < 1:
        raise ValueError(f"laplacian_ycbcr: levels must be >= 1, got {levels}")
    height, width = sources[0].shape[:2]
    n_levels = _pyramid_levels(height, width, levels)
    ycc = [rgb_to_ycbcr(src) for src in sources]
    pyramids = [_laplacian_pyramid(np.ascontiguousarray(img[..., 0]), n_levels) for img in ycc]
    fused: list[np.ndarray] = []
    for level in range(n_levels - 1):
        stack = np.stack([pyr[level] for pyr in pyramids])
        pick = np.argmax(np.abs(stack), axis=0)
        fused.append(np.take_along_axis(stack, pick[None], axis=0)[0])
    fused.append(np.mean(np.stack([pyr[-1] for pyr in pyramids]), axis=0, dtype=np.float32))
    chroma_magnitude = [float(np.mean(np.abs(img[..., 1:] - 128.0).sum(axis=-1))) for img in ycc]
    chroma_source = ycc[int(np.argmax(chroma_magnitude))]
    out = np.empty_like(chroma_source)
    out[..., 0] = _collapse(fused)
    out[..., 1:] = chroma_source[..., 1:]
    return ycbcr_to_rgb(out)


def _fuse_luminance(sources: Sequence[np.ndarray], fuse_y: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Fuse the Y channels with ``fuse_y``, take chroma from the most colourful source, back to uint8 RGB."""
    _check_sources(sources)
    ycc = [rgb_to_ycbcr(src) for src in sources]
    chroma_magnitude = [float(np.mean(np.abs(img[..., 1:] - 128.0).sum(axis=-1))) for img in ycc]
    out = ycc[int(np.argmax(chroma_magnitude))].copy()
    out[..., 0] = fuse_y([img[..., 0].astype(np.float64) for img in ycc])
    return ycbcr_to_rgb(out)


@FUSION_METHODS.register("average")
def average(sources: Sequence[np.ndarray]) -> np.ndarray:
    """Three HxWx3 uint8 RGB sources -> HxWx3 uint8: mean luminance, chroma of the most colourful source."""
    return _fuse_luminance(sources, lambda ys: np.mean(ys, axis=0))


@FUSION_METHODS.register("maximum")
def maximum(sources: Sequence[np.ndarray]) -> np.ndarray:
    """Three HxWx3 uint8 RGB sources -> HxWx3 uint8: per-pixel max luminance, chroma of the most colourful source."""
    return _fuse_luminance(sources, lambda ys: np.max(ys, axis=0))


def _pca_weights(ys: list[np.ndarray]) -> np.ndarray:
    """Weights |v| / sum |v| of the principal eigenvector v of the covariance of the flattened channels."""
    cov = np.cov(np.stack([y.ravel() for y in ys]))
    if not np.any(cov):
        return np.full(len(ys), 1.0 / len(ys))
    _, vectors = np.linalg.eigh(cov)
    principal = np.abs(vectors[:, -1])
    return principal / principal.sum()


@FUSION_METHODS.register("pca")
def pca(sources: Sequence[np.ndarray]) -> np.ndarray:
    """Three HxWx3 uint8 RGB sources -> HxWx3 uint8: PCA-weighted luminance, chroma of the most colourful source."""
    return _fuse_luminance(sources, lambda ys: np.tensordot(_pca_weights(ys), np.stack(ys), axes=1))


def haar_dwt2(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One level of the orthonormal 2-D Haar DWT of an (H, W) float image with even H, W.

    Returns (approximation, horizontal, vertical, diagonal detail), each (H/2, W/2).
    """
    a, b = img[0::2, 0::2], img[0::2, 1::2]
    c, d = img[1::2, 0::2], img[1::2, 1::2]
    return (a + b + c + d) / 2.0, (a + b - c - d) / 2.0, (a - b + c - d) / 2.0, (a - b - c + d) / 2.0


def haar_idwt2(ll: np.ndarray, lh: np.ndarray, hl: np.ndarray, hh: np.ndarray) -> np.ndarray:
    """Inverse of :func:`haar_dwt2`: four (h, w) bands -> (2h, 2w) image."""
    out = np.empty((2 * ll.shape[0], 2 * ll.shape[1]), dtype=np.float64)
    out[0::2, 0::2] = (ll + lh + hl + hh) / 2.0
    out[0::2, 1::2] = (ll + lh - hl - hh) / 2.0
    out[1::2, 0::2] = (ll - lh + hl - hh) / 2.0
    out[1::2, 1::2] = (ll - lh - hl + hh) / 2.0
    return out


def _pad_even(img: np.ndarray) -> np.ndarray:
    return np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2)), mode="edge")


def _dwt_fuse(ys: list[np.ndarray], levels: int) -> np.ndarray:
    """Recursive Haar fusion of equal-shape (H, W) channels: mean approximation, max-abs details."""
    height, width = ys[0].shape
    if levels == 0 or min(height, width) < 4:
        return np.mean(ys, axis=0)
    bands = [haar_dwt2(_pad_even(y)) for y in ys]
    details = []
    for k in (1, 2, 3):
        stack = np.stack([band[k] for band in bands])
        pick = np.argmax(np.abs(stack), axis=0)
        details.append(np.take_along_axis(stack, pick[None], axis=0)[0])
    approximation = _dwt_fuse([band[0] for band in bands], levels - 1)
    return haar_idwt2(approximation, *details)[:height, :width]


@FUSION_METHODS.register("dwt")
def dwt(sources: Sequence[np.ndarray], levels: int = 3) -> np.ndarray:
    """Three HxWx3 uint8 RGB sources -> HxWx3 uint8: Haar-DWT luminance fusion (see the module docstring)."""
    if levels < 1:
        raise ValueError(f"dwt: levels must be >= 1, got {levels}")
    return _fuse_luminance(sources, lambda ys: _dwt_fuse(ys, levels))


class _WeightFreeRules(Mapping[str, FusionRule]):
    """name -> fuse(sources) of every fusion method without weights, in registration order (a live view of
    `core.registry.FUSION_METHODS`, so a rule registered in another module appears here too)."""

    def __getitem__(self, name: str) -> FusionRule:
        if name not in WEIGHT_FREE_FUSION.names():
            raise KeyError(name)
        return FUSION_METHODS.get(name).fuse

    def __iter__(self) -> Iterator[str]:
        return iter(WEIGHT_FREE_FUSION.names())

    def __len__(self) -> int:
        return len(WEIGHT_FREE_FUSION.names())

    def __repr__(self) -> str:
        return repr(dict(self))


FUSION_RULES: Mapping[str, FusionRule] = _WeightFreeRules()


def fuse(name: str, sources: Sequence[np.ndarray]) -> np.ndarray:
    """Apply the fusion rule registered as ``name`` to three HxWx3 uint8 RGB sources -> HxWx3 uint8."""
    if name not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {name!r}; known rules: {sorted(FUSION_RULES)}")
    return FUSION_RULES[name](sources)
