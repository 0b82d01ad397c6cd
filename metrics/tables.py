"""Metric tables of scored methods as Markdown, CSV (summary and per image) and LaTeX, laid out like the paper.

One section per scale (e.g. ``x2``, ``x4``, ``x8``); rows are methods, columns metrics with the paper's arrows;
cells are ``mean ± std`` over the cases (population std, ddof 0; ``inf`` alone when a PSNR is infinite),
the best mean of each column in bold (ties: all
bold; n/a cells never win). Runs named ``wo_tmfa`` / ``wo_psf`` go to a separate ablation table (with ``tfsdiff``
for reference) in the column order of the paper's Table 2; all other runs form the main table (Table 1 order).
Every column header names the colour space and convention of its metric (e.g. ``PSNR (grey, peak 255)``), and
the notes on top name the reference, the convention and the aggregation over the sources.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from metrics.fusion import Convention
from metrics.scoring import ABLATION_METRICS, METRICS, MethodScores, Reference, metric_label

MODEL_RUN = "tfsdiff"
ABLATION_RUNS: dict[str, str] = {"wo_tmfa": "w/o TMFA", "wo_psf": "w/o PSF"}
DISPLAY_NAMES: dict[str, str] = {
    MODEL_RUN: "TFS-Diff (ours)",
    **ABLATION_RUNS,
    "average": "Bicubic + Average",
    "maximum": "Bicubic + Maximum",
    "laplacian_ycbcr": "Bicubic + Laplacian-YCbCr",
    "pca": "Bicubic + PCA",
    "dwt": "Bicubic + DWT",
    "ifcnn": "Bicubic + IFCNN",
    "prrgan": "Bicubic + PRRGAN",
    "matr": "Bicubic + MATR",
    "mufusion": "Bicubic + MUFusion",
    "ctsr": "Bicubic + CTSR",
    "bitonicx": "Bicubic + BitonicX",
}
DECIMALS: dict[str, int] = {name: spec.decimals for name, spec in METRICS.items()}  # of the registry
GT_NOTE = ("Reference: the ground-truth fused image (`<id>_hr.png`); full-reference metrics compare each fused "
           "image with it.")
SOURCES_NOTE = "Reference: the three source images (`<id>_src{1,2,3}.png`, the bicubic-upsampled inputs); "
REFERENCE_NOTES: dict[tuple[str, str], str] = {
    ("gt", "paper"): GT_NOTE,
    ("gt", "cddfuse"): GT_NOTE,
    ("sources", "paper"): SOURCES_NOTE + "each full-reference metric is the mean over the three sources of "
                                         "metric(fused, source).",
    ("sources", "cddfuse"): SOURCES_NOTE + "MSE, PSNR, SSIM and VIF are CDDFuse's dual-modal values (PSNR from the "
                                           "mean MSE of the two sources with peak max(F); SSIM and VIF summed over "
                                           "the two sources), averaged over the three source pairs; MAE, RMSE and "
                                           "LPIPS, which CDDFuse does not define, are the mean over the three "
                                           "sources of metric(fused, source).",
}
CONVENTION_NOTES: dict[str, str] = {
    "paper": "Convention: paper (PSNR with peak 255, SSIM with data_range 255, Qabf with the textbook relative edge "
             "strength); see docs/metrics.md.",
    "cddfuse": "Convention: cddfuse (CDDFuse's utils/Evaluator.py as its test script runs it: PSNR with peak max(F), "
               "SSIM with data_range 2 as scikit-image 0.19.2 sets it for float input, Qabf with GAF = gF where "
               "gA == gF); see docs/metrics.md.",
}
COMMON_NOTES = (
    "All metrics except LPIPS are computed on the 8-bit grey image (OpenCV RGB2GRAY, rounded), as the CDDFuse "
    "evaluator does; LPIPS (AlexNet, v0.1) on RGB. VIF is the fusion VIF of Han et al. 2013 (VIFF).",
    "MI, Qabf, SCD and CC are always computed against the sources: the mean over the three source pairs of the "
    "two-source definition (MI = MI(F,A) + MI(F,B) in nats).",
    "AG is printed with a down arrow as in the paper; in the fusion literature a higher AG usually means a sharper "
    "image.",
    "Cells: mean ± std (population) over the cases; bold: best per column.",
)


@dataclass(frozen=True)
class ScaleSection:
    """All methods scored at one scale; ``scale`` is the folder name (``x4``) or "" without scale folders."""

    scale: str
    methods: tuple[MethodScores, ...]
    metrics: tuple[str, ...]


SEQUENTIAL_PREFIX = "sr3+"  # the paper's sequential baselines: SR3 super-resolution, then a fusion method


def display_name(method: str) -> str:
    """The row name of a method folder: ``sr3+NAME`` is "SR3 + " and NAME's name without its "Bicubic + "."""
    if method.startswith(SEQUENTIAL_PREFIX):
        return "SR3 + " + display_name(method.removeprefix(SEQUENTIAL_PREFIX)).removeprefix("Bicubic + ")
    return DISPLAY_NAMES.get(method, method)


def scale_title(scale: str) -> str:
    return f"Scale ×{scale[1:]}" if scale.startswith("x") and scale[1:].isdigit() else (scale or "All cases")


def _arrow(metric: str, latex: bool) -> str:
    up = METRICS.get(metric).higher_is_better
    if latex:
        return r"$\uparrow$" if up else r"$\downarrow$"
    return "↑" if up else "↓"


