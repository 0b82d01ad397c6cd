"""The tables of the paper's experiments, rebuilt from the saved records only (``paper.experiments --table``).

For each form of the rows (``paper.records.FORMS``: the real-scan recipe first, then the paper's own form):

* Table 1-like, one per scale: the bicubic-then-fuse baselines and TFS-Diff of that scale, the paper's eight metrics in
  the paper convention, then the metrics whose definition against the ground truth differs in the CDDFuse
  convention (PSNR and SSIM), marked ``[cddfuse]``.
* Table 2-like: TFS-Diff x4, w/o TMFA, w/o PSF and the official placement and loss, in the paper's Table 2 column
  order, plus the same CDDFuse columns.
* Ablation differences: for each ablation row and PSNR and SSIM (paper convention), TFS-Diff minus the row over the
  cases both have (``paper.stats``: mean, 95 % paired bootstrap interval, paired sign-flip p-value).

Cells are mean ± std (population, ddof 0) over each row's cases, exactly ``MethodScores.mean`` / ``.std`` of the
saved per-case numbers; the best mean of a column is bold (``metrics.tables.best_rows``). A row without a record is
listed with its status (``not trained yet`` ...), never with numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from data.fusion_rules import FUSION_RULES
from metrics.fusion import Convention
from metrics.scoring import ABLATION_METRICS, METRICS, PAPER_METRICS, MethodScores, metric_label
from metrics.tables import DECIMALS, best_rows, display_name
from paper import stats
from paper.records import ABLATION_REFERENCE, ABLATION_ROWS, FORMS, MAIN_ROWS, ROWS, SCALES, Record

REFERENCE = "gt"
DIFFERENCE_METRICS: dict[str, int] = {"PSNR": 2, "SSIM": 4}  # metric -> decimals of the differences
CDDFUSE_COLUMNS: tuple[str, ...] = tuple(m for m in PAPER_METRICS if metric_label(m, "paper", REFERENCE)
                                         != metric_label(m, "cddfuse", REFERENCE))
StatusOf = Callable[[str], str]


@dataclass(frozen=True)
class Column:
    """A metric in one convention; ``key`` names it in the JSON (``PSNR``, ``PSNR_cddfuse``)."""

    metric: str
    convention: Convention

    @property
    def key(self) -> str:
        return self.metric if self.convention == "paper" else f"{self.metric}_{self.convention}"

    def header(self) -> str:
        arrow = "↑" if METRICS.get(self.metric).higher_is_better else "↓"
        mark = "" if self.convention == "paper" else f" [{self.convention}]"
        return f"{metric_label(self.metric, self.convention, REFERENCE)} {arrow}{mark}"


@dataclass(frozen=True)
class TableRow:
    """One row: its method, label, the record (None when missing) and the status shown instead of numbers."""

    method: str
    label: str
    record: Record | None
    status: str


def columns(order: tuple[str, ...]) -> list[Column]:
    """The paper-convention columns in ``order``, then the CDDFuse columns that differ."""
    return [Column(m, "paper") for m in order] + [Column(m, "cddfuse") for m in CDDFUSE_COLUMNS]


def _row_label(method: str, record: Record | None) -> str:
    row = ROWS.get(method)
    label = display_name(method) if row is None else f"{row.label} ({method})"
    if record is not None and row is not None and record.info.get("step") != record.info.get("n_iter"):
        label += f", partial: step {record.info.get('step')} of {record.info.get('n_iter')}"
    return label


def _table_row(records: Mapping[str, Record], method: str, status_of: StatusOf) -> TableRow:
    record = records.get(method)
    return TableRow(method, _row_label(method, record), record, "" if record is not None else status_of(method))


def table1_rows(records: Mapping[str, Record], scale: str, status_of: StatusOf, form: str) -> list[TableRow]:
    """The baselines of ``scale`` (FUSION_RULES order), then TFS-Diff of that scale in ``form``."""
    return [_table_row(records, m, status_of) for m in (*FUSION_RULES, MAIN_ROWS[form][scale])]


def table2_rows(records: Mapping[str, Record], status_of: StatusOf, form: str) -> list[TableRow]:
    """TFS-Diff x4 in ``form``, then that form's ablation rows."""
    return [_table_row(records, m, status_of) for m in (ABLATION_REFERENCE[form], *ABLATION_ROWS[form])]


