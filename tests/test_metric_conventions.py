"""Both metric conventions pinned: hand-derived values on synthetic images (tests/fixtures, always run), the CDDFuse
evaluator's own values on the real Harvard cases (../shared, skipped when absent) through metrics/fusion.py and
through eval.py, the aggregation of metrics/scoring.py, the labels of the tables, and the validation metrics."""
from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval as eval_cli
from core.results_layout import write_case
from metrics import fusion as fm
from metrics.registry import PSNR_GREY_LABEL, SSIM_GREY_LABEL, grey_psnr_ssim, psnr_rgb, ssim_rgb
from metrics.scoring import METRICS, metric_label, metric_names, score_case

SYNTHETIC = Path(__file__).parent / "fixtures" / "metric_conventions_synthetic.json"
SHARED = Path(__file__).resolve().parents[2] / "shared"
HARVARD = SHARED / "data" / "harvard_trimodal"
CDDFUSE_REFERENCE = SHARED / "reference_metrics" / "harvard_trimodal_cddfuse_convention.json"
needs_cddfuse_reference = pytest.mark.skipif(
    not CDDFUSE_REFERENCE.is_file() or not HARVARD.is_dir(),
    reason=f"the CDDFuse reference values ({CDDFUSE_REFERENCE}) or the Harvard images ({HARVARD}) are absent; CI "
           "provides ../shared beside the clone, and they may not be copied into the repository")


def _expected(convention: str) -> dict:
    return json.loads(SYNTHETIC.read_text(encoding="utf-8"))["expected"][convention]


def _synthetic() -> dict[str, np.ndarray]:
    """The grey images described in the fixture's "images" entry."""
    ramp = np.tile(60.0 + 4.0 * np.arange(32), (32, 1))
    impulse = np.zeros((16, 16))
    impulse[8, 8] = 10.0
    return {"F": ramp, "S1": ramp + 10, "S2": ramp - 20, "S3": ramp + 30, "flat120": np.full((32, 32), 120.0),
            "impulse": impulse, "zeros": np.zeros((16, 16))}


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------------------------- synthetic fixture

@pytest.mark.parametrize("convention", fm.CONVENTIONS)
def test_metric_functions_match_hand_derived_values(convention: fm.Convention) -> None:
    expected, im = _expected(convention), _synthetic()
    f, s1, s2 = im["F"], im["S1"], im["S2"]
    got = {
        "PSNR(F, S1)": fm.psnr(f, s1, convention),
        "SSIM(F, S1)": fm.ssim(f, s1, convention),
        "SSIM(F, S2)": fm.ssim(f, s2, convention),
        "SSIM(F, flat120)": fm.ssim(f, im["flat120"], convention),
        "psnr_pair(F, S1, S2)": fm.psnr_pair(f, s1, s2, convention),
        "ssim_pair(F, S1, S2)": fm.ssim_pair(f, s1, s2, convention),
        "qabf(impulse, impulse, zeros)": fm.qabf(im["impulse"], im["impulse"], im["zeros"], convention),
    }
    for name, value in got.items():
        assert value == pytest.approx(expected[name], rel=1e-9), name


@pytest.mark.parametrize("convention", fm.CONVENTIONS)
def test_score_case_aggregates_as_documented_on_hand_derived_values(convention: fm.Convention) -> None:
    expected, im = _expected(convention)["score_case(reference=sources)"], _synthetic()
    sources = [_rgb(im[k]) for k in ("S1", "S2", "S3")]
    scores = score_case(_rgb(im["F"]), sources, None, "sources", "all", None, convention)
    assert list(scores) == list(metric_names("all"))
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-9), name
    assert math.isnan(scores["LPIPS"])


def test_conventions_differ_where_documented_and_nowhere_else() -> None:
    im = _synthetic()
    sources = [_rgb(im[k]) for k in ("S1", "S2", "S3")]
    for reference, gt in (("sources", None), ("gt", _rgb(im["S1"]))):
        paper = score_case(_rgb(im["F"]), sources, gt, reference, "all", None, "paper")
        cddfuse = score_case(_rgb(im["F"]), sources, gt, reference, "all", None, "cddfuse")
        differ = {name for name in paper if not (paper[name] == cddfuse[name] or math.isnan(paper[name]))}
        assert differ == ({"PSNR", "SSIM", "VIF", "Qabf"} if reference == "sources" else {"PSNR", "SSIM", "Qabf"})
    with pytest.raises(ValueError, match="unknown metric convention"):
        score_case(_rgb(im["F"]), sources, None, "sources", "paper", None, "CDDFuse")


