"""The image-fusion metrics of the TFS-Diff tables as pure functions on grey images, in two conventions.

Every metric here works on a **grey** float64 image with values 0..255: an 8-bit RGB image is converted with
OpenCV's ``COLOR_RGB2GRAY`` applied to the float32 image (``0.299 R + 0.587 G + 0.114 B``) and rounded
(``numpy.round``), as the CDDFuse evaluator reads images; see :func:`to_grey` (``core.grey``). (LPIPS, on RGB, is in
:mod:`metrics.lpips`.)

Argument order, everywhere: the image under test first. Full-reference metrics take ``(img, ref)`` (the fused image,
then the ground truth or one source); two-source metrics take ``(fused, a, b)``, as CDDFuse's ``Evaluator`` does;
no-reference metrics take the fused image.

Conventions (``convention=``, see ``docs/metrics.md``); only PSNR, SSIM and Qabf differ:

* ``"paper"`` (the default): PSNR with peak 255; SSIM as scikit-image's ``structural_similarity`` with
  data_range 255; Qabf with the textbook relative edge strength (1 where gA == gF > 0).
* ``"cddfuse"``: the CDDFuse evaluator (``utils/Evaluator.py``) exactly as its test script runs it: PSNR with peak
  max(F); SSIM as scikit-image 0.19.2 computes it for float input without data_range (data_range 2, the float
  dtype range -1..1), re-implemented in :func:`ssim` since current scikit-image refuses that call; Qabf with
  GAF = gF where gA == gF.

The two-source (dual-modal) forms of the full-reference metrics, :func:`mse_pair`, :func:`psnr_pair`,
:func:`ssim_pair` and :func:`viff_pair`, are CDDFuse's: MSE averaged over A and B, PSNR from that mean MSE, SSIM
and VIFF summed over A and B. Aggregation over three sources: :mod:`metrics.scoring`.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.ndimage import correlate1d, uniform_filter
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from core.grey import to_grey  # noqa: F401  (re-exported: the conversion of every metric here)

Convention = Literal["paper", "cddfuse"]
CONVENTIONS: tuple[Convention, ...] = ("paper", "cddfuse")
PEAK = 255.0


def check_convention(convention: str) -> Convention:
    """``convention`` itself, or ValueError naming the known conventions."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown metric convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention  # type: ignore[return-value]


