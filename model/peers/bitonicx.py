"""BitonicX (Jie, Li, Zhou et al., "Tri-modal medical image fusion and denoising based on bitonicX filtering", IEEE
Trans. Instrum. Meas. 2023; the TFS-Diff paper's "BitonicX" row), written from the paper and the authors' released
MATLAB + C++ code (github JEI981214/Tri-modal-bitonicX-based, commit c1d2686; free for research use; its bitonic
filter, G. Treece's xbitonic2 v1.03, is BSD 3-Clause) and pinned to golden outputs of that code run in GNU Octave.
A hand-crafted method: no weights (`WEIGHTS = None`). Everything is float64 and vectorised (numpy/scipy; the
anisotropic filter's offset loop uses in-place torch CPU kernels on one thread): about 10 s of one CPU core per
256x256 triplet, against 143-277 s for the authors' code in Octave, with the same result to ~1e-12.

Bitonic filter `xbitonic(X)` (the authors call `xbitonic2(X, 3)`; X a float image in [0, 1] units). The 3 is the
noise THRESHOLD t (not a scale): t = 3 exceeds the data range (1 for doubles), so corner detection is off, and the
automatic filter half-length round(2.5 + 2 log2(t / 0.02)) = 17 is clipped to f = 15 (31x31 masks); gf = 1.2 f = 18,
alpha = 0.6, centile 8:

1. structure tensor (`_structensor`): Sobel gradients ([1 2 1]/4 x [-1 0 1]/2, replicated edges), the tensor
   smoothed by a separable Gaussian exp(-x^2 / (gf/2)^2) of half-length 18 (replicated edges); orientation
   (atan2(Txy, Txx - Tyy) + pi)/2 and anisotropy 1 - G(l2)/(T1 + T2), where the small eigenvalue l2 = T1 - T2 is
   smoothed by the 73-tap Gaussian of half-length 36 ALONG THE COLUMN-MAJOR LIST of the pixels with T1 > 0 (the
   authors' code smooths `X(n)`, a vector, so the smoothing runs down each column and wraps between columns);
2. anisotropic smoothing (`_anisotropic`, the C++ anisotropic2_mex): for all pixel pairs within a 37x37 window
   (clipped at the borders) weight exp(-(d/9)^2) / ((1 + k_p |dy cos a_p - dx sin a_p|)(1 + k_q |...|)), with
   k = min(anis^2 / alpha^2, 1.2) and a the orientation turned into the C++ frame (mod(3 pi/2 - dir, pi)), pairs
   whose values differ by t' or more excluded (t' = 3t for the guide, 1.4t for the errors: never reached on
   [0, 1]-range data), plus weight 1 for the pixel itself; normalised sum;
3. ranked opening and closing with locally adaptive masks (`_rank_open_close`, the C++ xrankopen2, double
   version): the mask of p holds the pixels q of its 31x31 window (clipped) whose smoothed guide lies within
   +-(t / dm2) tfact of p's and whose value lies within +-t tfact of p's (t / dm2 = 0.1473 and tfact = 1.6 on
   [0, 1]-range data: the guide band is +-0.2356), plus p itself; with P pixels in the mask, rank
   r = round(0.08 (P - 1)) (at least 1 when P > 3). Forward: erosion = r-th smallest, dilation = r-th largest of
   the mask. Inverse: the opening at q is the r(n)-th largest of the erosions of the n masks containing q, but not
   below q's own erosion; the closing likewise (r(n)-th smallest of the dilations, not above q's own);
4. the open/close errors A - open and close - A smoothed as in 2; X = (|Eo|^3 (close - Ec) + |Ec|^3 (open + Eo)) /
   (|Eo|^3 + |Ec|^3) (0.5 / 0.5 where both are 0).

Fusion, inputs (anatomical A, MR-T2 G, functional B), A and G grey by Octave's rgb2gray (R for R = G = B), /255:

- stage 1 (A with G): AL = xbitonic(A), AH = A - AL (likewise G). F1: the detail with the larger PA-PCNN firing
  count (110 iterations, 3x3 linking [.5 1 .5; 1 0 1; .5 1 .5]) on the multi-scale morphological gradient of |AH|
  (MATLAB's strel('disk', 3) = 5x5 square, /3); PCNN parameters from std2, Otsu (graythresh on the 256-bin
  histogram of im2uint8, Octave's tie rule) and max of |AH|; ties go to A. ALL = xbitonic(AL): F2 = max(ALL, GLL).
  AHH = AL - ALL: F3 = AHH where the CNP firing count (110 iterations, 7x7 inverse-distance linking, threshold
  0.3 before the first firing and 1 after) of |AHH| >= that of |GHH|, after a 19x19 majority filter (symmetric
  padding, >= 181 ones). Step-1 image M = F1 + F2 + F3.
- stage 2 (M with the functional image): the functional RGB / 255 in YUV ([0.299 0.587 0.114; -0.147 -0.289 0.436;
  0.615 -0.515 -0.100], its inverse back). ML = xbitonic(M), BL = xbitonic(Y), MH, BH details. Energy
  LGE = STO(H)^2 * clarity * H^0.01, compared by real part (H^0.01 is complex for H < 0, as MATLAB compares);
  STO from the differences H(i,j) - H(i-1,j) and H(i,j) - H(i,j-2) (symmetric padding; the authors' fractional
  differences with v = 1), sqrt((e1+e2)^2 + 0.5 (e1-e2)^2) of the eigenvalues of their outer product. Map
  LGE_M > LGE_B, 19x19 majority; F = map MH + ~map BH + max(ML, BL); the output is YUV -> RGB of (F, U, V).

Quirks reproduced:

- clarity (`clearity.m`) overwrites its input with `randn(256, 256)`: the clarity term is a function of random noise
  only: sum over 11x11 of |n_q| (n_q - n_p)^2 on the noise n padded symmetric on top, left, right and by
  reflection (edge excluded) at the bottom. Draw 1 serves the step-1 detail MH, draw 2 the functional detail BH.
  Here the noise is an argument: `fuse_raw(sources, noise)` takes a (2, H, W) array; without one it draws
  `numpy.random.default_rng(seed).standard_normal((2, H, W))`, re-seeded for every call so that repeated calls
  agree (seed 0 by default, set by `load(seed=...)`), which for 256x256 is exactly the noise of the golden runs (`noise_seed0.npy`). The authors'
  MATLAB run depends on the global RNG state instead and only works for 256x256 images; this version takes any
  size of at least 8x8 (below 31x31 the rank stage passes the image through unchanged, as the C++ does; the
  authors' ReflectEdge pads the right edge using the row count, which only works for square images).
- Results are not clipped (about [-0.45, 2.0]); `fuse` converts as the authors' `uint8(final_F * 255)` does
  (round half away from zero, saturate).

Outputs: `fuse_raw` -> float64 (H, W, 3) RGB final_F in [0, 1] units, unclipped (what the golden `_fused_f64.npy`
holds; `_fused.npy` is its float32 copy); `stages` -> also `step1_anat` (M) and `fusedY` (F); `fuse` -> uint8 RGB.
Colour: the fused grey is the luminance, U and V are the functional image's (the algorithm itself does this).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from core.registry import FUSION_METHODS
from model.peers import check_sources

WEIGHTS = None

THRESHOLD = 3.0  # the authors' xbitonic2(X, 3): noise threshold t in [0, 1] units
CENTILE = 8  # xbitonic2's centile for the ranked opening/closing
ALPHA = 0.6  # anisotropic filter's alpha
PCNN_ITERATIONS = 110
CNP_ITERATIONS = 110
MAJORITY_WINDOW = 19
CLARITY_RADIUS = 5
LGE_EXPONENT = 0.01  # H.^r in the energy, r = 0.01
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.147, -0.289, 0.436], [0.615, -0.515, -0.100]])
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)
OCTAVE_GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # Octave's rgb2gray weights
_CHUNK = 2048  # pixels per block in the rank stage (a block holds a few (chunk, 961) arrays)


# ------------------------------------------------------------------------------------------------ small helpers


def matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB/Octave uint8(double): round half away from zero, saturate to [0, 255], NaN -> 0."""
    x = np.asarray(x, dtype=np.float64)
    rounded = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return np.nan_to_num(np.clip(rounded, 0, 255)).astype(np.uint8)


