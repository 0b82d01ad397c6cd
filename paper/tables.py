"""The tables of the paper's experiments, rebuilt from the saved records only (``paper.experiments --table``).

For each form of the rows (``paper.records.FORMS``: the real-scan recipe first, then the paper's own form):

* Table 1-like, one per scale: the bicubic-then-fuse baselines, then bicubic + each published method and SR3 + each
  rule and published method that has a record (``paper.records.comparison_methods``; a comparison without a record is
  left out), then TFS-Diff of that scale; the paper's eight metrics in the paper convention, then the metrics whose
  definition against the ground truth differs in the CDDFuse convention (PSNR and SSIM), marked ``[cddfuse]``, then
  the seconds per fused image of the record (``s / image``; n/a where the record has none).
* No-reference, one per scale: the same rows, the fusion field's metrics against the three HR sources in the CDDFuse
  convention (``paper.records.SOURCE_METRICS``); n/a for a record written before they were saved.
* TFS-Diff against the best sequential pipeline, one per scale: the ``sr3+NAME`` record of the highest mean PSNR
  (paper convention; on a tie the first in table order), and TFS-Diff minus it in PSNR and SSIM over the cases both
  have, as the ablation differences; one line saying so when the scale has no ``sr3+NAME`` record.
* Table 2-like: TFS-Diff x4, w/o TMFA, w/o PSF and the official placement and loss, in the paper's Table 2 column
  order, plus the same CDDFuse columns.
* Ablation differences: for each ablation row and PSNR and SSIM (paper convention), TFS-Diff minus the row over the
  cases both have (``paper.stats``: mean, 95 % paired bootstrap interval, paired sign-flip p-value).

Cells are mean ± std (population, ddof 0) over each row's cases, exactly ``MethodScores.mean`` / ``.std`` of the
saved per-case numbers; the best mean of a column is bold (``metrics.tables.best_rows``). A row of TFS-Diff or a
baseline without a record is listed with its status (``not trained yet`` ...), never with numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from data.fusion_rules import FUSION_RULES
from metrics.fusion import Convention
from metrics.scoring import ABLATION_METRICS, METRICS, PAPER_METRICS, MethodScores, Reference, metric_label
from metrics.tables import DECIMALS, best_rows, display_name
from paper import stats
from paper.records import (ABLATION_REFERENCE, ABLATION_ROWS, FORMS, MAIN_ROWS, ROWS, SCALES, SOURCE_CONVENTION,
                           SOURCE_METRICS, Record, comparison_methods, kind_of)

REFERENCE = "gt"
DIFFERENCE_METRICS: dict[str, int] = {"PSNR": 2, "SSIM": 4}  # metric -> decimals of the differences
CDDFUSE_COLUMNS: tuple[str, ...] = tuple(m for m in PAPER_METRICS if metric_label(m, "paper", REFERENCE)
                                         != metric_label(m, "cddfuse", REFERENCE))
StatusOf = Callable[[str], str]


NO_SEQUENTIAL = "no SR3 + fusion record at this scale (paper.experiments --run ... --sr3 makes them)"
NO_SOURCES = ("n/a: a record written before `--run` saved the metrics against the HR sources (the next `--run` at "
              "this scale rewrites the baselines' records with them; a row's or a comparison's record needs its own "
              "`--run`).")


@dataclass(frozen=True)
class Column:
    """A metric in one convention against the ground truth (the record's ``scores``) or the three HR sources (its
    ``sources``, the no-reference table, whose one convention is its title's); ``key`` names it in the JSON
    (``PSNR``, ``PSNR_cddfuse``; against the sources, the metric)."""

    metric: str
    convention: Convention
    reference: Reference = REFERENCE

    @property
    def marked(self) -> bool:
        return self.convention != "paper" and self.reference == REFERENCE

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.convention}" if self.marked else self.metric

    def header(self) -> str:
        arrow = "↑" if METRICS.get(self.metric).higher_is_better else "↓"
        mark = f" [{self.convention}]" if self.marked else ""
        return f"{metric_label(self.metric, self.convention, self.reference)} {arrow}{mark}"

    def scores(self, record: Record) -> MethodScores | None:
        return record.sources if self.reference == "sources" else record.scores[self.convention]


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


def source_columns() -> list[Column]:
    """The no-reference table's columns: SOURCE_METRICS against the HR sources, in SOURCE_CONVENTION."""
    return [Column(m, SOURCE_CONVENTION, "sources") for m in SOURCE_METRICS]


def _name(method: str) -> str:
    row = ROWS.get(method)
    return display_name(method) if row is None else f"{row.label} ({method})"


def _row_label(method: str, record: Record | None) -> str:
    row, label = ROWS.get(method), _name(method)
    if record is not None and row is not None and record.info.get("step") != record.info.get("n_iter"):
        label += f", partial: step {record.info.get('step')} of {record.info.get('n_iter')}"
    return label


def _table_row(records: Mapping[str, Record], method: str, status_of: StatusOf) -> TableRow:
    record = records.get(method)
    return TableRow(method, _row_label(method, record), record, "" if record is not None else status_of(method))


def table1_rows(records: Mapping[str, Record], scale: str, status_of: StatusOf, form: str) -> list[TableRow]:
    """The baselines of ``scale`` (FUSION_RULES order), the comparison methods that have a record (in
    ``comparison_methods`` order), then TFS-Diff of that scale in ``form``."""
    compared = [m for m in comparison_methods() if m in records]
    return [_table_row(records, m, status_of) for m in (*FUSION_RULES, *compared, MAIN_ROWS[form][scale])]


def table2_rows(records: Mapping[str, Record], status_of: StatusOf, form: str) -> list[TableRow]:
    """TFS-Diff x4 in ``form``, then that form's ablation rows."""
    return [_table_row(records, m, status_of) for m in (ABLATION_REFERENCE[form], *ABLATION_ROWS[form])]


def _cell(scores: MethodScores | None, metric: str, bold: bool) -> str:
    mean, std = (math.nan, math.nan) if scores is None else (scores.mean(metric), scores.std(metric))
    if math.isnan(mean):
        return "n/a"
    d = DECIMALS.get(metric, 3)
    text = f"{mean:.{d}f}" if math.isnan(std) else f"{mean:.{d}f} ± {std:.{d}f}"
    return f"**{text}**" if bold else text


def seconds_per_image(record: Record) -> float | None:
    """The record's seconds per fused image (SR3 + NAME: SR3's for the three sources plus NAME's), None when it has
    none (a baseline record written before they were timed)."""
    return record.info.get("seconds_per_image")


def _seconds_cell(record: Record) -> str:
    seconds = seconds_per_image(record)
    return "n/a" if seconds is None else f"{seconds:.3f}"


def table_markdown(rows: list[TableRow], cols: list[Column], timed: bool = False) -> list[str]:
    """A Markdown table: Method, n, one column per ``cols`` and, when ``timed``, the seconds per image (a missing
    row shows its status)."""
    present = [r for r in rows if r.record is not None]
    best = {c.key: best_rows([s for r in present if (s := c.scores(r.record)) is not None], c.metric) for c in cols}
    headers = [c.header() for c in cols] + (["s / image"] if timed else [])
    lines = ["| Method | n | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    for row in rows:
        if row.record is None:
            cells = [row.status] + ["—"] * len(headers)
        else:
            cells = [str(len(row.record.scores["paper"].case_ids))]
            cells += [_cell(c.scores(row.record), c.metric, row.method in best[c.key]) for c in cols]
            cells += [_seconds_cell(row.record)] if timed else []
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _summary(scores: MethodScores | None, metric: str) -> dict[str, float | None]:
    if scores is None:
        return {"mean": None, "std": None}
    return {"mean": _number(scores.mean(metric)), "std": _number(scores.std(metric))}


def table_json(rows: list[TableRow], cols: list[Column], timed: bool = False) -> dict[str, Any]:
    """method -> {label, status, n, metrics: key -> {mean, std}} and, when ``timed``, ``seconds_per_image`` (null
    numbers where unavailable)."""
    result: dict[str, Any] = {}
    for row in rows:
        entry: dict[str, Any] = {"label": row.label, "status": row.status or "evaluated"}
        if row.record is not None:
            entry["n"] = len(row.record.scores["paper"].case_ids)
            entry["metrics"] = {c.key: _summary(c.scores(row.record), c.metric) for c in cols}
            entry |= {"seconds_per_image": seconds_per_image(row.record)} if timed else {}
        result[row.method] = entry
    return result


def paired_entry(reference: Record | None, row: Record | None, metric: str,
                 status_of: StatusOf, row_name: str, reference_name: str) -> dict[str, Any]:
    """TFS-Diff minus ``row`` on ``metric`` (paper convention) over the cases both have, or why it is unavailable."""
    missing = [n for n, r in ((reference_name, reference), (row_name, row)) if r is None]
    if missing:
        return {"status": "; ".join(f"{_name(n)}: {status_of(n)}" for n in missing)}
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
             **paired_entry(records.get(reference), records.get(name), metric, status_of, name, reference)}
            for name in ABLATION_ROWS[form] for metric in DIFFERENCE_METRICS]