def _pair(img: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if img.shape != ref.shape or img.ndim != 2:
        raise ValueError(f"metric inputs must be two (H, W) images of one shape, got {img.shape} and {ref.shape}")
    return img.astype(np.float64), ref.astype(np.float64)


def _triple(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fused, a = _pair(fused, a)
    _, b = _pair(fused, b)
    return fused, a, b


# ----------------------------------------------------------------------------------------------- full reference

def mse(img: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared error of two (H, W) grey images."""
    img, ref = _pair(img, ref)
    return float(np.mean((ref - img) ** 2))


def mae(img: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute error of two (H, W) grey images."""
    img, ref = _pair(img, ref)
    return float(np.mean(np.abs(ref - img)))


def rmse(img: np.ndarray, ref: np.ndarray) -> float:
    """Root mean squared error of two (H, W) grey images."""
    return math.sqrt(mse(img, ref))


def psnr_from_mse(error: float, peak: float) -> float:
    """10 log10(peak^2 / error) in dB; ``inf`` when error is 0, ``-inf`` when peak is 0 (and error is not)."""
    if error == 0:
        return float("inf")
    return float("-inf") if peak == 0 else 10.0 * math.log10(peak**2 / error)


def peak(img: np.ndarray, convention: Convention = "paper") -> float:
    """The PSNR peak of fused image ``img``: 255 (paper) or its maximum grey level (cddfuse)."""
    return PEAK if check_convention(convention) == "paper" else float(np.max(img))


def psnr(img: np.ndarray, ref: np.ndarray, convention: Convention = "paper") -> float:
    """PSNR in dB of two (H, W) grey images, peak 255 (paper) or max(img) (cddfuse); ``inf`` when identical."""
    return psnr_from_mse(mse(img, ref), peak(img, convention))


def _ssim_skimage_0_19_float(img: np.ndarray, ref: np.ndarray) -> float:
    """scikit-image 0.19.2 ``structural_similarity(img, ref)`` for float images without data_range.

    That version takes data_range from the float dtype's range -1..1, i.e. 2: C1 = (0.01 * 2)^2,
    C2 = (0.03 * 2)^2; 7x7 uniform window (``uniform_filter``, mode 'reflect'), sample covariance (49 / 48), mean of
    the SSIM map without its 3-pixel border.
    """
    win, data_range = 7, 2.0
    cov_norm = win * win / (win * win - 1)
    ux, uy = uniform_filter(img, size=win), uniform_filter(ref, size=win)
    uxx, uyy = uniform_filter(img * img, size=win), uniform_filter(ref * ref, size=win)
    uxy = uniform_filter(img * ref, size=win)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def ssim(img: np.ndarray, ref: np.ndarray, convention: Convention = "paper") -> float:
    """SSIM of two (H, W) grey images (7x7 uniform window): data_range 255 (paper) or 2 (cddfuse, see module doc)."""
    img, ref = _pair(img, ref)
    if min(img.shape) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {img.shape}")
    if check_convention(convention) == "paper":
        return float(structural_similarity(ref, img, data_range=PEAK))
    return _ssim_skimage_0_19_float(img, ref)


def _gaussian_taps(size: int) -> np.ndarray:
    """1-D taps of MATLAB's fspecial('gaussian', size, size / 5); their outer product is the 2-D window.

    MATLAB zeroes 2-D entries below eps * max; for the sizes used here (3..17) none is, so the window is separable.
    """
    half = (size - 1) / 2.0
    x = np.arange(-half, half + 1)
    taps = np.exp(-(x * x) / (2.0 * (size / 5.0) ** 2))
    return taps / taps.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the 'valid' part (no border effects): (H, W) -> (H-n+1, W-n+1)."""
    k = len(taps) // 2
    out = correlate1d(correlate1d(img, taps, axis=0, mode="nearest"), taps, axis=1, mode="nearest")
    return out[k:out.shape[0] - k, k:out.shape[1] - k]


def _viff_scale_terms(ref: np.ndarray, dist: np.ndarray, taps: np.ndarray) -> tuple[float, float]:
    """(information kept, information in the reference) at one scale of VIFF, sigma_n^2 = 2."""
    noise, eps = 2.0, 1e-10

    def local_mean(x: np.ndarray) -> np.ndarray:
        return _filter_valid(x, taps)

    mu_r, mu_d = local_mean(ref), local_mean(dist)
    var_r = np.maximum(local_mean(ref * ref) - mu_r * mu_r, 0.0)
    var_d = np.maximum(local_mean(dist * dist) - mu_d * mu_d, 0.0)
    cov = local_mean(ref * dist) - mu_r * mu_d
    gain = cov / (var_r + eps)
    var_v = var_d - gain * cov
    flat_ref = var_r < eps
    gain[flat_ref], var_v[flat_ref], var_r[flat_ref] = 0.0, var_d[flat_ref], 0.0
    flat_dist = var_d < eps
    gain[flat_dist], var_v[flat_dist] = 0.0, 0.0
    negative = gain < 0
    var_v[negative], gain[negative] = var_d[negative], 0.0
    var_v = np.maximum(var_v, eps)
    kept = float(np.sum(np.log10(1.0 + gain * gain * var_r / (var_v + noise))))
    total = float(np.sum(np.log10(1.0 + var_r / noise)))
    return kept, total


def viff(img: np.ndarray, ref: np.ndarray) -> float:
    """Fusion VIF (Han et al. 2013) of ``img`` (the fused image) w.r.t. ``ref`` (a source or the ground truth).

    4 scales; scale s (1..4) uses a Gaussian window of side 2**(5 - s) + 1, sigma = side / 5; from scale 2 on both
    images are low-passed with that window ('valid') and subsampled by 2. Returns 1.0 when undefined (0 / 0).
    """
    dist, ref = _pair(img, ref)
    kept = total = 0.0
    for scale in range(1, 5):
        taps = _gaussian_taps(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = _filter_valid(ref, taps)[::2, ::2]
            dist = _filter_valid(dist, taps)[::2, ::2]
        k, t = _viff_scale_terms(ref, dist, taps)
        kept, total = kept + k, total + t
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.float64(kept) / np.float64(total)
    return 1.0 if math.isnan(value) else float(value)


# ----------------------------------------------------------------------------------------------- no reference

def _single(img: np.ndarray) -> np.ndarray:
    if img.ndim != 2:
        raise ValueError(f"metric input must be an (H, W) grey image, got shape {img.shape}")
    return img.astype(np.float64)


def average_gradient(img: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), central differences inside, one-sided differences at the borders."""
    img = _single(img)
    gx, gy = np.gradient(img, axis=1), np.gradient(img, axis=0)
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2.0)))


def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of the rounded grey levels."""
    levels = np.clip(np.round(_single(img)), 0, 255).astype(np.int64).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def standard_deviation(img: np.ndarray) -> float:
    """SD: population standard deviation of the grey levels."""
    return float(np.std(_single(img)))


def spatial_frequency(img: np.ndarray) -> float:
    """SF: sqrt(mean(row differences^2) + mean(column differences^2)), forward differences."""
    img = _single(img)
    return float(np.sqrt(np.mean(np.diff(img, axis=1) ** 2) + np.mean(np.diff(img, axis=0) ** 2)))


# ----------------------------------------------------------------------------------------------- two sources

def mutual_information(img: np.ndarray, ref: np.ndarray) -> float:
    """MI(img, ref) in nats from the 256x256-bin joint histogram of the rounded grey levels."""
    img, ref = _pair(img, ref)
    ia = np.clip(np.round(img), 0, 255).astype(np.int64).ravel()
    ib = np.clip(np.round(ref), 0, 255).astype(np.int64).ravel()
    joint = np.bincount(ia * 256 + ib, minlength=256 * 256).reshape(256, 256) / ia.size
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])))


def mi_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Two-source MI: MI(F, A) + MI(F, B), nats."""
    return mutual_information(fused, a) + mutual_information(fused, b)


