"""Tests of the false-colour measure (paper/false_colour.py, its CLI, and its summary in paper/real_scans_report.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.results_layout import write_case
from data.fusion_rules import rgb_to_ycbcr
from paper.false_colour import GREY_TOLERANCE, chroma_magnitude, false_colour, main
from paper.real_scans_report import false_colour_line, false_colour_summary


def _grey(value: int, size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_chroma_magnitude_is_zero_for_grey_and_the_cb_cr_distance_otherwise() -> None:
    assert np.abs(chroma_magnitude(_grey(77))).max() < 1e-3
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    ycc = rgb_to_ycbcr(red)[0, 0]
    assert math.isclose(chroma_magnitude(red)[0, 0], math.hypot(ycc[1] - 128, ycc[2] - 128), rel_tol=1e-6)


def test_false_colour_counts_only_pixels_where_every_source_is_grey() -> None:
    functional = _grey(0)
    functional[:, 8:] = (220, 60, 0)  # coloured right half: excluded
    sources = [_grey(90), _grey(120), functional]
    fused = _grey(40)
    assert false_colour(fused, sources) < 1e-3
    fused[:, 8:] = (0, 0, 255)  # colour where the functional source has colour: allowed
    assert false_colour(fused, sources) < 1e-3
    fused[:4, :8] = (70, 40, 40)  # a red tint on a quarter of the grey half
    tint = float(chroma_magnitude(fused[:1, :1])[0, 0])
    assert tint > GREY_TOLERANCE and math.isclose(false_colour(fused, sources), tint / 4, rel_tol=1e-5)
    assert math.isnan(false_colour(fused, [_grey(90), _grey(120), np.full((16, 16, 3), (220, 60, 0), np.uint8)]))


def test_summary_means_skip_nan_cases_and_the_line_puts_tfsdiff_first() -> None:
    values = {"tfsdiff": {"a": 2.0, "b": 4.0, "c": float("nan")}, "average": {"a": 0.5, "b": 0.25, "c": 0.0}}
    summary = false_colour_summary(values, {"all": ["a", "b", "c"], "21": ["c"]})
    assert summary["mean"]["all"] == {"tfsdiff": 3.0, "average": 0.25}
    assert summary["mean"]["21"] == {"tfsdiff": None, "average": 0.0}
    assert summary["per_case"]["tfsdiff"]["c"] is None
    line = false_colour_line(summary)
    assert line.index("TFS-Diff (ours) 3.00") < line.index("Bicubic + Average 0.25")


def test_cli_prints_each_folder_and_names_a_folder_without_fused_images(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tfsdiff"
    tinted = _grey(40)
    tinted[..., 0] = 70
    write_case(folder, "a", [_grey(90), _grey(120), _grey(0)], tinted, _grey(40))
    write_case(folder, "b", [_grey(90), _grey(120), _grey(0)], _grey(40), _grey(40))
    assert main([str(folder)]) == 0
    tint = float(chroma_magnitude(tinted)[0, 0])
    assert f"| {folder} | 2 | {tint / 2:.2f} | {tint:.2f} |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main([str(folder), str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: no <id>_fused.png files" in capsys.readouterr().err