# ----------------------------------------------------------------------------------------------- CDDFuse reference

def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return fm.to_grey(np.asarray(img.convert("RGB")))


def _harvard_cases() -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]]:
    """case -> (grey sources by file name, fused grey image by rule, the reference entry of that case)."""
    reference = json.loads(CDDFUSE_REFERENCE.read_text(encoding="utf-8"))
    cases = {}
    for case, rules in reference["cases"].items():
        sources = {p.name: _grey(p) for p in sorted(HARVARD.glob(f"{case}_*.png"))}
        a, b, c = sources.values()
        cases[case] = (sources, {"mean": np.round((a + b + c) / 3), "max": np.maximum(np.maximum(a, b), c)}, rules)
    return cases


PAIR_FORMS = {"PSNR": lambda f, a, b: fm.psnr_pair(f, a, b, "cddfuse"), "MSE": fm.mse_pair,
              "SSIM": lambda f, a, b: fm.ssim_pair(f, a, b, "cddfuse"), "VIFF": fm.viff_pair, "MI": fm.mi_pair,
              "Qabf": lambda f, a, b: fm.qabf(f, a, b, "cddfuse"), "CC": fm.cc, "SCD": fm.scd}
NO_REFERENCE = {"EN": fm.entropy, "SD": fm.standard_deviation, "SF": fm.spatial_frequency, "AG": fm.average_gradient}


@needs_cddfuse_reference
def test_cddfuse_convention_reproduces_the_reference_evaluator_per_pair() -> None:
    checked = 0
    for case, (sources, fused, rules) in _harvard_cases().items():
        for rule, expected in rules.items():
            for name, fn in NO_REFERENCE.items():
                assert fn(fused[rule]) == pytest.approx(expected[name], rel=1e-6), (case, rule, name)
            for pair, values in expected["pairs"].items():
                a, b = (sources[n] for n in pair.split("+"))
                for name, fn in PAIR_FORMS.items():
                    assert fn(fused[rule], a, b) == pytest.approx(values[name], rel=1e-6), (case, rule, pair, name)
                    checked += 1
    assert checked == 3 * 2 * 3 * len(PAIR_FORMS)


@needs_cddfuse_reference
def test_eval_cddfuse_convention_is_the_reference_averaged_over_the_source_pairs(tmp_path: Path) -> None:
    cases = _harvard_cases()
    for case, (sources, fused, _) in cases.items():
        for rule, image in fused.items():
            write_case(tmp_path / "rules", f"{case}_{rule}", [_rgb(s) for s in sources.values()], _rgb(image))
    prefix = tmp_path / "table"
    code = eval_cli.main([str(tmp_path / "rules"), "--reference", "sources", "--suite", "all", "--convention",
                          "cddfuse", "--out", str(prefix), "--no-progress"])
    assert code == 0
    with open(f"{prefix}_per_image.csv", newline="", encoding="utf-8") as f:
        rows = {row["case_id"]: row for row in csv.DictReader(f)}
    columns = {"PSNR": "PSNR", "MSE": "MSE", "SSIM": "SSIM", "VIFF": "VIF", "MI": "MI", "Qabf": "Qabf", "CC": "CC",
               "SCD": "SCD"}
    for case, (_, fused, rules) in cases.items():
        for rule, expected in rules.items():
            row = rows[f"{case}_{rule}"]
            for name, column in columns.items():
                mean = float(np.mean([values[name] for values in expected["pairs"].values()]))
                assert float(row[column]) == pytest.approx(mean, rel=1e-6), (case, rule, name)
            for name in NO_REFERENCE:
                assert float(row[name]) == pytest.approx(expected[name], rel=1e-6), (case, rule, name)


# ----------------------------------------------------------------------------------------------- labels and tables

def test_labels_name_colour_space_and_convention() -> None:
    assert metric_label("PSNR", "paper") == "PSNR (grey, peak 255)"
    assert metric_label("PSNR", "cddfuse") == "PSNR (grey, peak max(F))"
    assert metric_label("SSIM", "paper") == "SSIM (grey, data_range 255)"
    assert metric_label("SSIM", "cddfuse", "sources") == "SSIM (grey, data_range 2, sum over 2 sources)"
    assert metric_label("SSIM", "cddfuse", "gt") == "SSIM (grey, data_range 2)"
    assert metric_label("LPIPS", "paper") == "LPIPS (RGB, AlexNet)"
    assert metric_label("Qabf", "cddfuse") == "Qabf (grey, GAF = gF)"
    assert all(f"({METRICS.get(n).space}" in metric_label(n, c) for n in METRICS.names() for c in fm.CONVENTIONS)
    assert all("grey" in metric_label(n, c) for n in metric_names("all") if n != "LPIPS" for c in fm.CONVENTIONS)
    assert (PSNR_GREY_LABEL, SSIM_GREY_LABEL) == (metric_label("PSNR", "paper"), metric_label("SSIM", "paper"))