def split_tables(section: ScaleSection) -> list[tuple[str, list[MethodScores], tuple[str, ...]]]:
    """[(title, rows, columns)]: the main table and, when ablation runs are present, the ablation table."""
    main = [m for m in section.methods if m.method not in ABLATION_RUNS]
    ablation = [m for m in section.methods if m.method in ABLATION_RUNS]
    tables = [("Comparison", main, section.metrics)] if main else []
    if ablation:
        model = [m for m in section.methods if m.method == MODEL_RUN]
        ordered = tuple(m for m in ABLATION_METRICS if m in section.metrics)
        columns = ordered + tuple(m for m in section.metrics if m not in ordered)
        tables.append(("Ablation", sorted(ablation, key=lambda m: list(ABLATION_RUNS).index(m.method)) + model,
                       columns))
    return tables


def best_rows(rows: list[MethodScores], metric: str) -> set[str]:
    """Methods whose mean is the best of the column (ties: all); empty when no mean is finite."""
    means = {m.method: m.mean(metric) for m in rows}
    known = [v for v in means.values() if not math.isnan(v)]
    if not known:
        return set()
    target = max(known) if METRICS.get(metric).higher_is_better else min(known)
    return {name for name, v in means.items() if v == target}


def _cell(scores: MethodScores, metric: str, bold: bool, latex: bool) -> str:
    mean, std = scores.mean(metric), scores.std(metric)
    if math.isnan(mean):
        return "n/a"
    d = DECIMALS.get(metric, 3)
    if math.isnan(std):
        text = f"{mean:.{d}f}"
    else:
        text = f"{mean:.{d}f} $\\pm$ {std:.{d}f}" if latex else f"{mean:.{d}f} ± {std:.{d}f}"
    if bold:
        return f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def _header_lines(reference: Reference, convention: Convention, lpips_missing: str | None) -> list[str]:
    lines = [REFERENCE_NOTES[reference, convention], CONVENTION_NOTES[convention], *COMMON_NOTES]
    if lpips_missing:
        lines.append(f"LPIPS: n/a ({lpips_missing}).")
    return lines


def _column(metric: str, reference: Reference, convention: Convention, latex: bool) -> str:
    label = metric_label(metric, convention, reference)
    return f"{_latex_escape(label) if latex else label} {_arrow(metric, latex)}"


def to_markdown(sections: list[ScaleSection], reference: Reference, convention: Convention,
                lpips_missing: str | None = None) -> str:
    """The Markdown document: header notes, then per scale the comparison (and ablation) table."""
    out = [f"# TFS-Diff metrics (reference: {reference}, convention: {convention})", ""]
    out += [f"- {line}" for line in _header_lines(reference, convention, lpips_missing)]
    for section in sections:
        n = max((len(m.case_ids) for m in section.methods), default=0)
        out += ["", f"## {scale_title(section.scale)} ({n} case{'' if n == 1 else 's'})"]
        for title, rows, columns in split_tables(section):
            best = {c: best_rows(rows, c) for c in columns}
            header = " | ".join(_column(c, reference, convention, False) for c in columns)
            out += ["", f"### {title}", "", f"| Method | {header} |", "|---|" + "---|" * len(columns)]
            for row in rows:
                cells = [_cell(row, c, row.method in best[c], False) for c in columns]
                out.append(f"| {display_name(row.method)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def to_latex(sections: list[ScaleSection], reference: Reference, convention: Convention,
             lpips_missing: str | None = None) -> str:
    """LaTeX tables (booktabs), one per scale and table kind; the notes as a comment block on top."""
    out = [f"% {line}" for line in _header_lines(reference, convention, lpips_missing)]
    for section in sections:
        for title, rows, columns in split_tables(section):
            best = {c: best_rows(rows, c) for c in columns}
            caption = _latex_escape(f"{title}, {scale_title(section.scale)}, reference: {reference}, "
                                    f"convention: {convention}")
            out += ["", r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
                    r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
                    "Method & " + " & ".join(_column(c, reference, convention, True) for c in columns) + r" \\",
                    r"\midrule"]
            for row in rows:
                cells = [_cell(row, c, row.method in best[c], True) for c in columns]
                out.append(_latex_escape(display_name(row.method)) + " & " + " & ".join(cells) + r" \\")
            out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_summary_csv(sections: list[ScaleSection], reference: Reference, convention: Convention) -> str:
    """CSV rows ``scale,method,metric,higher_is_better,mean,std,n,label`` (empty mean/std when unavailable).

    ``label`` names colour space and convention, e.g. ``PSNR (grey, peak 255)``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scale", "method", "metric", "higher_is_better", "mean", "std", "n", "label"])
    for section in sections:
        for m in section.methods:
            for metric in section.metrics:
                mean, std = m.mean(metric), m.std(metric)
                shown = tuple("" if math.isnan(x) else repr(x) for x in (mean, std))
                writer.writerow([section.scale, m.method, metric, METRICS.get(metric).higher_is_better, *shown,
                                 len(m.case_ids), metric_label(metric, convention, reference)])
    return buf.getvalue()


def to_per_image_csv(sections: list[ScaleSection]) -> str:
    """CSV rows ``scale,method,case_id,<metric>...`` with one row per fused image (empty when unavailable)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    metrics = sections[0].metrics if sections else ()
    writer.writerow(["scale", "method", "case_id", *metrics])
    for section in sections:
        for m in section.methods:
            for i, case_id in enumerate(m.case_ids):
                values = [m.values[k][i] for k in metrics]
                writer.writerow([section.scale, m.method, case_id,
                                 *("" if math.isnan(v) else repr(float(v)) for v in values)])
    return buf.getvalue()