def mse_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """CDDFuse's two-source MSE: (MSE(F, A) + MSE(F, B)) / 2."""
    return (mse(fused, a) + mse(fused, b)) / 2.0


def psnr_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray, convention: Convention = "paper") -> float:
    """CDDFuse's two-source PSNR: 10 log10(peak^2 / :func:`mse_pair`), peak as in :func:`peak`."""
    return psnr_from_mse(mse_pair(fused, a, b), peak(fused, convention))


def ssim_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray, convention: Convention = "paper") -> float:
    """CDDFuse's two-source SSIM: SSIM(F, A) + SSIM(F, B) (a sum: up to 2)."""
    return ssim(fused, a, convention) + ssim(fused, b, convention)


def viff_pair(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """CDDFuse's two-source VIFF: VIFF(A -> F) + VIFF(B -> F) (a sum: up to about 2)."""
    return viff(fused, a) + viff(fused, b)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edge strength, edge orientation) with 3x3 Sobel kernels and zero padding; orientation pi/2 where Gx = 0."""
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
    gx, gy = convolve2d(img, kx, mode="same"), convolve2d(img, ky, mode="same")
    strength = np.sqrt(gx * gx + gy * gy)
    angle = np.full_like(img, math.pi / 2)
    nonzero = gx != 0
    angle[nonzero] = np.arctan(gy[nonzero] / gx[nonzero])
    return strength, angle


def _relative_strength(g_src: np.ndarray, g_f: np.ndarray, convention: Convention) -> np.ndarray:
    """G^{AF} = min(gA, gF) / max(gA, gF); where gA == gF: 1 (paper; 0 where both are 0) or gF (cddfuse)."""
    low, high = np.minimum(g_src, g_f), np.maximum(g_src, g_f)
    rel = np.divide(low, high, out=np.zeros_like(high), where=high > 0)
    if convention == "cddfuse":
        equal = g_src == g_f
        rel[equal] = g_f[equal]
    return rel


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray,
                       convention: Convention) -> np.ndarray:
    """Q^{AF} per pixel: Q_g(G^{AF}) * Q_a(A^{AF}) (Tg 0.9994, kg -15, Dg 0.5; Ta 0.9879, ka -22, Da 0.8).

    Where gA == gF > 0 the paper convention's G^{AF} = 1 gives Q_g = 0.99885, while CDDFuse's G^{AF} = gF gives
    Q_g = 0.99885 for gF = 1 and 0.9994 (to 1e-9) for gF >= 2, the usual case on integer grey images. So Q^{AF}
    differs by up to 5.5e-4 at such pixels, and Qabf by up to 2.2e-4 on max-rule fusions of real scans, where
    such pixels are common (1.5e-4 on the three Harvard cases of the tests); see docs/metrics.md.
    """
    rel = _relative_strength(g_src, g_f, convention)
    rel_angle = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (rel - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (rel_angle - 0.8)))
    return q_g * q_a


def qabf(fused: np.ndarray, a: np.ndarray, b: np.ndarray, convention: Convention = "paper") -> float:
    """Xydeas-Petrovic Q^{AB/F}: edge preservation of A and B in F, weighted by the source edge strengths.

    The conventions differ only where a source's Sobel magnitude equals the fused image's (see
    :func:`_edge_preservation`).
    """
    convention = check_convention(convention)
    fused, a, b = _triple(fused, a, b)
    (g_a, t_a), (g_b, t_b), (g_f, t_f) = _sobel(a), _sobel(b), _sobel(fused)
    num = np.sum(_edge_preservation(g_a, t_a, g_f, t_f, convention) * g_a
                 + _edge_preservation(g_b, t_b, g_f, t_f, convention) * g_b)
    return float(num / np.sum(g_a + g_b))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either image is constant (the CDDFuse evaluator gives NaN there)."""
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / norm) if norm > 0 else 0.0


def scd(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Sum of the correlations of differences: corr(A, F - B) + corr(B, F - A)."""
    fused, a, b = _triple(fused, a, b)
    return _corr(a, fused - b) + _corr(b, fused - a)


def cc(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean correlation coefficient (corr(A, F) + corr(B, F)) / 2."""
    fused, a, b = _triple(fused, a, b)
    return (_corr(a, fused) + _corr(b, fused)) / 2.0
