"""Tests of metrics/fusion.py: closed forms in both conventions, scikit-image agreement, and the reference
evaluator's per-source values on the real Harvard cases (paper convention). The CDDFuse convention's reference values
and the hand-derived synthetic fixture: tests/test_metric_conventions.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from metrics import fusion as fm

FIXTURES = Path(__file__).parent / "fixtures"
HARVARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "harvard_trimodal"
NO_HARVARD = f"the real Harvard images are not at {HARVARD} (CI provides them beside the clone; they may not be " \
             "copied into the repository)"


def _random(seed: int, shape: tuple[int, ...] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float64)


def _ramp(step: float, shape: tuple[int, int] = (20, 30)) -> np.ndarray:
    return np.tile(np.arange(shape[1], dtype=np.float64) * step, (shape[0], 1))


def test_to_grey_is_rounded_bt601_luma_and_keeps_grey_images() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    expected = np.round(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_allclose(fm.to_grey(rgb), expected, atol=1e-9)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(fm.to_grey(grey), grey.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        fm.to_grey(np.zeros((4, 4, 2)))


def test_error_metrics_closed_form() -> None:
    ref = _random(1) * 0.9  # below 230
    img = ref + 10.0
    img[0, 0], ref[0, 0] = 250.0, 240.0  # max(img) = 250
    assert fm.mse(img, ref) == pytest.approx(100.0)
    assert fm.mae(img, ref) == pytest.approx(10.0)
    assert fm.rmse(img, ref) == pytest.approx(10.0)
    assert fm.psnr(img, ref) == pytest.approx(10 * math.log10(255**2 / 100))
    assert fm.psnr(img, ref, "cddfuse") == pytest.approx(10 * math.log10(250**2 / 100))
    assert fm.psnr(ref, ref) == math.inf and fm.psnr(ref, ref, "cddfuse") == math.inf
    assert fm.psnr_from_mse(4.0, 0.0) == -math.inf  # an all-black fused image under peak max(F)
    with pytest.raises(ValueError, match="shape"):
        fm.mse(ref, ref[:-1])
    with pytest.raises(ValueError, match="unknown metric convention 'matlab'"):
        fm.psnr(img, ref, "matlab")


def test_mse_psnr_ssim_agree_with_scikit_image() -> None:
    img, ref = _random(2), _random(3)
    assert fm.mse(img, ref) == pytest.approx(mean_squared_error(ref, img), rel=1e-12)
    assert fm.psnr(img, ref) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=255), rel=1e-12)
    assert fm.ssim(img, ref) == pytest.approx(structural_similarity(ref, img, data_range=255), rel=1e-12)
    assert fm.ssim(ref, ref) == pytest.approx(1.0)


def test_cddfuse_ssim_is_scikit_image_with_data_range_2() -> None:
    img, ref = _random(4), _random(5)
    expected = structural_similarity(img, ref, data_range=2.0)
    assert fm.ssim(img, ref, "cddfuse") == pytest.approx(expected, rel=1e-12)
    assert abs(fm.ssim(img, ref, "cddfuse") - fm.ssim(img, ref)) > 1e-3  # the conventions do differ
    assert fm.ssim_pair(img, ref, img, "cddfuse") == pytest.approx(expected + 1.0, rel=1e-12)
    with pytest.raises(ValueError, match="7x7"):
        fm.ssim(img[:6], ref[:6], "cddfuse")


def test_viff_identity_is_one_and_flat_fused_is_zero() -> None:
    ref = _random(4, (64, 64))
    assert fm.viff(ref, ref) == pytest.approx(1.0, abs=1e-9)
    assert fm.viff(np.full_like(ref, 100.0), ref) == pytest.approx(0.0, abs=1e-12)
    assert fm.viff(ref, np.full_like(ref, 7.0)) == 1.0  # no information in the reference: 0 / 0 -> 1
    assert fm.viff_pair(ref, ref, ref) == pytest.approx(2.0, abs=1e-9)


def test_no_reference_metrics_closed_form() -> None:
    ramp = _ramp(3.0)
    assert fm.average_gradient(ramp) == pytest.approx(3.0 / math.sqrt(2))
    assert fm.spatial_frequency(ramp) == pytest.approx(3.0)
    halves = np.zeros((10, 10))
    halves[:, 5:] = 100.0
    assert fm.standard_deviation(halves) == pytest.approx(50.0)
    assert fm.entropy(halves) == pytest.approx(1.0)
    assert fm.entropy(np.full((5, 5), 42.0)) == 0.0
    assert fm.entropy(np.arange(256.0).reshape(16, 16)) == pytest.approx(8.0)


def test_mutual_information_closed_form() -> None:
    halves = np.zeros((10, 10))
    halves[:, 5:] = 200.0
    assert fm.mutual_information(halves, halves) == pytest.approx(math.log(2))
    a = np.tile([[0.0, 0.0], [9.0, 9.0]], (4, 4))
    b = np.tile([[0.0, 9.0], [0.0, 9.0]], (4, 4))
    assert fm.mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    assert fm.mi_pair(a, a, b) == pytest.approx(math.log(2))


def test_qabf_of_a_perfect_fusion_and_the_cddfuse_edge_case() -> None:
    src = _random(5)
    q_a = 0.9879 / (1 + math.exp(-22 * 0.2))
    assert fm.qabf(src, src, src) == pytest.approx(0.9994 / (1 + math.exp(-15 * 0.5)) * q_a, rel=1e-12)
    assert fm.qabf(src, src, _random(6)) < fm.qabf(src, src, src)
    # CDDFuse puts G = gF where gA == gF (here everywhere): Q_g(gF), which saturates at 0.9994 for gF >= 2
    g_f, _ = fm._sobel(src)
    expected = float(np.sum(0.9994 / (1 + np.exp(-15 * (g_f - 0.5))) * q_a * g_f) / np.sum(g_f))
    assert fm.qabf(src, src, src, "cddfuse") == pytest.approx(expected, rel=1e-12)


def test_scd_and_cc_closed_form() -> None:
    a, b = _random(7), _random(8)
    assert fm.scd(a + b, a, b) == pytest.approx(2.0)
    assert fm.cc(2 * a + 3, a, a) == pytest.approx(1.0)
    assert fm.cc(a, a, -a) == pytest.approx(0.0, abs=1e-12)


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return fm.to_grey(np.asarray(img.convert("RGB")))


@pytest.mark.skipif(not HARVARD.is_dir(), reason=NO_HARVARD)
def test_reference_values_on_real_harvard_cases() -> None:
    reference = json.loads((FIXTURES / "reference_metrics_harvard.json").read_text(encoding="utf-8"))
    per_source = {"VIFF(source->fused)": fm.viff, "SSIM(skimage, data_range=255)": fm.ssim, "MSE": fm.mse,
                  "MAE": fm.mae, "RMSE": fm.rmse, "PSNR(peak 255)": fm.psnr}
    no_ref = {"EN": fm.entropy, "SD": fm.standard_deviation, "SF": fm.spatial_frequency, "AG": fm.average_gradient}
    pair = {"Qabf": fm.qabf, "MI": fm.mi_pair, "SCD": fm.scd, "CC": fm.cc}
    for case, expected in reference.items():
        names = list(expected["per_source"])
        srcs = [_grey(HARVARD / n) for n in names]
        fused = np.round((srcs[0] + srcs[1] + srcs[2]) / 3)
        for name, fn in no_ref.items():
            assert fn(fused) == pytest.approx(expected["no_reference"][name], rel=1e-4), (case, name)
        for src_name, src in zip(names, srcs):
            for name, fn in per_source.items():
                assert fn(fused, src) == pytest.approx(expected["per_source"][src_name][name], rel=1e-4), (
                    case, src_name, name)
        for name, fn in pair.items():
            value = fn(fused, srcs[0], srcs[1])
            assert value == pytest.approx(expected["pair_first_two_sources"][name], rel=1e-4), (case, name)