def _cell(scores: MethodScores, metric: str, bold: bool) -> str:
    mean, std = scores.mean(metric), scores.std(metric)
    if math.isnan(mean):
        return "n/a"
    d = DECIMALS.get(metric, 3)
    text = f"{mean:.{d}f}" if math.isnan(std) else f"{mean:.{d}f} ± {std:.{d}f}"
    return f"**{text}**" if bold else text


def table_markdown(rows: list[TableRow], cols: list[Column]) -> list[str]:
    """A Markdown table: Method, n, then one column per ``cols`` (a missing row shows its status)."""
    present = [r for r in rows if r.record is not None]
    best = {c.key: best_rows([r.record.scores[c.convention] for r in present], c.metric) for c in cols}
    lines = ["| Method | n | " + " | ".join(c.header() for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row in rows:
        if row.record is None:
            cells = [row.status] + ["—"] * len(cols)
        else:
            cells = [str(len(row.record.scores["paper"].case_ids))]
            cells += [_cell(row.record.scores[c.convention], c.metric, row.method in best[c.key]) for c in cols]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def table_json(rows: list[TableRow], cols: list[Column]) -> dict[str, Any]:
    """method -> {label, status, n, metrics: key -> {mean, std}} (null numbers where unavailable)."""
    result: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"label": row.label, "status": row.status or "evaluated"}
        if row.record is not None:
            entry["n"] = len(row.record.scores["paper"].case_ids)
            entry["metrics"] = {c.key: {"mean": _number(row.record.scores[c.convention].mean(c.metric)),
                                        "std": _number(row.record.scores[c.convention].std(c.metric))} for c in cols}
        result[row.method] = entry
    return result


def ablation_difference(reference: Record | None, row: Record | None, metric: str,
                        status_of: StatusOf, row_name: str, reference_name: str) -> dict[str, Any]:
    """TFS-Diff minus ``row`` on ``metric`` (paper convention) over the cases both have, or why it is unavailable."""
    missing = [n for n, r in ((reference_name, reference), (row_name, row)) if r is None]
    if missing:
        return {"status": "; ".join(f"{ROWS[n].label} ({n}): {status_of(n)}" for n in missing)}
    ref_scores, row_scores = reference.scores["paper"], row.scores["paper"]
    common = [c for c in ref_scores.case_ids if c in row_scores.case_ids]
    a, b = ref_scores.select(common).values[metric], row_scores.select(common).values[metric]
    if not common or not (math.isfinite(a.sum()) and math.isfinite(b.sum())):
        return {"status": "no common cases with finite values"}
    result = stats.paired_difference(a, b)
    return {"status": "evaluated", "n": result.n, "mean_difference": result.mean, "ci_low": result.ci_low,
            "ci_high": result.ci_high, "p_value": result.p_value, "exact_p": result.exact_p, "cases": common}


def differences(records: Mapping[str, Record], status_of: StatusOf, form: str) -> list[dict[str, Any]]:
    """Every (ablation row, metric) difference of TFS-Diff x4 minus the row, in ``form``."""
    reference = ABLATION_REFERENCE[form]
    return [{"row": name, "label": ROWS[name].label, "metric": metric, "convention": "paper", "reference": reference,
             **ablation_difference(records.get(reference), records.get(name), metric, status_of, name, reference)}
            for name in ABLATION_ROWS[form] for metric in DIFFERENCE_METRICS]


def differences_markdown(diffs: list[dict[str, Any]]) -> list[str]:
    """The differences as a Markdown table (an unavailable one shows why)."""
    header = (f"| TFS-Diff minus | Metric | n | Mean difference | {stats.CONFIDENCE:.0%} interval (paired bootstrap, "
              f"{stats.RESAMPLES:,} resamples, seed {stats.SEED}) | p (paired sign-flip) |")
    lines = [header, "|---|---|---|---|---|---|"]
    for d in diffs:
        label = metric_label(d["metric"], "paper", REFERENCE)
        if d["status"] != "evaluated":
            lines.append(f"| {d['label']} | {label} | — | {d['status']} | — | — |")
            continue
        k = DIFFERENCE_METRICS[d["metric"]]
        p = f"{d['p_value']:.4f}" + (" (exact)" if d["exact_p"] else "")
        lines.append(f"| {d['label']} | {label} | {d['n']} | {d['mean_difference']:+.{k}f} | "
                     f"[{d['ci_low']:+.{k}f}, {d['ci_high']:+.{k}f}] | {p} |")
    return lines


def _run_line(name: str, record: Record | None, status_of: StatusOf) -> str:
    """One line of the runs table: the row's status, or what its record was made from."""
    row = ROWS[name]
    if record is None:
        return f"| {name} | {row.scale} | {status_of(name)} | — | — | — | — |"
    info = record.info
    sampler = info.get("sampler") or {}
    steps = f", {sampler['steps']} steps" if sampler.get("steps") else ""
    seconds = info.get("seconds_per_image")
    sizes = f" ({info.get('l_resolution')} → {info.get('r_resolution')} px)"
    return (f"| {name} | {row.scale}{sizes} | evaluated on {len(record.scores['paper'].case_ids)} cases | "
            f"{info.get('checkpoint')} | {info.get('step')} of {info.get('n_iter')} | {sampler.get('type')}{steps} | "
            f"{'—' if seconds is None else f'{seconds:.2f}'} |")


def runs_markdown(records: Mapping[str, Mapping[str, Record]], status_of: StatusOf) -> list[str]:
    """The runs table: every row, its checkpoint, step of the budget, sampler and speed."""
    lines = ["| Row | Scale | Status | Checkpoint | Step of budget | Sampler | s / image |",
             "|---|---|---|---|---|---|---|"]
    return lines + [_run_line(name, records.get(row.scale, {}).get(name), status_of) for name, row in ROWS.items()]


NOTES = (
    "Rebuilt by `python -m paper.experiments --table` from the saved per-case records `<scale>/<method>.json` only: "
    "no training, no sampling, no resampling of images.",
    "Test cases: the real test triplets of paper.real_scans (subjects 21, 28 and 41 of the pairs, plus the kept "
    "cases of --triplets), never used for training or checkpoint selection; LR = "
    "`data.resample.degrade` of each 256x256 source at the row's scale; reference: the ground truth "
    "`laplacian_ycbcr` of the 256x256 sources.",
    "Cells: mean ± std (population) over each row's n cases; bold: best mean of the column. Columns marked "
    "[cddfuse] are the CDDFuse evaluator's definitions where they differ from the paper convention (docs/metrics.md).",
    "Recipe rows: the real-scan recipe of the shipped weights (residual form; stage 1 of 6,000 steps, then stage 2 "
    "to 10,000), each with its one change (config/experiments/recipe/ for the ablations) and its config's sampler.",
    "Paper-form rows: config/harvard_x4_64_256.json (the paper's own form, one stage) with one change each and the "
    "same budget of 6,000 steps (config/experiments/).",
)
FORM_TITLES: dict[str, str] = {"recipe": "", "paper": " (paper form)"}


def build_tables(records: Mapping[str, Mapping[str, Record]], status_of: StatusOf) -> tuple[str, dict[str, Any]]:
    """The Markdown document and its JSON twin (settings, tables, differences, missing rows)."""
    evaluated = [name for name, row in ROWS.items() if name in records.get(row.scale, {})]
    lines = ["# The paper's experiments", "", *(f"- {note}" for note in NOTES)]
    if not evaluated:
        lines.append("- **No row has results yet**: every number below is missing, none is invented.")
    lines += ["", "## Runs", "", *runs_markdown(records, status_of)]
    doc: dict[str, Any] = {"settings": {"reference": REFERENCE, "bootstrap_resamples": stats.RESAMPLES,
                                        "seed": stats.SEED, "confidence": stats.CONFIDENCE,
                                        "p_value": "paired sign-flip, two-sided"},
                           "records": sorted(str(r.path) for scale in records.values() for r in scale.values()),
                           "forms": {}}
    for form in FORMS:
        title, part = FORM_TITLES[form], doc["forms"].setdefault(form, {"table1": {}})
        for scale in SCALES:
            rows, cols = table1_rows(records.get(scale, {}), scale, status_of, form), columns(PAPER_METRICS)
            lines += ["", f"## Table 1-like{title}, ×{scale[1:]}", "", *table_markdown(rows, cols)]
            part["table1"][scale] = table_json(rows, cols)
        rows, cols = table2_rows(records.get("x4", {}), status_of, form), columns(ABLATION_METRICS)
        lines += ["", f"## Table 2-like{title}: ablations, ×4", "", *table_markdown(rows, cols)]
        part["table2"] = table_json(rows, cols)
        part["differences"] = differences(records.get("x4", {}), status_of, form)
        lines += ["", f"## Ablation differences{title}: TFS-Diff ×4 minus each row, paired over cases", "",
                  *differences_markdown(part["differences"])]
    doc["missing"] = [{"method": name, "scale": row.scale, "status": status_of(name)}
                      for name, row in ROWS.items() if name not in evaluated]
    return "\n".join(lines) + "\n", doc