def test_eval_tables_name_the_convention_in_title_notes_and_columns(tmp_path: Path,
                                                                    make_results: Callable[..., None]) -> None:
    make_results(tmp_path / "res" / "pca", ["a", "b"], 0)
    for convention, name in (("paper", "metrics_sources"), ("cddfuse", "metrics_sources_cddfuse")):
        assert eval_cli.main([str(tmp_path / "res" / "pca"), "--reference", "sources", "--convention", convention,
                              "--no-progress"]) == 0
        markdown = (tmp_path / "res" / "pca" / f"{name}.md").read_text(encoding="utf-8")
        assert f"(reference: sources, convention: {convention})" in markdown
        assert f"Convention: {convention} (" in markdown
        columns = [f"{metric_label(m, convention, 'sources')} {'↑' if METRICS.get(m).higher_is_better else '↓'}"
                   for m in metric_names("paper")]
        assert "| Method | " + " | ".join(columns) + " |" in markdown.splitlines()
        latex = (tmp_path / "res" / "pca" / f"{name}.tex").read_text(encoding="utf-8")
        assert f"convention: {convention}" in latex
        summary = (tmp_path / "res" / "pca" / f"{name}.csv").read_text(encoding="utf-8").splitlines()
        assert summary[0].endswith(",label") and summary[1].endswith(metric_label("MSE", convention, "sources"))
    paper = (tmp_path / "res" / "pca" / "metrics_sources.md").read_text(encoding="utf-8")
    assert "PSNR (grey, peak 255) ↑" in paper and "mean over the three sources" in paper
    cddfuse = (tmp_path / "res" / "pca" / "metrics_sources_cddfuse.md").read_text(encoding="utf-8")
    assert "PSNR (grey, peak max(F)) ↑" in cddfuse and "averaged over the three source pairs" in cddfuse


# ----------------------------------------------------------------------------------------------- validation metrics

def test_rgb_metrics_are_channel_wise_and_pinned_to_closed_forms() -> None:
    ref = np.random.default_rng(1).integers(20, 236, (24, 24, 3), dtype=np.uint8)
    img = ref.copy()
    img[..., 0] += 10  # MSE over all channels: 100 / 3
    assert psnr_rgb(img, ref) == pytest.approx(10 * math.log10(255**2 * 3 / 100))
    assert psnr_rgb(ref, ref) == math.inf and ssim_rgb(ref, ref) == pytest.approx(1.0)
    assert ssim_rgb(img, ref) == pytest.approx((fm.ssim(img[..., 0], ref[..., 0]) + 2) / 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr_rgb(ref[..., 0], ref[..., 0])
    with pytest.raises(TypeError, match="uint8"):
        ssim_rgb(img.astype(np.float32), ref)


@pytest.mark.parametrize("convention", fm.CONVENTIONS)
def test_grey_psnr_ssim_is_what_eval_reports_against_the_ground_truth(convention: fm.Convention) -> None:
    rng = np.random.default_rng(2)
    fused, gt, *sources = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    scores = score_case(fused, sources, gt, "gt", "paper", None, convention)
    assert grey_psnr_ssim(fused, gt, convention) == (scores["PSNR"], scores["SSIM"])
    assert grey_psnr_ssim(gt, gt) == (math.inf, pytest.approx(1.0))
    assert grey_psnr_ssim(fused, gt)[0] != psnr_rgb(fused, gt)


def test_two_source_pairs_are_the_three_combinations() -> None:
    im = _synthetic()
    sources = [im["S1"], im["S2"], im["S3"]]
    scores = score_case(_rgb(im["F"]), [_rgb(s) for s in sources], None, "sources", "all", None, "cddfuse")
    pairs = list(itertools.combinations(sources, 2))
    assert scores["Qabf"] == pytest.approx(np.mean([fm.qabf(im["F"], a, b, "cddfuse") for a, b in pairs]))
    assert scores["PSNR"] == pytest.approx(np.mean([fm.psnr_pair(im["F"], a, b, "cddfuse") for a, b in pairs]))