def best_sequential(records: Mapping[str, Record], scale: str, status_of: StatusOf, form: str) -> dict[str, Any]:
    """TFS-Diff of ``scale`` in ``form`` minus the sequential record (sr3+NAME) of the highest mean PSNR (paper
    convention; on a tie the first in table order), in each DIFFERENCE_METRICS; ``best`` null and a status when the
    scale has no sequential record."""
    reference = MAIN_ROWS[form][scale]
    sequential = [m for m in comparison_methods() if m in records and kind_of(m) == "sequential"]
    if not sequential:
        return {"reference": reference, "best": None, "status": NO_SEQUENTIAL, "differences": []}
    best = max(sequential, key=lambda m: records[m].scores["paper"].mean("PSNR"))
    label = f"{display_name(best)} (best of {len(sequential)} SR3 + fusion rows by mean PSNR)"
    diffs = [{"row": best, "label": label, "metric": metric, "convention": "paper", "reference": reference,
              **paired_entry(records.get(reference), records[best], metric, status_of, best, reference)}
             for metric in DIFFERENCE_METRICS]
    return {"reference": reference, "best": best, "status": "evaluated", "candidates": sequential,
            "differences": diffs}


DIFFERENCE_HEADER = (f"| TFS-Diff minus | Metric | n | Mean difference | {stats.CONFIDENCE:.0%} interval (paired "
                     f"bootstrap, {stats.RESAMPLES:,} resamples, seed {stats.SEED}) | p (paired sign-flip) |")