def octave_rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of a uint8 RGB image as Octave's rgb2gray computes it (exactly R when R = G = B)."""
    x = np.asarray(rgb, dtype=np.float64)
    grey = x[..., 0] * OCTAVE_GREY[0] + x[..., 1] * OCTAVE_GREY[1] + x[..., 2] * OCTAVE_GREY[2]
    return matlab_uint8(grey)


def _matlab_mod(x: np.ndarray, y: float) -> np.ndarray:
    return x - np.floor(x / y) * y


def _gauss_taps(f: float) -> np.ndarray:
    """xbitonic2's gauss2 kernel of extent f: exp(-x^2 / (f/2)^2), x = -floor(f)..floor(f), short-filter tweaks,
    normalised."""
    gf = int(math.floor(f))
    x = np.arange(-gf, gf + 1, dtype=np.float64)
    taps = np.exp(-x ** 2 / (0.5 * f) ** 2)
    if gf == 1:
        taps[[0, 2]] = 0.75 + 0.25 * taps[[0, 2]]
    elif gf == 2:
        taps[[0, 4]] = 0.1 + 0.9 * taps[[0, 4]]
        taps[[1, 3]] = 0.25 + 0.75 * taps[[1, 3]]
    return taps / taps.sum()


def _gauss2(image: np.ndarray, f: float) -> np.ndarray:
    """Separable Gaussian smoothing with replicated edges (gauss2)."""
    if math.floor(f) == 0:
        return image.copy()
    taps = _gauss_taps(f)
    out = ndimage.correlate1d(image, taps, axis=0, mode="nearest")
    return ndimage.correlate1d(out, taps, axis=1, mode="nearest")


