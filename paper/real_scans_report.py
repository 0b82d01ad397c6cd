"""The numbers of the real-scan benchmark (``paper.real_scans``): groups of cases by subject, the best baseline, the
margins of TFS-Diff over it, the issue's targets, and the Markdown and JSON they are written as.

* Groups: ``all`` (every scored case), then one per subject that the dataset manifest records for a case (numeric
  order), then ``other`` for the cases whose subject is unknown.
* Best baseline of a group: the bicubic-then-fuse rule with the highest mean grey PSNR (paper convention) over the
  group's cases; margins are TFS-Diff's mean minus that baseline's, for PSNR (dB) and SSIM.
* False colour (``paper.false_colour``): each method's mean over a group's cases (cases without a pixel where all
  inputs are grey left out); reported, not a target.
* Targets (issue 12): over all cases, PSNR margin >= 1.0 dB and SSIM margin > 0; for each of subjects 21 and 28,
  PSNR and SSIM margins > 0 (a subject without scored cases fails the target: it was not measured).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from metrics.scoring import MethodScores
from metrics.tables import MODEL_RUN, ScaleSection, display_name
from paper.false_colour import GREY_TOLERANCE

ALL = "all"
OTHER = "other"
TARGET_PSNR_MARGIN_DB = 1.0
TARGET_SUBJECTS = ("21", "28")
MARGIN_METRICS = ("PSNR", "SSIM")
CHECK_LABELS = {"psnr_margin_at_least_1_db": f"PSNR >= {TARGET_PSNR_MARGIN_DB} dB above the best baseline",
                "ssim_above_best_baseline": "SSIM above it",
                **{f"subject_{s}_above_best_baseline": f"subject {s} above it (PSNR and SSIM)"
                   for s in TARGET_SUBJECTS}}


def case_groups(case_ids: Sequence[str], subject_of: Mapping[str, str | None]) -> dict[str, list[str]]:
    """``all`` -> every case, then subject -> its cases (numeric order), then ``other`` -> cases of unknown subject
    (only groups that have cases)."""
    groups: dict[str, list[str]] = {ALL: list(case_ids)}
    subjects = sorted({s for c in case_ids if (s := subject_of.get(c)) is not None}, key=lambda s: (len(s), s))
    for subject in subjects:
        groups[subject] = [c for c in case_ids if subject_of.get(c) == subject]
    unknown = [c for c in case_ids if subject_of.get(c) is None]
    if unknown:
        groups[OTHER] = unknown
    return groups


def group_title(group: str) -> str:
    """The section title of a group in the Markdown tables."""
    if group == ALL:
        return "All real test cases"
    return "Subject unknown (other)" if group == OTHER else f"Subject {group}"


def group_sections(methods: Sequence[MethodScores], groups: Mapping[str, Sequence[str]],
                   metrics: tuple[str, ...]) -> list[ScaleSection]:
    """One table section per group, each with every method's scores of the group's cases."""
    return [ScaleSection(group_title(g), tuple(m.select(ids) for m in methods), metrics) for g, ids in groups.items()]


def margins(methods: Sequence[MethodScores]) -> dict[str, Any]:
    """The best baseline of ``methods`` (by mean grey PSNR) and TFS-Diff's PSNR / SSIM margins over it."""
    model = next(m for m in methods if m.method == MODEL_RUN)
    best = max((m for m in methods if m.method != MODEL_RUN), key=lambda m: m.mean("PSNR"))
    result: dict[str, Any] = {"best_baseline": best.method, "best_baseline_name": display_name(best.method),
                              "cases": len(model.case_ids)}
    for metric in MARGIN_METRICS:
        key = metric.lower()
        result[f"tfsdiff_{key}"] = model.mean(metric)
        result[f"baseline_{key}"] = best.mean(metric)
        result[f"{key}_margin"] = model.mean(metric) - best.mean(metric)
    return result