def differences_markdown(diffs: list[dict[str, Any]]) -> list[str]:
    """The differences as a Markdown table (an unavailable one shows why)."""
    lines = [DIFFERENCE_HEADER, "|---|---|---|---|---|---|"]
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


def sequential_markdown(entry: dict[str, Any]) -> list[str]:
    """The table of `best_sequential`: its differences, or one line saying that no sequential record exists."""
    if entry["best"] is None:
        return [DIFFERENCE_HEADER, "|---|---|---|---|---|---|",
                f"| SR3 + fusion | — | — | {entry['status']} | — | — |"]
    return differences_markdown(entry["differences"])


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
    "Comparison rows (present only where their record exists): bicubic + a published method (`--peer`) and SR3 + a "
    "rule or published method (`--sr3`: SR3 super-resolves the three sources, then the method fuses them). "
    "s / image: seconds per fused image as the record holds it (SR3 + NAME: SR3's seconds for the three sources plus "
    "NAME's); n/a: a baseline record written before the baselines were timed.",
    "No-reference tables: EN, SD, SF, MI, SCD, VIF, Qabf and SSIM of the fused image against the three 256x256 HR "
    "sources of the test split (not the ground truth), in the CDDFuse evaluator's convention (as `eval.py "
    "--reference sources --suite all --convention cddfuse` computes them); the two-source metrics (MI, SCD, Qabf, and "
    "VIF and SSIM, summed over a pair as CDDFuse does) are averaged over the three source pairs.",
    "Best SR3 + fusion pipeline: the SR3 + NAME row of the scale with the highest mean PSNR (paper convention); "
    "TFS-Diff minus it, paired over the cases both have, as the ablation differences.",
    "Recipe rows: the real-scan recipe of the shipped weights (residual form; stage 1 of 6,000 steps, then stage 2 "
    "to 10,000), each with its one change (config/experiments/recipe/ for the ablations) and its config's sampler.",
    "Paper-form rows: config/harvard_x4_64_256.json (the paper's own form, one stage) with one change each and the "
    "same budget of 6,000 steps (config/experiments/).",
)
FORM_TITLES: dict[str, str] = {"recipe": "", "paper": " (paper form)"}


def scale_tables(records: Mapping[str, Record], scale: str, status_of: StatusOf, form: str,
                 part: dict[str, Any]) -> list[str]:
    """The Markdown of the Table 1-like, no-reference and best-sequential tables of ``scale`` in ``form``; their JSON
    into ``part`` (``table1``, ``no_reference``, ``sequential``, each by scale)."""
    title, times = FORM_TITLES[form], f"×{scale[1:]}"
    rows, cols = table1_rows(records, scale, status_of, form), columns(PAPER_METRICS)
    against_sources = source_columns()
    part["table1"][scale] = table_json(rows, cols, timed=True)
    part["no_reference"][scale] = table_json(rows, against_sources)
    part["sequential"][scale] = best_sequential(records, scale, status_of, form)
    unsourced = [r for r in rows if r.record is not None and r.record.sources is None]
    return ["", f"## Table 1-like{title}, {times}", "", *table_markdown(rows, cols, timed=True),
            "", f"## No-reference metrics{title}, {times}: against the three HR sources, {SOURCE_CONVENTION} "
            "convention", "", *table_markdown(rows, against_sources), *(["", NO_SOURCES] if unsourced else []),
            "", f"## TFS-Diff{title} against the best SR3 + fusion pipeline, {times}, paired over cases", "",
            *sequential_markdown(part["sequential"][scale])]


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
        title = FORM_TITLES[form]
        part: dict[str, Any] = doc["forms"].setdefault(form, {"table1": {}, "no_reference": {}, "sequential": {}})
        for scale in SCALES:
            lines += scale_tables(records.get(scale, {}), scale, status_of, form, part)
        rows, cols = table2_rows(records.get("x4", {}), status_of, form), columns(ABLATION_METRICS)
        lines += ["", f"## Table 2-like{title}: ablations, ×4", "", *table_markdown(rows, cols)]
        part["table2"] = table_json(rows, cols)
        part["differences"] = differences(records.get("x4", {}), status_of, form)
        lines += ["", f"## Ablation differences{title}: TFS-Diff ×4 minus each row, paired over cases", "",
                  *differences_markdown(part["differences"])]
    doc["missing"] = [{"method": name, "scale": row.scale, "status": status_of(name)}
                      for name, row in ROWS.items() if name not in evaluated]
    return "\n".join(lines) + "\n", doc