def _gauss_vector(vector: np.ndarray, f: float) -> np.ndarray:
    """gauss2 applied to an N x 1 vector: a 1-D Gaussian along it, replicated ends."""
    if math.floor(f) == 0 or vector.size == 0:
        return vector.copy()
    return ndimage.correlate1d(vector, _gauss_taps(f), mode="nearest")


# ------------------------------------------------------------------------------------------------ bitonic filter


def _structensor(image: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
    """(anisotropy, orientation) of the smoothed structure tensor (structensor2, 'adapted', no corners)."""
    padded = np.pad(image, 1, mode="edge")
    smooth = np.array([0.25, 0.5, 0.25])
    deriv = np.array([0.5, 0.0, -0.5])  # conv2 with [-1 0 1]/2 is a correlation with it reversed
    gx = ndimage.correlate1d(ndimage.correlate1d(padded, smooth, axis=0), deriv, axis=1)[1:-1, 1:-1]
    gy = ndimage.correlate1d(ndimage.correlate1d(padded, deriv, axis=0), smooth, axis=1)[1:-1, 1:-1]
    txx = _gauss2(gx ** 2, f)
    tyy = _gauss2(gy ** 2, f)
    txy = _gauss2(2 * gx * gy, f)
    t1 = txx + tyy
    t2 = txx - tyy
    direction = (np.arctan2(txy, t2) + np.pi) / 2
    t2 = (t2 ** 2 + txy ** 2) ** 0.5
    anis = np.zeros_like(t1)
    # the authors smooth T1(n) - T2(n), a column-major vector of the selected pixels: work on transposes so that
    # boolean indexing walks the columns
    keep = (t1 > 0).T
    small = _gauss_vector((t1.T - t2.T)[keep], 2 * f)
    anis.T[keep] = 1 - small / (t1.T + t2.T)[keep]
    anis[anis < 0] = 0
    return anis, direction


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the small elementwise kernels on one intra-op thread (much faster than contended threads for arrays of
    this size), restoring the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _anisotropic(images: Sequence[np.ndarray], f: float, alpha: float, thresholds: Sequence[float],
                 anis: np.ndarray, direction: np.ndarray) -> list[np.ndarray]:
    """anisotropic2_mex (no corner term) applied to each image with the shared anisotropy/orientation; pairs whose
    values differ by `thresholds[k]` or more are left out of image k (0 disables that). Each unordered pair of
    pixels within the (2 floor(f) + 1)^2 window is visited once, for both pixels (the weight is symmetric)."""
    filt = int(math.floor(f))
    height, width = anis.shape
    alpha = max(alpha, 0.1)
    a = _matlab_mod(3 * np.pi / 2 - direction, np.pi)
    w1 = alpha * alpha
    a2 = anis * anis
    big = a2 > w1 * 1.2
    ansin = torch.from_numpy(np.where(big, 1.2 * np.sin(a), a2 * np.sin(a) / w1))
    ancos = torch.from_numpy(np.where(big, 1.2 * np.cos(a), a2 * np.cos(a) / w1))
    imgs = [torch.from_numpy(np.array(img, dtype=np.float64)) for img in images]
    limits = [1e10 if t == 0 else t for t in thresholds]
    check = [float(img.max() - img.min()) >= lim for img, lim in zip(imgs, limits)]
    total = [img.clone() for img in imgs]
    shared = torch.ones_like(ansin)
    weight = [torch.ones_like(ansin) if c else shared for c in check]
    factor = torch.empty_like(ansin)
    buffer = torch.empty_like(ansin)
    masked = torch.empty_like(ansin)
    with _one_torch_thread():
        for dcol in range(0, min(filt, width - 1) + 1):
            for drow in range(-filt if dcol > 0 else 1, filt + 1):
                if abs(drow) >= height:
                    continue
                dist = math.hypot(drow, dcol)
                theta = math.atan2(dcol, drow)
                w2 = 2.0 * dist / f
                gauss = math.exp(-w2 * w2)
                along = dist * math.sin(theta)  # the column offset (the C++ "y")
                across = dist * math.cos(theta)  # the row offset (the C++ "x")
                torch.mul(ancos, along, out=factor)
                factor.sub_(ansin, alpha=across).abs_().add_(1.0)
                r0, r1 = max(0, -drow), height - max(0, drow)
                src = (slice(r0, r1), slice(0, width - dcol))
                dst = (slice(r0 + drow, r1 + drow), slice(dcol, width))
                pair = buffer[: r1 - r0, : width - dcol]
                torch.mul(factor[src], factor[dst], out=pair)
                pair.reciprocal_().mul_(gauss)
                if not all(check):
                    shared[src].add_(pair)
                    shared[dst].add_(pair)
                for k, img in enumerate(imgs):
                    wk = pair
                    if check[k]:
                        wk = masked[: r1 - r0, : width - dcol]
                        torch.mul(pair, (img[src] - img[dst]).abs_() < limits[k], out=wk)
                        weight[k][src].add_(wk)
                        weight[k][dst].add_(wk)
                    total[k][src].addcmul_(wk, img[dst])
                    total[k][dst].addcmul_(wk, img[src])
    return [(t / w).numpy() for t, w in zip(total, weight)]


def _rank_of(count: np.ndarray, g1: float) -> np.ndarray:
    """The rank xrankopen2 uses for a mask of `count` pixels: round(g1 (count - 1)), at least 1 when count > 3."""
    rank = np.floor(g1 * (count - 1) + 0.5).astype(np.int64)
    if g1 > 0:
        rank[(rank == 0) & (count > 3)] = 1
    return rank


class _Keys:
    """Order-preserving integer keys of an image (the index of each value among its sorted distinct values), and
    their dense re-numbering within a band of rows: int16 when fewer than 32000 values occur there (the sort of
    int16 keys is the fastest numpy sort)."""

    def __init__(self, values: np.ndarray) -> None:
        self.distinct, keys = np.unique(values, return_inverse=True)
        self.keys = keys.reshape(values.shape)

    def band(self, a0: int, a1: int) -> tuple[np.ndarray, np.ndarray, type]:
        """(keys of rows a0..a1-1 renumbered 0..n-1, the n distinct values there in order, integer type)."""
        region = self.keys[a0:a1]
        present = np.zeros(len(self.distinct), bool)
        present[region] = True
        dense = np.cumsum(present) - 1
        dtype = np.int16 if int(dense[-1]) < 32000 else np.int32
        return dense[region].astype(dtype), self.distinct[present], dtype


def _unsigned(dtype: type) -> type:
    return np.uint16 if dtype == np.int16 else np.uint32


def _block_windows(region: np.ndarray, a0: int, r0: int, r1: int, f: int, fill: int) -> np.ndarray:
    """(n, l*l) windows (l = 2f+1) of the pixels of rows r0..r1-1, from `region` (rows a0.. of the image, all the
    rows those windows reach) padded with `fill` outside the image."""
    width = region.shape[1]
    padded = np.full((r1 - r0 + 2 * f, width + 2 * f), fill, region.dtype)
    top = a0 - (r0 - f)
    padded[top:top + region.shape[0], f:f + width] = region
    side = 2 * f + 1
    return sliding_window_view(padded, (side, side)).reshape(-1, side * side)


def _masked(windows: np.ndarray, inside: np.ndarray, largest: bool) -> np.ndarray:
    """The key windows with the pixels outside the masks set to -1 (`largest`: they sort first) or to the largest
    positive key (they sort last); keys are >= 0."""
    fill = inside.view(np.uint8).astype(windows.dtype)
    fill -= 1  # 0 inside, -1 (all bits set) outside
    if not largest:
        fill &= np.iinfo(windows.dtype).max
    return windows | fill


def _rank_open_close(image: np.ndarray, t: float, f: int, guide: np.ndarray,
                     centile: float = CENTILE) -> tuple[np.ndarray, np.ndarray]:
    """xrankopen2 (double, grey, first level): the locally masked ranked opening and closing of `image`, masks from
    the smoothed `guide` and the image itself (see the module docstring). Values are only selected, never computed,
    so the result is exact; the selections sort integer keys (ranks of the values) in blocks of rows."""
    height, width = image.shape
    if f > height // 2 or f > width // 2:
        return image.copy(), image.copy()
    side = 2 * f + 1
    area = side * side
    centre = (area - 1) // 2
    g1 = centile / 100.0
    dm = math.sqrt(math.pi) * (f + 0.5) * 1.2 * 0.85
    dm2 = dm * math.erf((f + 0.5) * 1.2 / 24.0)
    thresh = t
    mthresh = thresh / dm2
    gmax = ndimage.maximum_filter(image, size=side, mode="nearest")
    gmin = ndimage.minimum_filter(image, size=side, mode="nearest")
    if t > float(image.max() - image.min()) / 20.0:
        mrange = (gmax - gmin) / thresh
        mminv = np.minimum(np.abs(image - gmin), np.abs(gmax - image)) / thresh
        tfact = np.where(mrange > 1.57, 0.7,
                         np.where(mrange < 0.9, 1.6, 1.6 - (mrange - 0.9) * (1.6 - 0.7) / (1.57 - 0.9)))
        near = (tfact < 1.0) & (mminv < 0.7)
        tfact = np.where(near, 1.0 - mminv * (1.0 - tfact) / 0.7, tfact)
    else:
        tfact = np.ones_like(image)
    lo = guide - mthresh * tfact
    hi = guide + mthresh * tfact
    glo = image - thresh * tfact
    ghi = image + thresh * tfact
    test = thresh * (0.5 + 0.5 / dm)
    vg = np.abs(guide - image)
    wide = vg > test
    lo = np.where(wide, lo - 2 * (vg - test), lo)
    hi = np.where(wide, hi + 2 * (vg - test), hi)
    # q is in p's mask when lo[p] <= guide[q] <= hi[p] and glo[p] <= image[q] <= ghi[p]; the second band is dropped
    # when it holds every pixel of every window (always so on [0, 1]-range data)
    bands = [(_Keys(guide), lo, hi)]
    if not (np.all(glo <= gmin) and np.all(gmax <= ghi)):
        bands.append((_Keys(image), glo, ghi))
    rows = max(1, _CHUNK // width)

    def band_limits(keys: _Keys, lower: np.ndarray, upper: np.ndarray, a0: int, a1: int, rows_: slice):
        local, distinct, dtype = keys.band(a0, a1)
        low = np.searchsorted(distinct, lower[rows_], "left")
        span = np.searchsorted(distinct, upper[rows_], "right") - 1 - low
        return local, low.astype(dtype), span.astype(_unsigned(dtype)), dtype

    value_keys = _Keys(image)
    erosion = np.empty_like(image)
    dilation = np.empty_like(image)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a0, a1 = max(0, r0 - f), min(height, r1 + f)
        inside = None
        for keys, lower, upper in bands:
            local, low, span, dtype = band_limits(keys, lower, upper, a0, a1, slice(r0, r1))
            windows = _block_windows(local, a0, r0, r1, f, -1)  # -1 - low wraps to a huge unsigned: outside
            ok = (windows - low.reshape(-1, 1)).view(_unsigned(dtype)) <= span.reshape(-1, 1)
            inside = ok if inside is None else inside & ok
        inside[:, centre] = True
        count = np.count_nonzero(inside, axis=1)
        rank = _rank_of(count, g1)
        local, distinct, _ = value_keys.band(a0, a1)
        ranked = _masked(_block_windows(local, a0, r0, r1, f, 0), inside, largest=False)
        ranked.sort(axis=1)
        erosion[r0:r1] = distinct[np.take_along_axis(ranked, rank[:, None], 1)[:, 0]].reshape(r1 - r0, width)
        dilation[r0:r1] = distinct[np.take_along_axis(ranked, (count - 1 - rank)[:, None], 1)[:, 0]
                                   ].reshape(r1 - r0, width)

    # inverse: q takes the rank-th largest erosion (smallest dilation) of the masks that hold it, not past its own
    erosion_keys, dilation_keys = _Keys(erosion), _Keys(dilation)
    opening = np.empty_like(image)
    closing = np.empty_like(image)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a0, a1 = max(0, r0 - f), min(height, r1 + f)
        inside = None
        for keys, lower, upper in bands:
            local, low, span, dtype = band_limits(keys, lower, upper, a0, a1, slice(a0, a1))
            low_windows = _block_windows(low, a0, r0, r1, f, np.iinfo(dtype).max)  # > every key: outside
            span_windows = _block_windows(span, a0, r0, r1, f, 0)
            own = local[r0 - a0:r1 - a0].reshape(-1, 1)
            ok = (own - low_windows).view(_unsigned(dtype)) <= span_windows
            inside = ok if inside is None else inside & ok
        inside[:, centre] = True
        rank = _rank_of(np.count_nonzero(inside, axis=1), g1)
        for keys, out, largest in ((erosion_keys, opening, True), (dilation_keys, closing, False)):
            local, distinct, _ = keys.band(a0, a1)
            own = local[r0 - a0:r1 - a0].reshape(-1)
            ranked = _masked(_block_windows(local, a0, r0, r1, f, 0), inside, largest)
            ranked.sort(axis=1)
            if largest:
                pick = np.maximum(np.take_along_axis(ranked, (area - 1 - rank)[:, None], 1)[:, 0], own)
            else:
                pick = np.minimum(np.take_along_axis(ranked, rank[:, None], 1)[:, 0], own)
            out[r0:r1] = distinct[pick].reshape(r1 - r0, width)
    return opening, closing


def xbitonic(image: np.ndarray, t: float = THRESHOLD, centile: float = CENTILE) -> np.ndarray:
    """The authors' `xbitonic2(image, t)` for a float64 grey image in [0, 1] units (noise type 'additive', filter
    length automatic from t, no multi-resolution level)."""
    image = np.asarray(image, dtype=np.float64)
    f = int(min(15, max(3, math.floor(2.5 + 2 * math.log2(t / 0.02) + 0.5))))
    gf = f * 1.2
    if t < 0.45:
        raise NotImplementedError("thresholds below 0.45 (corner detection) are not used by BitonicX")
    anis, direction = _structensor(image, gf)
    (guide,) = _anisotropic([image], gf, ALPHA, [3.0 * t], anis, direction)
    opened, closed = _rank_open_close(image, t, f, guide, centile)
    e_open, e_close = _anisotropic([image - opened, closed - image], gf, ALPHA, [1.4 * t, 1.4 * t], anis, direction)
    closed = closed - e_close
    opened = opened + e_open
    e_open = np.abs(e_open ** 3)
    e_close = np.abs(e_close ** 3)
    e_sum = e_open + e_close
    zero = e_sum == 0
    e_open[zero] = 0.5
    e_close[zero] = 0.5
    e_sum[zero] = 1.0
    return (e_open * closed + e_close * opened) / e_sum


# ------------------------------------------------------------------------------------------------ fusion rules


def _conv_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """conv2(image, kernel, 'same') for a kernel symmetric under a half turn (zero padding)."""
    return ndimage.correlate(image, kernel, mode="constant", cval=0.0)


def graythresh(image: np.ndarray) -> float:
    """Octave image-package Otsu threshold of a double image: 256-bin histogram of im2uint8, the centre of the
    maximal between-class variances (NaN for a constant image, as there)."""
    hist = np.bincount(matlab_uint8(np.asarray(image) * 255).ravel(), minlength=256).astype(np.float64)
    bins = np.arange(256, dtype=np.float64)
    total = hist.sum()
    b_totals = np.concatenate([[0.0], np.cumsum(hist[:-1])])
    with np.errstate(divide="ignore", invalid="ignore"):
        b_means = np.concatenate([[0.0], np.cumsum(bins[:-1] * hist[:-1])]) / b_totals
        w_totals = total - b_totals
        w_means = (np.cumsum(bins[::-1] * hist[::-1]) / w_totals[::-1])[::-1]
        bcv = (b_totals / total) * (w_totals / total) * (b_means - w_means) ** 2
    if not np.isfinite(bcv).any():
        return math.nan
    best = np.flatnonzero(bcv == np.nanmax(bcv)) + 1  # 1-based, as find() returns
    return float(math.ceil(best.mean()) - 2) / 255.0


def _pa_pcnn(stimulus: np.ndarray, alpha_f: float, alpha_e: float, lam: float, v_e: float,
             iterations: int = PCNN_ITERATIONS) -> np.ndarray:
    """Parameter-adaptive PCNN firing counts (PA_PCNN.m)."""
    link = np.array([[0.5, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]])
    feed = np.abs(stimulus)
    u = np.zeros_like(feed)
    y = np.zeros_like(feed)
    e = np.ones_like(feed)
    fired = np.zeros_like(feed)
    with np.errstate(over="ignore", invalid="ignore"):
        decay_f, decay_e = np.exp(-np.float64(alpha_f)), np.exp(-np.float64(alpha_e))
        for _ in range(iterations):
            k = _conv_same(y, link)
            u = decay_f * u + feed * (1 + lam * k)
            y = (u > e).astype(np.float64)
            e = decay_e * e + v_e * y
            fired += y
    return fired


def _pcnn_parameters(detail: np.ndarray) -> tuple[float, float, float, float]:
    """(alpha_f, alpha_e, lambda, V_E) of MSMG_PAPCNN.m from |detail| (std2, Otsu level and maximum), with IEEE
    inf/NaN where MATLAB's arithmetic gives them (a flat detail layer never fires)."""
    mag = np.abs(detail)
    std = np.float64(np.std(mag, ddof=1))
    s2 = np.float64(mag.max())
    s1 = np.float64(graythresh(mag))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha_f = np.log10(1.0 / std)
        ratio = s2 / s1
        lam = (ratio - 1.0) / 6
        ef = np.exp(-alpha_f)
        v_e = ef + ratio
        m = (1 - np.exp(-3 * alpha_f)) / (1 - ef) + (ratio - 1) * ef
        alpha_e = np.log(v_e / (s1 * m))
    return float(alpha_f), float(alpha_e), float(lam), float(v_e)


def _msmg(detail: np.ndarray) -> np.ndarray:
    """Multi-scale morphological gradient of |detail| with one scale (3): 5x5 square (MATLAB's strel('disk', 3))."""
    mag = np.abs(detail)
    grad = ndimage.maximum_filter(mag, size=5, mode="nearest") - ndimage.minimum_filter(mag, size=5, mode="nearest")
    return 1 / 3 * grad


def msmg_papcnn(detail_a: np.ndarray, detail_b: np.ndarray) -> np.ndarray:
    """MSMG_PAPCNN.m with one scale: the detail whose PA-PCNN fires at least as often."""
    fired_a = _pa_pcnn(_msmg(detail_a), *_pcnn_parameters(detail_a))
    fired_b = _pa_pcnn(_msmg(detail_b), *_pcnn_parameters(detail_b))
    return np.where(fired_a >= fired_b, detail_a, detail_b)


def cnp_firing(stimulus: np.ndarray, iterations: int = CNP_ITERATIONS) -> np.ndarray:
    """CNP_test.m: firing counts with 7x7 inverse-distance linking; threshold 0.3 until a pixel first fires, 1
    after; fed and linking inputs accumulate while the pixel is silent and restart when it fires."""
    i, j = np.meshgrid(np.arange(7) - 3, np.arange(7) - 3, indexing="ij")
    dist = np.hypot(i, j)
    link = np.divide(1.0, dist, out=np.zeros_like(dist), where=dist > 0)
    s = np.asarray(stimulus, dtype=np.float64)
    feed = np.zeros_like(s)
    lnk = np.zeros_like(s)
    theta = np.full_like(s, 0.3)
    p = np.zeros_like(s)
    fired = np.zeros_like(s)
    for _ in range(iterations):
        work = _conv_same(p, link)
        silent = p == 0
        feed = np.where(silent, feed + s + work, s + work)
        lnk = np.where(silent, lnk + work, work)
        theta = np.where(silent, theta, p)
        u = feed * (1 + lnk)
        p = (u >= theta).astype(np.float64)
        fired += p
    return fired


def majority(decision: np.ndarray, window: int = MAJORITY_WINDOW) -> np.ndarray:
    """majority_consist_new.m: 1 where at least half of the window x window neighbourhood (symmetric padding) is 1."""
    spread = (window - 1) // 2
    padded = np.pad(np.asarray(decision, dtype=np.int64), spread, mode="symmetric")
    c = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = decision.shape
    sums = (c[window:window + h, window:window + w] - c[:h, window:window + w]
            - c[window:window + h, :w] + c[:h, :w])
    return sums >= window * window / 2


def sto(detail: np.ndarray) -> np.ndarray:
    """STO.m: structure-tensor saliency from H(i,j) - H(i-1,j) and H(i,j) - H(i,j-2) (symmetric padding by 2)."""
    padded = np.pad(detail, 2, mode="symmetric")
    h, w = detail.shape
    ex = padded[2:h + 2, 2:w + 2] - padded[1:h + 1, 2:w + 2]
    gy = padded[2:h + 2, 2:w + 2] - padded[2:h + 2, 0:w]
    fa = ex * gy
    eea = ex * ex
    gga = gy * gy
    root = np.sqrt((eea - gga) ** 2 + 4 * fa * fa)
    e1 = 0.5 * ((eea + gga) + root)
    e2 = 0.5 * ((eea + gga) - root)
    return np.sqrt((e1 + e2) ** 2 + 0.5 * ((e1 - e2) ** 2))


def clarity(noise: np.ndarray, radius: int = CLARITY_RADIUS) -> np.ndarray:
    """clearity.m on its (noise) input: sum over the (2r+1)^2 window of |n_q| (n_q - n_p)^2, the noise padded
    symmetric on top, left and right and by reflection (edge excluded) at the bottom (ReflectEdge.m)."""
    d = radius
    n = np.asarray(noise, dtype=np.float64)
    rows = np.concatenate([n[d - 1::-1], n, n[-2:-d - 2:-1]], axis=0)
    padded = np.pad(rows, ((0, 0), (d, d)), mode="symmetric")
    h, w = n.shape
    centre = padded[d:d + h, d:d + w]
    total = np.zeros_like(n)
    for dc in range(2 * d + 1):  # column-major window order, as MATLAB's sum(x(:)) walks it
        for dr in range(2 * d + 1):
            q = padded[dr:dr + h, dc:dc + w]
            total += np.abs(q) * np.abs(q - centre) ** 2
    return total


def _power_real(detail: np.ndarray, exponent: float = LGE_EXPONENT) -> np.ndarray:
    """Real part of detail.^exponent: |h|^e for h >= 0, |h|^e cos(e pi) for h < 0 (the principal complex power)."""
    powered = np.abs(detail) ** exponent
    return np.where(detail < 0, powered * math.cos(exponent * math.pi), powered)


def lge_real(detail: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Real part of the energy STO(H).^2 .* clearity(H, 5) .* H.^0.01 (clarity of the noise draw)."""
    return (sto(detail) ** 2 * clarity(noise)) * _power_real(detail)


# ------------------------------------------------------------------------------------------------ the method


MIN_SIDE = 8


def fuse_stages(sources: Sequence[np.ndarray], noise: np.ndarray) -> dict[str, np.ndarray]:
    """The whole method with the two clarity noise draws `noise` (2, H, W): `step1_anat` (M), `fusedY` (F) and
    `fused` (final RGB), float64, unclipped."""
    anat, t2, functional = check_sources(sources, MIN_SIDE)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != (2, *anat.shape[:2]):
        raise ValueError(f"noise must have shape (2, H, W) = {(2, *anat.shape[:2])}, got {noise.shape}")
    a = octave_rgb2gray(anat) / 255.0
    g = octave_rgb2gray(t2) / 255.0
    # stage 1
    al, gl = xbitonic(a), xbitonic(g)
    f1 = msmg_papcnn(a - al, g - gl)
    all_, gll = xbitonic(al), xbitonic(gl)
    f2 = np.where(all_ > gll, all_, gll)
    ahh, ghh = al - all_, gl - gll
    pick = majority(cnp_firing(np.abs(ahh)) >= cnp_firing(np.abs(ghh)))
    f3 = np.where(pick, ahh, ghh)
    m = f1 + f2 + f3
    # stage 2
    rgb = functional.astype(np.float64) / 255.0
    yuv = [rgb[..., 0] * RGB_TO_YUV[i, 0] + rgb[..., 1] * RGB_TO_YUV[i, 1] + rgb[..., 2] * RGB_TO_YUV[i, 2]
           for i in range(3)]
    ml, bl = xbitonic(m), xbitonic(yuv[0])
    mh, bh = m - ml, yuv[0] - bl
    pick = majority(lge_real(mh, noise[0]) > lge_real(bh, noise[1]))
    fused_y = np.where(pick, mh, bh) + np.where(ml > bl, ml, bl)
    planes = (fused_y, yuv[1], yuv[2])
    final = np.stack([planes[0] * YUV_TO_RGB[i, 0] + planes[1] * YUV_TO_RGB[i, 1] + planes[2] * YUV_TO_RGB[i, 2]
                      for i in range(3)], axis=-1)
    return {"step1_anat": m, "fusedY": fused_y, "fused": final}


class BitonicX:
    """The loaded method: `fuse_raw`, `fuse`, `stages`; the clarity noise is drawn with `seed` unless given."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def draw_noise(self, height: int, width: int) -> np.ndarray:
        """The two clarity draws: `numpy.random.default_rng(seed).standard_normal((2, H, W))` (the golden noise for
        seed 0 and 256x256)."""
        return np.random.default_rng(self.seed).standard_normal((2, height, width))

    def stages(self, sources: Sequence[np.ndarray], noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """`fuse_stages` with `noise` (2, H, W), or the seeded draw without it."""
        if noise is None:
            noise = self.draw_noise(*check_sources(sources, MIN_SIDE)[0].shape[:2])
        return fuse_stages(sources, noise)

    def fuse_raw(self, sources: Sequence[np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """final_F: float64 (H, W, 3) RGB in [0, 1] units, unclipped (about [-0.45, 2.0])."""
        return self.stages(sources, noise)["fused"]

    def fuse(self, sources: Sequence[np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """uint8 (H, W, 3) RGB: uint8(final_F * 255) as MATLAB converts (round half away, saturate)."""
        return matlab_uint8(self.fuse_raw(sources, noise) * 255)


def load(peer_dir: str | Path | None = None, device: object = None, seed: int = 0) -> BitonicX:
    """BitonicX (no weights: `peer_dir` and `device` are accepted for the common interface and ignored; it runs on
    the CPU). `seed` seeds the clarity noise drawn for every call without an explicit `noise`."""
    return BitonicX(seed)


# registered as a loaded method, like the methods with weights: a published method stays out of the rule names that
# the config accepts (residual bases, ground truths); --peer-dir is not needed
FUSION_METHODS.register("bitonicx", needs_weights=True)(load)
