"""CTSR (Jie, Zhou, Tan, Wang, Cheng, Li, "Tri-modal medical image fusion based on adaptive energy choosing scheme
and sparse representation", Measurement 204 (2022) 112038), written from the paper and the authors' MATLAB code
(github JEI981214/Tri-modal-image-fusion, commit 5a32217), with the authors' learned dictionary
`my_dics/D_512.mat` (variable `D`: 64 x 512 float64, 8x8 patches, MATLAB v5 file read with scipy.io.loadmat).

Two stages, each fusing two grey images X1, X2 in [0, 1] (float64 throughout):

1. Decomposition: structure S = rolling guidance filter (3 iterations of the bilateral-grid cross bilateral filter of
   the image guided by the previous result, which starts at zero; sigma_s = 3, sigma_r = 0.05, grid sampling equal
   to the sigmas, 3x3x3 Gaussian kernel on the grid), texture T = X - S.
2. Texture: sparse representation over the dictionary (columns normalised to unit length). 8x8 patches on a stride-2
   grid (overlap 6), taken as column-major vectors with no mean removal; error-constrained OMP (||x - D g|| <= 0.01,
   at most 64 atoms, the stopping rules of ompbox's Batch-OMP); per patch the code with the larger L1 norm is kept
   (a tie keeps the first image), reconstructed and averaged over overlaps; pixels no patch covers get the mean.
3. Structure: the adaptive energy choosing scheme (AECS) with T = 9e-5 and the sum-modified-Laplacian (3x3
   window; the authors' window argument 5 is overwritten inside their SML): s1 where s1 - s2 > T or
   (|s1 - s2| < T and SML1 > SML2), otherwise s2.
4. Fused = fused texture + fused structure.

Stage 1 fuses the anatomical image and the MR-T2 image (grey by MATLAB's rgb2gray, exact for R = G = B); stage 2
fuses the stage-1 result with the luminance Y of the functional image (the authors' YUV matrix on [0, 1] RGB), and
the fused luminance with the functional image's U and V goes back to RGB through the exact inverse matrix. The
result is not clipped (about [-0.4, 2.1] in units of [0, 1]).

Quirks of the authors' code kept here: the first rolling-guidance iteration is guided by an all-zero image (a grid
of one range slice, so a plain Gaussian-like smoothing); no patch mean is removed before the OMP; the L1 choice keeps
the first image's code on a tie; AECS's `else` branch takes s2 whenever the first condition fails (also when
|s1 - s2| == T); the final RGB is neither clipped nor rescaled; with an odd H - 8 or W - 8 the last row or column is
covered by no patch and its texture is the mean of the two textures.

Speed: the OMP runs over all patches of a chunk at once (greedy selection over D'r for every signal in one matrix
product, selected atoms kept orthonormalised, the authors' stopping rules), and the bilateral grid, patch
extraction and overlap averaging are vectorised: about 6 s per 256x256 triplet on one loaded CPU core, against
30-60 s for the authors' code in Octave. The result equals the authors' Octave run to floating-point rounding (the
golden cases differ by < 1e-11 grey levels); an OMP atom choice flipped by rounding would change a patch locally.

Outputs:

- `fuse_raw`: final RGB, float32 (H, W, 3), unclipped: what the golden `<case>_fused.npy` holds (`fuse_stages` gives
  the float64 result and the intermediates `step1_anat` and `fused_y`).
- `fuse`: the authors' 8-bit image `uint8(final_F * 255)`: rounding half away from zero, saturated to [0, 255].
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.registry import FUSION_METHODS
from model.peers import PeerWeights, weights_file

WEIGHTS = PeerWeights(method="CTSR", relative_path="my_dics/D_512.mat", size_bytes=251943,
                      sha256="2fa9769f2cf38cc2bb8cf0f8b669200880d7772a1d03a0ef554d72222d64826e")

RGF_ITERATIONS = 3
SIGMA_SPATIAL = 3.0
SIGMA_RANGE = 0.05
OVERLAP = 6
EPSILON = 0.01
AECS_T = 9e-5
SML_WINDOW = 3

# the authors' RGB -> YUV matrix (rows Y, U, V) on [0, 1] values
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.147, -0.289, 0.436],
                       [0.615, -0.515, -0.100]])
# MATLAB rgb2gray weights (the first row of the inverse of the NTSC YIQ matrix, as rgb2gray computes them)
RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)


# ---------------------------------------------------------------- MATLAB conversions


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's round: halves away from zero (exact: the fractional part is computed without rounding error)."""
    t = np.trunc(x)
    frac = x - t
    return t + np.where(frac >= 0.5, 1.0, 0.0) - np.where(frac <= -0.5, 1.0, 0.0)


def matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB/Octave uint8(double): round half away from zero, saturate to [0, 255], NaN -> 0."""
    y = _round_half_away(np.asarray(x, dtype=np.float64))
    return np.nan_to_num(np.clip(y, 0, 255)).astype(np.uint8)


def rgb2gray_matlab(image: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2gray of a uint8 (H, W, 3) image, as uint8 (a grey (H, W) image is returned unchanged)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    x = image.astype(np.float64)
    r, g, b = RGB2GRAY_WEIGHTS
    return matlab_uint8(x[..., 0] * r + x[..., 1] * g + x[..., 2] * b)


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """The authors' ConvertRGBtoYUV: (H, W, 3) float RGB -> YUV, channel-by-channel sums in their order."""
    out = np.empty(rgb.shape, dtype=np.float64)
    for i in range(3):
        m = RGB_TO_YUV[i]
        out[..., i] = rgb[..., 0] * m[0] + rgb[..., 1] * m[1] + rgb[..., 2] * m[2]
    return out


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """The authors' ConvertYUVtoRGB: the exact matrix inverse (inv) applied to (H, W, 3) YUV."""
    inverse = np.linalg.inv(RGB_TO_YUV)
    out = np.empty(yuv.shape, dtype=np.float64)
    for i in range(3):
        m = inverse[i]
        out[..., i] = yuv[..., 0] * m[0] + yuv[..., 1] * m[1] + yuv[..., 2] * m[2]
    return out


# ---------------------------------------------------------------- rolling guidance filter (bilateral grid)


