"""Tests of core/fusion_metrics.py: closed forms, scikit-image agreement, LPIPS loading, and reference values."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from core import fusion_metrics as fm

FIXTURE = Path(__file__).parent / "fixtures" / "reference_metrics_harvard.json"
HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "harvard_trimodal"


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
    ref = _random(1)
    img = ref + 10.0
    assert fm.mse(ref, img) == pytest.approx(100.0)
    assert fm.mae(ref, img) == pytest.approx(10.0)
    assert fm.rmse(ref, img) == pytest.approx(10.0)
    assert fm.psnr(ref, img) == pytest.approx(10 * math.log10(255**2 / 100))
    assert fm.psnr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="shape"):
        fm.mse(ref, ref[:-1])


def test_mse_psnr_ssim_agree_with_scikit_image() -> None:
    ref, img = _random(2), _random(3)
    assert fm.mse(ref, img) == pytest.approx(mean_squared_error(ref, img), rel=1e-12)
    assert fm.psnr(ref, img) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=255), rel=1e-12)
    assert fm.ssim(ref, img) == pytest.approx(structural_similarity(ref, img, data_range=255), rel=1e-12)
    assert fm.ssim(ref, ref) == pytest.approx(1.0)


def test_viff_identity_is_one_and_flat_fused_is_zero() -> None:
    ref = _random(4, (64, 64))
    assert fm.viff(ref, ref) == pytest.approx(1.0, abs=1e-9)
    assert fm.viff(ref, np.full_like(ref, 100.0)) == pytest.approx(0.0, abs=1e-12)
    assert fm.viff(np.full_like(ref, 7.0), ref) == 1.0  # no information in the reference: 0 / 0 -> 1


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
    assert fm.mi_pair(a, b, a) == pytest.approx(math.log(2))


def test_qabf_of_a_perfect_fusion_is_the_saturated_constant() -> None:
    src = _random(5)
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert fm.qabf(src, src, src) == pytest.approx(expected, rel=1e-12)
    assert fm.qabf(src, _random(6), src) < expected


def test_scd_and_cc_closed_form() -> None:
    a, b = _random(7), _random(8)
    assert fm.scd(a, b, a + b) == pytest.approx(2.0)
    assert fm.cc(a, a, 2 * a + 3) == pytest.approx(1.0)
    assert fm.cc(a, -a, a) == pytest.approx(0.0, abs=1e-12)


def _rgb(seed: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_score_case_aggregates_over_sources_and_pairs() -> None:
    sources, gt = [_rgb(10), _rgb(11), _rgb(12)], _rgb(13)
    fused = sources[0]
    grey = [fm.to_grey(s) for s in sources]
    scores = fm.score_case(fused, sources, gt, "sources", "all", None)
    assert list(scores) == list(fm.metric_names("all"))
    assert scores["MSE"] == pytest.approx(np.mean([fm.mse(g, grey[0]) for g in grey]))
    assert scores["PSNR"] == math.inf  # one source equals the fused image
    pairs = list(itertools.combinations(grey, 2))
    assert scores["Qabf"] == pytest.approx(np.mean([fm.qabf(a, b, grey[0]) for a, b in pairs]))
    assert scores["MI"] == pytest.approx(np.mean([fm.mi_pair(a, b, grey[0]) for a, b in pairs]))
    assert math.isnan(scores["LPIPS"])
    by_gt = fm.score_case(fused, sources, gt, "gt", "paper", None)
    assert list(by_gt) == list(fm.PAPER_METRICS)
    assert by_gt["SSIM"] == pytest.approx(fm.ssim(fm.to_grey(gt), grey[0]))
    assert by_gt["AG"] == scores["AG"]
    with pytest.raises(ValueError, match="ground-truth"):
        fm.score_case(fused, sources, None, "gt", "paper", None)


def test_lpips_is_unavailable_without_weights_and_never_downloads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert fm.alexnet_weights_path() == tmp_path / "hub" / "checkpoints" / fm.ALEXNET_FILE
    assert fm.load_lpips() is None


def test_lpips_loads_the_cached_alexnet_file(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = fm.alexnet_weights_path()
    path.parent.mkdir(parents=True)
    alexnet = torchvision.models.alexnet(weights=None)
    torch.save({k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}, path)
    scorer = fm.load_lpips()
    assert scorer is not None
    torch.testing.assert_close(scorer.model.net.slice1[0].weight, alexnet.features[0].weight)
    a, b = _rgb(20, (64, 64)), _rgb(21, (64, 64))
    assert scorer(a, a) == pytest.approx(0.0, abs=1e-6)
    assert scorer(a, b) > 0.0
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="alexnet-owt"):
        fm.load_lpips()


@pytest.mark.skipif(not HARVARD.is_dir(), reason=f"the real Harvard images are not at {HARVARD} (CI provides them "
                                                  "beside the clone; they may not be copied into the repository)")
def test_reference_values_on_real_harvard_cases() -> None:
    reference = json.loads(FIXTURE.read_text(encoding="utf-8"))
    per_source = {"VIFF(source->fused)": fm.viff, "SSIM(skimage, data_range=255)": fm.ssim, "MSE": fm.mse,
                  "MAE": fm.mae, "RMSE": fm.rmse, "PSNR(peak 255)": fm.psnr}
    no_ref = {"EN": fm.entropy, "SD": fm.standard_deviation, "SF": fm.spatial_frequency, "AG": fm.average_gradient}
    pair = {"Qabf": fm.qabf, "MI": fm.mi_pair, "SCD": fm.scd, "CC": fm.cc}
    for case, expected in reference.items():
        names = list(expected["per_source"])
        srcs = [fm.to_grey(np.asarray(Image.open(HARVARD / n).convert("RGB"))) for n in names]
        fused = np.round((srcs[0] + srcs[1] + srcs[2]) / 3)
        for name, fn in no_ref.items():
            assert fn(fused) == pytest.approx(expected["no_reference"][name], rel=1e-4), (case, name)
        for src_name, src in zip(names, srcs):
            for name, fn in per_source.items():
                assert fn(src, fused) == pytest.approx(expected["per_source"][src_name][name], rel=1e-4), (
                    case, src_name, name)
        for name, fn in pair.items():
            value = fn(srcs[0], srcs[1], fused)
            assert value == pytest.approx(expected["pair_first_two_sources"][name], rel=1e-4), (case, name)
