"""CTSR (`model.peers.ctsr`): the batched OMP and the fusion rules on synthetic data, and the whole method against
golden outputs of the authors' MATLAB code run in GNU Octave.

The synthetic tests need nothing outside the repository. The golden tests need the shared peers folder
(`../shared/peers`: the authors' dictionary `my_dics/D_512.mat` and the golden outputs) and the shared images
(`../shared/data`), and skip with a reason when they are absent. Golden cases: four real 256x256 Harvard triplets
(anatomical, MR-T2, functional); two run by default, the other two are marked slow (about 6 s each).

Run with `-s` to see the measured differences and the time per triplet.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from model.peers import PeerWeightsError, ctsr
from tests.peer_goldens import CASES, DATA, PEERS

DEFAULT_CASES = ("case18", "aan21008")

needs_shared = pytest.mark.skipif(
    not (PEERS / "CTSR").is_dir() or not DATA.is_dir(),
    reason=f"the shared peers folder ({PEERS}: the authors' dictionary and golden outputs) or the shared images "
           f"({DATA}) are absent")


# ---------------------------------------------------------------- synthetic (no ../shared)


def reference_omp(D: np.ndarray, x: np.ndarray, epsilon: float, max_atoms: int) -> np.ndarray:
    """One signal through ompbox's Batch-OMP as written (Cholesky update, alpha = D'x - G_I c, residual norm
    ||x||^2 - c'G_II c): the plain reading of the authors' OMP that the batched one must reproduce."""
    G = D.T @ D
    dtx = D.T @ x
    alpha = dtx.copy()
    resnorm, deltaprev, eps2 = float(x @ x), 0.0, epsilon ** 2
    ind: list[int] = []
    chol = np.ones((1, 1))
    c = np.zeros(0)
    while resnorm > eps2 and len(ind) < max_atoms:
        pos = int(np.argmax(alpha * alpha))
        if pos in ind or alpha[pos] ** 2 < 1e-14:
            break
        if ind:
            w = np.linalg.solve(chol, G[ind, pos])
            if 1 - w @ w <= 1e-14:
                break
            chol = np.block([[chol, np.zeros((len(ind), 1))], [w[None, :], np.sqrt(1 - w @ w)[None, None]]])
        ind.append(pos)
        c = np.linalg.solve(chol.T, np.linalg.solve(chol, dtx[ind]))
        gc = G[:, ind] @ c
        alpha = dtx - gc
        delta = float(c @ gc[ind])
        resnorm, deltaprev = resnorm - delta + deltaprev, delta
    gamma = np.zeros(D.shape[1])
    gamma[ind] = c
    return gamma


def unit_columns(D: np.ndarray) -> np.ndarray:
    return D / np.linalg.norm(D, axis=0)


def overcomplete_dct(patch: int = 8, atoms_1d: int = 16) -> np.ndarray:
    k = np.arange(atoms_1d)
    basis = np.cos(np.outer(np.arange(patch) + 0.5, k) * np.pi / atoms_1d)
    basis[:, 1:] -= basis[:, 1:].mean(axis=0)
    return unit_columns(np.kron(basis, basis))


def test_omp_recovers_sparse_signals_exactly() -> None:
    rng = np.random.default_rng(0)
    D = unit_columns(rng.standard_normal((64, 256)))
    truth = np.zeros((256, 40))
    for j in range(40):
        support = rng.choice(256, 3, replace=False)
        truth[support, j] = rng.uniform(1, 2, 3) * rng.choice([-1, 1], 3)
    X = D @ truth
    X[:, 0] = 0  # a zero signal gets no atom
    truth[:, 0] = 0
    codes, recon = ctsr.omp_error(D, X, 1e-6, chunk=16)
    assert codes.shape == (256, 40) and recon.shape == (64, 40)
    np.testing.assert_array_equal(codes != 0, truth != 0)
    np.testing.assert_allclose(codes, truth, atol=1e-9)
    np.testing.assert_allclose(recon, X, atol=1e-9)


def test_batched_omp_matches_the_per_signal_batch_omp() -> None:
    rng = np.random.default_rng(1)
    D = unit_columns(rng.standard_normal((16, 40)))
    X = np.concatenate([rng.standard_normal((16, 60)) * rng.uniform(0.01, 2, 60),
                        D[:, :5] @ rng.standard_normal((5, 20)), np.zeros((16, 1))], axis=1)
    for epsilon, max_atoms in ((0.3, -1), (0.05, -1), (0.05, 4), (1e-8, -1)):
        codes, recon = ctsr.omp_error(D, X, epsilon, max_atoms=max_atoms, chunk=7)
        limit = 16 if max_atoms < 0 else max_atoms
        expected = np.stack([reference_omp(D, x, epsilon, limit) for x in X.T], axis=1)
        np.testing.assert_array_equal(codes != 0, expected != 0)
        np.testing.assert_allclose(codes, expected, atol=1e-9)
        np.testing.assert_allclose(recon, D @ expected, atol=1e-9)
        residual = np.linalg.norm(X - recon, axis=0)
        if max_atoms < 0 and epsilon >= 0.05:
            assert (residual <= epsilon * (1 + 1e-9)).all()


def test_matlab_rounding_and_colour_matrices() -> None:
    np.testing.assert_array_equal(ctsr.matlab_uint8(np.array([-3.0, 0.5, 1.5, 2.5, 254.5, 300.0, np.nan])),
                                  [0, 1, 2, 3, 255, 255, 0])
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(ctsr.rgb2gray_matlab(np.repeat(grey[..., None], 3, axis=2)), grey)
    rgb = np.random.default_rng(2).uniform(0, 1, (4, 5, 3))
    np.testing.assert_allclose(ctsr.yuv_to_rgb(ctsr.rgb_to_yuv(rgb)), rgb, atol=1e-12)


def test_rolling_guidance_keeps_constants_and_aecs_rule() -> None:
    flat = np.full((20, 23), 0.37)
    np.testing.assert_allclose(ctsr.rolling_guidance_filter(flat), flat, atol=1e-12)
    # a difference beyond T picks the larger structure value; within T, the larger SML (s2 here: it has detail)
    s1 = np.full((5, 5), 0.5)
    s2 = np.full((5, 5), 0.5 - 5e-5)
    s2[2, 2] += 2e-5
    s1[0, 0], s2[0, 4] = 0.6, 0.7
    fused = ctsr.aecs(s1, s2, T=9e-5)
    assert fused[0, 0] == 0.6 and fused[0, 4] == 0.7
    assert fused[2, 2] == s2[2, 2] and fused[4, 0] == s2[4, 0]


def test_fusing_three_identical_images_returns_the_image() -> None:
    yy, xx = np.mgrid[0:48, 0:56]
    image = 128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 30 * ((xx - 28) ** 2 + (yy - 20) ** 2 < 150)
    grey = np.clip(np.round(image), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    method = ctsr.CTSRFusion(overcomplete_dct())
    stages = method.fuse_stages([rgb, rgb, rgb])
    out = method.fuse([rgb, rgb, rgb])
    assert out.dtype == np.uint8 and out.shape == (48, 56, 3)
    np.testing.assert_array_equal(out, ctsr.matlab_uint8(stages["fused"] * 255))
    diff = np.abs(out.astype(int) - rgb)
    assert diff.mean() <= 0.5 and diff.max() <= 2, (diff.mean(), diff.max())


def test_shape_and_dtype_on_a_non_square_input() -> None:
    rng = np.random.default_rng(3)
    grey = [np.repeat(rng.integers(0, 256, (37, 50, 1), dtype=np.uint8), 3, axis=2) for _ in range(2)]
    functional = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    method = ctsr.CTSRFusion(overcomplete_dct())
    raw = method.fuse_raw([*grey, functional])
    assert raw.dtype == np.float32 and raw.shape == (37, 50, 3) and np.isfinite(raw).all()
    with pytest.raises(ValueError):
        method.fuse_raw([grey[0], grey[1][:30], functional])


def test_loader_checks_the_dictionary_file(tmp_path: Path) -> None:
    with pytest.raises(PeerWeightsError):
        ctsr.load(tmp_path)
    with pytest.raises(PeerWeightsError):
        ctsr.load(None)


# ---------------------------------------------------------------- golden outputs of the authors' code


@pytest.fixture(scope="module")
def method() -> ctsr.CTSRFusion:
    return ctsr.load(PEERS / "CTSR" / "weights")


def golden(name: str) -> np.ndarray:
    path = PEERS / "CTSR" / "golden" / name
    if path.suffix == ".png":
        from PIL import Image
        return np.array(Image.open(path))
    return np.load(path)


def sources(case: str) -> list[np.ndarray]:
    from PIL import Image
    return [np.array(Image.open(DATA / p).convert("RGB")) for p in CASES[case]]


@needs_shared
def test_dictionary_matches_facts(method: ctsr.CTSRFusion) -> None:
    facts = json.loads((PEERS / "CTSR" / "golden" / "facts.json").read_text())["weights"]["dictionary"]
    assert (ctsr.WEIGHTS.relative_path, ctsr.WEIGHTS.size_bytes, ctsr.WEIGHTS.sha256) == (
        facts["file"], facts["size_bytes"], facts["sha256"])
    assert method.dictionary.shape == (64, 512) and method.dictionary.dtype == np.float64


def check_case(method: ctsr.CTSRFusion, case: str) -> None:
    start = time.perf_counter()
    stages = method.fuse_stages(sources(case))
    seconds = time.perf_counter() - start
    raw = stages["fused"].astype(np.float32)  # what fuse_raw returns
    assert raw.shape == (256, 256, 3)
    report = []
    for ours, name in ((raw, "fused.npy"), (stages["fused"], "fused_f64.npy"),
                       (stages["step1_anat"], "step1_anat.npy"), (stages["fused_y"], "fusedY.npy")):
        diff = np.abs(ours.astype(np.float64) - golden(f"{case}_{name}")) * 255
        report.append(f"{name} mean {diff.mean():.2e} max {diff.max():.2e}")
        assert diff.mean() <= 1.0, (name, diff.mean())
        assert (diff > 1).mean() <= 1e-3, (name, (diff > 1).mean())
    png = np.abs(ctsr.matlab_uint8(stages["fused"] * 255).astype(int) - golden(f"{case}_fused.png"))
    report.append(f"8-bit vs golden png max {png.max()}, {np.count_nonzero(png)} pixels differ")
    assert (png > 1).mean() <= 1e-3
    print(f"\nCTSR {case} ({seconds:.1f} s; grey levels of 255): " + "; ".join(report))


@needs_shared
@pytest.mark.parametrize("case", DEFAULT_CASES)
def test_golden(method: ctsr.CTSRFusion, case: str) -> None:
    check_case(method, case)


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c not in DEFAULT_CASES])
def test_golden_slow(method: ctsr.CTSRFusion, case: str) -> None:
    check_case(method, case)


@needs_shared
def test_fuse_raw_and_fuse_interface(method: ctsr.CTSRFusion) -> None:
    """fuse_raw / fuse through a small crop of a real triplet (the full-size results are checked above)."""
    crop = [s[96:160, 96:168] for s in sources("case18")]
    raw = method.fuse_raw(crop)
    rgb = method.fuse(crop)
    assert raw.dtype == np.float32 and raw.shape == (64, 72, 3)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 72, 3)
    assert np.abs(rgb.astype(int) - ctsr.matlab_uint8(raw.astype(np.float64) * 255)).max() <= 1