def _blur_3x3x3(grid: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """convn(grid, kernel, 'same') with zero padding for a 3x3x3 symmetric kernel."""
    padded = np.pad(grid, 1)
    h, w, d = grid.shape
    out = np.zeros_like(grid)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                out += kernel[a, b, c] * padded[a:a + h, b:b + w, c:c + d]
    return out


def _trilinear(volume: np.ndarray, di: np.ndarray, dj: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """interpn(volume, di, dj, dz) (linear) at 0-based coordinates; NaN outside the grid."""
    out = np.zeros(di.shape, dtype=np.float64)
    inside = np.ones(di.shape, dtype=bool)
    base, frac = [], []
    for coord, size in zip((di, dj, dz), volume.shape):
        inside &= (coord >= 0) & (coord <= size - 1)
        lo = np.clip(np.floor(coord), 0, max(size - 2, 0)).astype(np.int64)
        base.append(lo)
        frac.append(np.clip(coord - lo, 0.0, 1.0))
    for corner in range(8):
        weight = np.ones(di.shape, dtype=np.float64)
        idx = []
        for axis in range(3):
            step = (corner >> axis) & 1
            size = volume.shape[axis]
            idx.append(np.minimum(base[axis] + step, size - 1))
            weight = weight * (frac[axis] if step else 1.0 - frac[axis])
        out += weight * volume[idx[0], idx[1], idx[2]]
    out[~inside] = np.nan
    return out


def bilateral_grid_filter(data: np.ndarray, edge: np.ndarray, edge_min: float, edge_max: float,
                          sigma_spatial: float = SIGMA_SPATIAL, sigma_range: float = SIGMA_RANGE) -> np.ndarray:
    """Cross bilateral filter of `data` guided by `edge` by the bilateral grid (Paris & Durand), with the grid
    sampling equal to the sigmas, as the authors' bilateralFilter.m (scatter with rounding, 3x3x3 Gaussian blur of
    the grid, normalisation, trilinear slicing; NaN results take the data value)."""
    sampling_spatial, sampling_range = sigma_spatial, sigma_range
    derived_spatial = sigma_spatial / sampling_spatial
    derived_range = sigma_range / sampling_range
    pad_xy = int(np.floor(2 * derived_spatial)) + 1
    pad_z = int(np.floor(2 * derived_range)) + 1
    h, w = data.shape
    delta = edge_max - edge_min
    gh = int(np.floor((h - 1) / sampling_spatial)) + 1 + 2 * pad_xy
    gw = int(np.floor((w - 1) / sampling_spatial)) + 1 + 2 * pad_xy
    gd = int(np.floor(delta / sampling_range)) + 1 + 2 * pad_z

    ii = np.arange(h, dtype=np.float64)[:, None]
    jj = np.arange(w, dtype=np.float64)[None, :]
    di = (_round_half_away(ii / sampling_spatial) + pad_xy).astype(np.int64)
    dj = (_round_half_away(jj / sampling_spatial) + pad_xy).astype(np.int64)
    dz = (_round_half_away((edge - edge_min) / sampling_range) + pad_z).astype(np.int64)
    flat = (np.broadcast_to(di, (h, w)) * gw + np.broadcast_to(dj, (h, w))) * gd + dz
    # scatter in MATLAB's column-major pixel order, so the sums accumulate in the authors' order
    flat_f, data_f = flat.ravel(order="F"), data.ravel(order="F")
    valid = ~np.isnan(data_f)
    size = gh * gw * gd
    grid_data = np.bincount(flat_f[valid], weights=data_f[valid], minlength=size).reshape(gh, gw, gd)
    grid_weights = np.bincount(flat_f[valid], minlength=size).astype(np.float64).reshape(gh, gw, gd)

    kw = int(2 * derived_spatial + 1)
    kd = int(2 * derived_range + 1)
    if (kw, kd) != (3, 3):
        raise NotImplementedError("only the authors' setting (grid sampling = sigma, a 3x3x3 kernel) is supported")
    gx, gy, gz = np.meshgrid(np.arange(kw) - kw // 2, np.arange(kw) - kw // 2, np.arange(kd) - kd // 2,
                             indexing="ij")
    kernel = np.exp(-0.5 * ((gx * gx + gy * gy) / (derived_spatial * derived_spatial)
                            + (gz * gz) / (derived_range * derived_range)))
    blurred_data = _blur_3x3x3(grid_data, kernel)
    blurred_weights = _blur_3x3x3(grid_weights, kernel)
    blurred_weights[blurred_weights == 0] = -2
    normalised = blurred_data / blurred_weights
    normalised[blurred_weights < -1] = 0

    out = _trilinear(normalised, np.broadcast_to(ii / sampling_spatial + pad_xy, (h, w)),
                     np.broadcast_to(jj / sampling_spatial + pad_xy, (h, w)),
                     (edge - edge_min) / sampling_range + pad_z)
    mask = np.isnan(out)
    out[mask] = data[mask]
    return out


def rolling_guidance_filter(image: np.ndarray, sigma_spatial: float = SIGMA_SPATIAL,
                            sigma_range: float = SIGMA_RANGE, iterations: int = RGF_ITERATIONS) -> np.ndarray:
    """Rolling guidance filter (Zhang et al., ECCV 2014) of a grey float image: the guide starts at zero and each
    iteration filters the image guided by the previous result."""
    result = np.zeros_like(image, dtype=np.float64)
    for _ in range(iterations):
        result = bilateral_grid_filter(image, result, float(result.min()), float(result.max()), sigma_spatial,
                                       sigma_range)
    return result


# ---------------------------------------------------------------- batched OMP


def omp_error(D: np.ndarray, X: np.ndarray, epsilon: float, max_atoms: int = -1, chunk: int = 1024,
              blas_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Error-constrained OMP of every column of X (n, N) over the unit-norm dictionary D (n, m), `chunk` signals at
    once: min ||g||_0 s.t. ||x - D g||_2 <= epsilon, with the rules of ompbox's Batch-OMP (omp2): start only when
    ||x||^2 > epsilon^2; per step the atom of largest |D'r| (the first on ties); stop at a repeated atom, at
    |D'r|^2 < 1e-14, at a linearly dependent atom (1 - ||L^-1 D_I'd||^2 <= 1e-14, L the Cholesky factor of the
    selected atoms' Gram matrix), once the updated residual norm ||x||^2 - g'D_I'D_I g <= epsilon^2, or after
    max_atoms atoms (n when negative). Returns (codes (m, N), reconstructions D @ codes (n, N)).

    The greedy steps keep the selected atoms orthonormalised (rows of Q = L^-1 D_I', so row i of L is Q d_new with
    diagonal sqrt(1 - ||Q d_new||^2)) and z = L^-1 D_I'x: the residual is x - Q'z and the residual-norm update
    g'D_I'D_I g = ||z||^2, all in O(|I| n) per step. When a signal stops, its codes solve D_I'D_I g = D_I'x, as
    ompbox's Cholesky solve does.

    `blas_threads`: BLAS threads during the OMP (None: leave as set). Its many small products gain little from
    threads, and on a loaded CPU OpenBLAS's thread synchronisation made it 3-4x slower, so one thread is the
    default (applied with threadpoolctl when it is installed, otherwise left as set)."""
    with _blas_limit(blas_threads):
        return _omp_error(D, X, epsilon, max_atoms, chunk)


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager:
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _omp_error(D: np.ndarray, X: np.ndarray, epsilon: float, max_atoms: int, chunk: int
               ) -> tuple[np.ndarray, np.ndarray]:
    n, m = D.shape
    X = np.asarray(X, dtype=np.float64)
    N = X.shape[1]
    T = n if (max_atoms < 0 or max_atoms > n) else int(max_atoms)
    eps2 = float(epsilon) ** 2
    Dt = np.ascontiguousarray(D.T)  # (m, n): atoms as rows
    G = Dt @ D
    codes = np.zeros((N, m))
    recon = np.zeros((N, n))
    chunk = max(1, min(int(chunk), N))
    buffers = (np.empty((chunk, T, n)), np.empty((chunk, m)), np.empty((chunk, m)))  # reused by every chunk
    for lo in range(0, N, chunk):
        _omp_chunk(D, Dt, G, np.ascontiguousarray(X[:, lo:lo + chunk].T), eps2, T, codes[lo:lo + chunk],
                   recon[lo:lo + chunk], buffers)
    return codes.T, recon.T


def _omp_chunk(D: np.ndarray, Dt: np.ndarray, G: np.ndarray, signals: np.ndarray, eps2: float, T: int,
               codes: np.ndarray, recon: np.ndarray, buffers: tuple[np.ndarray, ...]) -> None:
    """omp_error of the rows of `signals` (Nc, n); writes the rows of codes (Nc, m) and recon (Nc, n)."""
    n, m = D.shape
    xtx = np.einsum("ij,ij->i", signals, signals)
    gid = np.flatnonzero(xtx > eps2) if T > 0 else np.zeros(0, dtype=np.int64)
    if not gid.size:
        return
    dtx = signals[gid] @ D  # (Na, m): D'x
    residual = signals[gid]  # x - D_I g
    resnorm = xtx[gid]
    na = gid.size
    ind = np.zeros((na, T), dtype=np.int64)
    z = np.zeros((na, T))
    # q_buffer: the orthonormalised selected atoms as rows (compacted in place); scratch for D'r and its square
    q_buffer, alpha_buffer, square_buffer = buffers
    rows_all = np.arange(na)
    alive = np.ones(na, dtype=bool)

    def record(rows: np.ndarray, count: int) -> None:
        if rows.size == 0 or count == 0:
            return
        sel = ind[rows, :count]
        gram = G[sel[:, :, None], sel[:, None, :]]
        coef = np.linalg.solve(gram, np.take_along_axis(dtx[rows], sel, axis=1)[..., None])
        cols = gid[rows]
        codes[cols[:, None], sel] = coef[..., 0]
        recon[cols] = np.matmul(np.swapaxes(coef, 1, 2), Dt[sel])[:, 0]

    for i in range(T):
        live = int(alive.sum())
        if live == 0:
            return
        if live < 0.9 * na:  # drop the stopped signals
            keep = np.flatnonzero(alive)
            gid, dtx, residual, resnorm, ind, z = (a[keep] for a in (gid, dtx, residual, resnorm, ind, z))
            for j in range(i):
                q_buffer[:live, j] = q_buffer[keep, j]
            na, alive = live, np.ones(live, dtype=bool)
        q, rows = q_buffer[:na], rows_all[:na]
        alpha = np.matmul(residual, D, out=alpha_buffer[:na]) if i else dtx  # D'r
        pos = np.argmax(np.multiply(alpha, alpha, out=square_buffer[:na]), axis=1)
        best = alpha[rows, pos]
        stop = best * best < 1e-14
        atom = Dt[pos]
        if i:
            stop |= (ind[:, :i] == pos[:, None]).any(axis=1)
            v = np.matmul(q[:, :i], atom[:, :, None])[..., 0]  # row i of L, left of the diagonal
            diag2 = 1.0 - np.einsum("ka,ka->k", v, v)
            stop |= diag2 <= 1e-14
            diag = np.sqrt(np.where(stop, 1.0, diag2))
            q[:, i] = (atom - np.matmul(v[:, None, :], q[:, :i])[:, 0]) / diag[:, None]
            z[:, i] = (dtx[rows, pos] - np.einsum("ka,ka->k", v, z[:, :i])) / diag
        else:
            q[:, 0] = atom
            z[:, 0] = dtx[rows, pos]
        record(np.flatnonzero(alive & stop), i)
        alive &= ~stop
        ind[:, i] = pos
        residual -= z[:, i, None] * q[:, i]
        resnorm = resnorm - z[:, i] ** 2
        done = alive & ((resnorm <= eps2) | (i + 1 >= T))
        record(np.flatnonzero(done), i + 1)
        alive &= ~done


# ---------------------------------------------------------------- fusion rules


def _patch_grid(h: int, w: int, patch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(0, h - patch + 1, step), np.arange(0, w - patch + 1, step)


def extract_patches(image: np.ndarray, patch: int, step: int) -> np.ndarray:
    """(patch*patch, ny*nx) column-major patch vectors (MATLAB's patch(:)) on the stride-`step` grid."""
    ys, xs = _patch_grid(*image.shape, patch, step)
    windows = np.lib.stride_tricks.sliding_window_view(image, (patch, patch))[::step, ::step]
    windows = windows[:len(ys), :len(xs)]  # (ny, nx, row, col)
    return np.ascontiguousarray(windows.transpose(3, 2, 0, 1).reshape(patch * patch, -1))


def sparse_fusion(A: np.ndarray, B: np.ndarray, D: np.ndarray, overlap: int = OVERLAP,
                  epsilon: float = EPSILON) -> np.ndarray:
    """The authors' sparse_fusion3: OMP codes of the patches of A and B, the larger L1 norm chosen (ties -> A),
    reconstructed and averaged over overlaps; uncovered pixels get (A + B) / 2."""
    D = D / np.sqrt(np.sum(D * D, axis=0))[None, :]
    n = D.shape[0]
    patch = int(round(np.sqrt(n)))
    step = patch - overlap
    h, w = A.shape
    ys, xs = _patch_grid(h, w, patch, step)
    fused = np.zeros((h, w))
    count = np.zeros((h, w))
    if ys.size and xs.size:
        pa, pb = extract_patches(A, patch, step), extract_patches(B, patch, step)
        codes, recon = omp_error(D, np.concatenate([pa, pb], axis=1), epsilon, max_atoms=-1)
        k = pa.shape[1]
        l1 = np.abs(codes).sum(axis=0)
        take_b = l1[:k] < l1[k:]
        chosen = np.where(take_b[None, :], recon[:, k:], recon[:, :k])  # (n, ny*nx)
        blocks = chosen.reshape(patch, patch, len(ys), len(xs))  # (col, row, ny, nx)
        ny, nx = len(ys), len(xs)
        for r in range(patch):
            for c in range(patch):
                fused[r:r + step * ny:step, c:c + step * nx:step] += blocks[c, r]
                count[r:r + step * ny:step, c:c + step * nx:step] += 1
    uncovered = count < 1
    fused[uncovered] = (A[uncovered] + B[uncovered]) / 2
    count[uncovered] = 1
    return fused / count


def sum_modified_laplacian(image: np.ndarray, window: int = SML_WINDOW) -> np.ndarray:
    """The SML of Qu Xiaobo's SML.m: modified Laplacian on a symmetric-padded image, then the square root of its
    mean over a window x window neighbourhood (symmetric padding)."""
    spread = (window - 1) // 2
    p = np.pad(image, 1, mode="symmetric")
    centre = p[1:-1, 1:-1]
    ml = np.abs(2 * centre - p[:-2, 1:-1] - p[2:, 1:-1]) + np.abs(2 * centre - p[1:-1, :-2] - p[1:-1, 2:])
    q = np.pad(ml, spread, mode="symmetric")
    h, w = image.shape
    total = np.zeros((h, w))
    for dx in range(window):  # column-major window sum, as sum(window(:))
        for dy in range(window):
            total += q[dy:dy + h, dx:dx + w]
    return np.sqrt(total / window ** 2)


def aecs(structure1: np.ndarray, structure2: np.ndarray, T: float = AECS_T) -> np.ndarray:
    """The adaptive energy choosing scheme (the authors' L3): s1 where s1 - s2 > T or (|s1 - s2| < T and
    SML1 > SML2), otherwise s2."""
    sml1, sml2 = sum_modified_laplacian(structure1), sum_modified_laplacian(structure2)
    diff = structure1 - structure2
    take1 = (diff > T) | ((np.abs(diff) < T) & (sml1 > sml2))
    return np.where(take1, structure1, structure2)


def fuse_two(X1: np.ndarray, X2: np.ndarray, D: np.ndarray) -> np.ndarray:
    """One CTSR stage over two grey float images: RGF decomposition, sparse texture fusion, AECS structure fusion."""
    s1, s2 = rolling_guidance_filter(X1), rolling_guidance_filter(X2)
    return sparse_fusion(X1 - s1, X2 - s2, D) + aecs(s1, s2)


# ---------------------------------------------------------------- the method


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"sources must be uint8 images, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"sources must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    return image


class CTSRFusion:
    """The loaded method over three registered uint8 sources (anatomical, MR-T2, functional) of one size."""

    name = "CTSR"

    def __init__(self, dictionary: np.ndarray) -> None:
        self.dictionary = np.asarray(dictionary, dtype=np.float64)

    def fuse_stages(self, sources: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """float64 results: `step1_anat` (anatomical + MR-T2), `fused_y` (stage-2 luminance) and `fused` (RGB)."""
        if len(sources) != 3:
            raise ValueError(f"CTSR fuses three sources (anatomical, MR-T2, functional), got {len(sources)}")
        anatomical, mri, functional = (_as_uint8(s) for s in sources)
        shapes = {s.shape[:2] for s in (anatomical, mri, functional)}
        if len(shapes) != 1:
            raise ValueError(f"sources must share one size, got {sorted(shapes)}")
        A = rgb2gray_matlab(anatomical).astype(np.float64) / 255
        G = rgb2gray_matlab(mri).astype(np.float64) / 255
        if functional.ndim == 2:
            functional = np.repeat(functional[..., None], 3, axis=2)
        yuv = rgb_to_yuv(functional.astype(np.float64) / 255)
        step1 = fuse_two(A, G, self.dictionary)
        fused_y = fuse_two(step1, yuv[..., 0], self.dictionary)
        out_yuv = np.stack([fused_y, yuv[..., 1], yuv[..., 2]], axis=2)
        return {"step1_anat": step1, "fused_y": fused_y, "fused": yuv_to_rgb(out_yuv)}

    def fuse_raw(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """Final RGB, float32 (H, W, 3), unclipped (units of [0, 1]), as the golden `<case>_fused.npy`."""
        return self.fuse_stages(sources)["fused"].astype(np.float32)

    def fuse(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) RGB: the authors' `uint8(final_F * 255)` (half away from zero, saturated)."""
        return matlab_uint8(self.fuse_stages(sources)["fused"] * 255)


def load_dictionary(path: str | Path) -> np.ndarray:
    """The 64 x 512 dictionary `D` of the authors' MATLAB v5 .mat file."""
    from scipy.io import loadmat

    variables = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    if "D" in variables:
        D = variables["D"]
    elif len(variables) == 1:
        D = next(iter(variables.values()))
    else:
        raise ValueError(f"{path}: expected one dictionary variable 'D', found {sorted(variables)}")
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or int(round(np.sqrt(D.shape[0]))) ** 2 != D.shape[0]:
        raise ValueError(f"{path}: dictionary of shape {D.shape} does not hold square patches as columns")
    return D


def load(peer_dir: str | Path | None, device: object = None) -> CTSRFusion:
    """CTSR with the authors' checked dictionary `my_dics/D_512.mat` under `peer_dir` (CPU; `device` is ignored)."""
    return CTSRFusion(load_dictionary(weights_file(peer_dir, WEIGHTS)))


FUSION_METHODS.register("ctsr", needs_weights=True)(load)