def targets(margins_by_group: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the issue's targets are met, each condition on its own and ``met`` for all of them."""
    overall = margins_by_group[ALL]
    checks: dict[str, Any] = {
        "psnr_margin_at_least_1_db": bool(overall["psnr_margin"] >= TARGET_PSNR_MARGIN_DB),
        "ssim_above_best_baseline": bool(overall["ssim_margin"] > 0),
    }
    for subject in TARGET_SUBJECTS:
        group = margins_by_group.get(subject)
        checks[f"subject_{subject}_above_best_baseline"] = (
            None if group is None else bool(group["psnr_margin"] > 0 and group["ssim_margin"] > 0))
    checks["met"] = all(value is True for value in checks.values())
    checks["rule"] = (f"mean PSNR >= {TARGET_PSNR_MARGIN_DB} dB and mean SSIM above the best bicubic-then-fuse "
                      f"baseline over all cases; PSNR and SSIM above it for each of subjects "
                      f"{' and '.join(TARGET_SUBJECTS)} (null: no case of the subject scored, which fails the target)")
    return checks


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def per_case(methods: Sequence[MethodScores]) -> dict[str, dict[str, dict[str, float | None]]]:
    """method -> case id -> metric -> value (None where not finite, e.g. LPIPS without its weights)."""
    return {m.method: {case: {metric: _finite(float(values[i])) for metric, values in m.values.items()}
                       for i, case in enumerate(m.case_ids)} for m in methods}


def summary(sections: Sequence[ScaleSection], groups: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """group -> method -> metric -> {"mean", "std"} (None where not finite)."""
    return {group: {m.method: {metric: {"mean": _finite(m.mean(metric)), "std": _finite(m.std(metric))}
                               for metric in section.metrics} for m in section.methods}
            for group, section in zip(groups, sections)}


def verdict_lines(margins_by_group: Mapping[str, Mapping[str, Any]], checks: Mapping[str, Any],
                  seconds_per_image: float) -> list[str]:
    """Markdown bullet lines: speed, the margins of every group, and the targets."""
    lines = [f"- TFS-Diff: {seconds_per_image:.2f} s per fused image (sampling only, model loading excluded)."]
    for group, m in margins_by_group.items():
        lines.append(f"- {group_title(group)} ({m['cases']} cases): TFS-Diff {m['tfsdiff_psnr']:.2f} dB / SSIM "
                     f"{m['tfsdiff_ssim']:.4f} vs best baseline {m['best_baseline_name']} {m['baseline_psnr']:.2f} dB "
                     f"/ {m['baseline_ssim']:.4f}: PSNR {m['psnr_margin']:+.2f} dB, SSIM {m['ssim_margin']:+.4f}.")
    shown = "; ".join(f"{CHECK_LABELS[k]}: {_yes_no(v)}" for k, v in checks.items() if k in CHECK_LABELS)
    lines.append(f"- Targets of issue 12 {'met' if checks['met'] else 'not met'}: {shown}.")
    return lines


def false_colour_summary(per_case_values: Mapping[str, Mapping[str, float]],
                         groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The JSON of the false colour: its rule, per case (None for NaN) and group -> method -> mean (None when no
    case of the group has a grey pixel)."""
    means: dict[str, dict[str, float | None]] = {}
    for group, ids in groups.items():
        means[group] = {}
        for method, values in per_case_values.items():
            finite = [values[c] for c in ids if math.isfinite(values[c])]
            means[group][method] = sum(finite) / len(finite) if finite else None
    return {"rule": "mean chroma magnitude sqrt((Cb-128)^2 + (Cr-128)^2) of the fused image, in grey levels, over "
                    f"the pixels where the chroma of every input is at most {GREY_TOLERANCE} (paper.false_colour)",
            "per_case": {m: {c: _finite(v) for c, v in values.items()} for m, values in per_case_values.items()},
            "mean": means}


def false_colour_line(summary: Mapping[str, Any]) -> str:
    """A Markdown bullet line: every method's mean false colour over all cases, TFS-Diff first."""
    means = summary["mean"][ALL]
    order = sorted(means, key=lambda m: (m != MODEL_RUN, m))
    shown = ", ".join(f"{display_name(m)} {'n/a' if means[m] is None else f'{means[m]:.2f}'}" for m in order)
    return (f"- False colour (mean chroma, in grey levels, where all three inputs are grey; 0 = none): {shown}.")


def _yes_no(value: bool | None) -> str:
    return "not measured" if value is None else "yes" if value else "no"
