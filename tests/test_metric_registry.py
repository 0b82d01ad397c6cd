"""The one metric registry (metrics.registry.METRICS): every registered metric runs on a small image pair with the value
range and direction it declares and a label naming its colour space and convention; eval.py's suites and
validation's selection are registry names; validation's log lines are built from the registry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from metrics.fusion import CONVENTIONS
from metrics.registry import METRICS, VALIDATION_METRICS, MetricSpec
from metrics.scoring import ABLATION_METRICS, EXTRA_METRICS, PAPER_METRICS, score_metrics
from model.evaluation import METRIC_FIELDS, CaseResult, Evaluation

SIZE = (48, 48)
NAMES = METRICS.names()
# the ideal value of each full-reference metric for a perfect fusion (fused == reference)
PERFECT = {"MSE": 0.0, "MAE": 0.0, "RMSE": 0.0, "PSNR": math.inf, "SSIM": 1.0, "VIF": 1.0, "PSNR_RGB": math.inf,
           "SSIM_RGB": 1.0}


def _images() -> tuple[np.ndarray, list[np.ndarray]]:
    """A ground truth (the mean of three noisy copies of a blocky image) and those three sources, (48, 48, 3)."""
    rng = np.random.default_rng(5)
    base = np.repeat(np.repeat(rng.integers(0, 256, (12, 12, 3)), 4, axis=0), 4, axis=1).astype(float)
    sources = [np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8) for _ in range(3)]
    gt = np.mean(sources, axis=0).round().astype(np.uint8)
    return gt, sources


def _better(spec: MetricSpec, a: float, b: float) -> bool:
    """a is at least as good as b in the metric's declared direction."""
    return a >= b if spec.higher_is_better else a <= b


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_runs_with_its_range_direction_and_label(name: str) -> None:
    spec = METRICS.get(name)
    assert spec.name == name and isinstance(spec.higher_is_better, bool)
    gt, sources = _images()
    good = gt.copy()  # a perfect fusion
    noisy = np.clip(gt + np.random.default_rng(6).normal(0, 60, gt.shape), 0, 255).astype(np.uint8)
    for convention in CONVENTIONS:
        for reference in ("gt", "sources"):
            qualifier = spec.qualifier(convention)
            if reference == "gt" and spec.kind == "full_reference":  # one reference: nothing is summed
                qualifier = qualifier.replace(", sum over 2 sources", "")
            assert spec.label(convention, reference) == f"{spec.title or spec.name} ({qualifier})"
            assert qualifier.startswith(f"{spec.space}")  # every label names its colour space first
            if spec.kind == "lpips":
                continue
            perfect = score_metrics([name], good, sources, gt, reference, None, convention)[name]
            bad = score_metrics([name], noisy, sources, gt, reference, None, convention)[name]
            assert isinstance(bad, float) and math.isfinite(bad), (convention, reference, bad)
            if spec.kind in ("full_reference", "rgb_full_reference", "source_pairs"):
                assert _better(spec, perfect, bad), (convention, reference, perfect, bad)
            if reference == "gt" and spec.kind != "source_pairs" and name in PERFECT and convention == "paper":
                assert perfect == pytest.approx(PERFECT[name])
    if spec.kind == "lpips":
        assert math.isnan(score_metrics([name], good, sources, gt, "gt", None)[name])  # no network: n/a
        scorer = lambda img, ref: float(np.mean(np.abs(img.astype(float) - ref.astype(float)))) / 255  # noqa: E731
        assert score_metrics([name], good, sources, gt, "gt", scorer)[name] == 0.0
        assert _better(spec, 0.0, score_metrics([name], noisy, sources, gt, "gt", scorer)[name])
    if spec.kind == "no_reference":  # detail raises it (AG carries the paper's down arrow, so no direction here)
        flat = np.full_like(gt, 128)
        assert score_metrics([name], flat, sources, gt, "gt", None)[name] <= \
            score_metrics([name], noisy, sources, gt, "gt", None)[name]


def test_selections_name_registered_metrics_and_fields_are_unique() -> None:
    for names in (PAPER_METRICS, ABLATION_METRICS, EXTRA_METRICS, VALIDATION_METRICS):
        assert set(names) <= set(NAMES)
    assert set(ABLATION_METRICS) == set(PAPER_METRICS)
    assert len({METRICS.get(n).field for n in NAMES if n != "LPIPS"}) == len(NAMES) - 1
    assert METRIC_FIELDS == ("psnr_rgb", "ssim_rgb", "psnr_grey", "ssim_grey")  # TensorBoard tags val/<field>
    with pytest.raises(ValueError, match="unknown metric 'PSNRX'; expected one of 'MSE'"):
        METRICS.get("PSNRX")
    with pytest.raises(ValueError, match="registered twice"):
        METRICS.add("PSNR", METRICS.get("PSNR"))


def test_validation_log_lines_come_from_the_registry() -> None:
    model = {"psnr_rgb": 20.123, "ssim_rgb": 0.81234, "psnr_grey": 22.456, "ssim_grey": 0.85678}
    case = CaseResult("c1", model, {f: v - 1 for f, v in model.items()})
    nan_case = CaseResult("c2", dict.fromkeys(model, math.nan), dict.fromkeys(model, math.nan))
    assert (case.psnr_grey, case.baseline_ssim_rgb) == (22.456, model["ssim_rgb"] - 1)
    with pytest.raises(AttributeError):
        case.lpips_rgb  # noqa: B018
    assert case.describe() == ("PSNR (grey, peak 255) 22.46 dB, SSIM (grey, data_range 255) 0.8568; "
                               "PSNR (RGB, peak 255) 20.12 dB, SSIM (RGB, data_range 255) 0.8123")
    evaluation = Evaluation((case, nan_case), (), None)
    assert list(evaluation.summary()) == [*METRIC_FIELDS, *(f"baseline_{f}" for f in METRIC_FIELDS)]
    assert evaluation.describe() == (
        "2 cases; model: PSNR (grey, peak 255) 22.46 dB, SSIM (grey, data_range 255) 0.8568, PSNR (RGB, peak 255) "
        "20.12 dB, SSIM (RGB, data_range 255) 0.8123; bicubic-then-fuse baseline: PSNR (grey, peak 255) 21.46 dB, "
        "SSIM (grey, data_range 255) -0.1432, PSNR (RGB, peak 255) 19.12 dB, SSIM (RGB, data_range 255) -0.1877 "
        "(NaN without ground truth)")
    assert not Evaluation((case,), (), None).describe().endswith(")")  # every case has its ground truth: no note
