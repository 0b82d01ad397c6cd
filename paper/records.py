"""The rows of the paper's experiments and the files their results are saved in (the one owner of that
layout; ``paper.experiments`` writes it, ``paper.tables`` reads it).

Under the results root (default ``results/experiments``)::

    <scale>/data/              the real test split of that scale (paper.real_scans.build_test_split)
    <scale>/<method>/          fused images in the results layout (core.results_layout), so eval.py reads them too
    <scale>/<method>.json      the record: provenance and the per-case numbers of both metric conventions
    tables.md, tables.json     the tables rebuilt from the records (paper.experiments --table)

``<method>`` (its ``kind``, ``kind_of``) is a row name (``row``: ``tfsdiff_x4``, ``wo_tmfa_x4``, ...), a rule of
``data.fusion_rules.FUSION_RULES`` (``baseline``: bicubic, then the rule), a published method of
``core.registry.PUBLISHED_FUSION`` (``published``: bicubic, then the method) or ``sr3+NAME`` for a rule or a
published method NAME (``sequential``: SR3, then NAME, ``model.sr3``). A record (``format_version`` 1) holds
``method``, ``kind``, ``scale``, ``cases`` (``[{"case_id", "subject"}]``, in the order scored), ``per_case``
(convention -> case id -> metric -> value against the ground truth; a finite number, or null for LPIPS only,
unavailable without its weights: a record with another null or non-finite value is refused by ``load_record``,
naming the field), ``per_case_sources`` (case id -> metric -> value of ``SOURCE_METRICS`` against the three HR
sources in the CDDFuse convention, all finite; absent from records written before it was saved, whose cells are then
n/a), ``command``, ``data``, ``triplets``, ``lpips`` (why LPIPS is n/a, or null) and ``seconds_per_image`` (absent
from baseline records written before it was saved). A row's record adds ``config``, ``checkpoint``, ``step``,
``n_iter``, ``sampler``, ``l_resolution`` and ``r_resolution``; a published method's ``peer_dir`` (its weights
folder, or null); a sequential method's ``peer_dir`` (of a published NAME), ``sr3_config``, ``sr3_checkpoint``,
``sr3_sampler``, ``sr3_seconds_per_case`` (SR3 on the three sources) and ``fusion_seconds_per_image`` (NAME), whose
sum is its ``seconds_per_image``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UsageError
from core.registry import PUBLISHED_FUSION
from data.fusion_rules import FUSION_RULES
from metrics.fusion import CONVENTIONS, Convention
from metrics.scoring import PAPER_METRICS, MethodScores
from model.sr3 import SR3_PREFIX

FORMAT_VERSION = 1
DATA_FOLDER = "data"
TABLES_MD, TABLES_JSON = "tables.md", "tables.json"
# the no-reference table: the fusion field's metrics against the three HR sources, in the CDDFuse evaluator's
# convention (metrics.scoring.score_folder with reference "sources", as eval.py --reference sources --suite all
# --convention cddfuse computes them)
SOURCE_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
SOURCE_CONVENTION: Convention = "cddfuse"


FORMS: tuple[str, ...] = ("recipe", "paper")  # the real-scan recipe's rows, then the paper form's


@dataclass(frozen=True)
class Row:
    """One row of the tables: its name (its results folder and record name), its label in the tables, its scale
    folder, its form (``recipe``: the residual real-scan recipe of the shipped weights, two stages; ``paper``: the
    paper's own form, one stage) and its config, relative to the repository's ``config/`` folder."""

    name: str
    label: str
    scale: str
    form: str
    config: str


def _recipe(name: str, label: str, scale: str, config: str) -> Row:
    return Row(name, label, scale, "recipe", config)


def _paper(name: str, label: str, scale: str) -> Row:
    return Row(name, label, scale, "paper", f"experiments/{name}.json")


ROWS: dict[str, Row] = {row.name: row for row in (
    _recipe("recipe_x4", "TFS-Diff", "x4", "harvard_x4_residual_start200_64_256.json"),
    _recipe("recipe_wo_tmfa_x4", "w/o TMFA", "x4", "experiments/recipe/wo_tmfa_x4_start200.json"),
    _recipe("recipe_wo_psf_x4", "w/o PSF", "x4", "experiments/recipe/wo_psf_x4_start200.json"),
    _recipe("recipe_official_x4", "Official placement and loss", "x4",
            "experiments/recipe/official_x4_start200.json"),
    _recipe("recipe_x2", "TFS-Diff", "x2", "harvard_x2_residual_start200_128_256.json"),
    _recipe("recipe_x8", "TFS-Diff", "x8", "harvard_x8_residual_start200_32_256.json"),
    _paper("tfsdiff_x4", "TFS-Diff, paper form", "x4"),
    _paper("wo_tmfa_x4", "w/o TMFA, paper form", "x4"),
    _paper("wo_psf_x4", "w/o PSF, paper form", "x4"),
    _paper("official_x4", "Official placement and loss, paper form", "x4"),
    _paper("tfsdiff_x2", "TFS-Diff, paper form", "x2"),
    _paper("tfsdiff_x8", "TFS-Diff, paper form", "x8"),
)}
SCALES: tuple[str, ...] = ("x2", "x4", "x8")
# Table 1 of each form: scale -> its TFS-Diff row; Table 2 of each form: the reference row, then the ablation rows
MAIN_ROWS: dict[str, dict[str, str]] = {
    "recipe": {"x2": "recipe_x2", "x4": "recipe_x4", "x8": "recipe_x8"},
    "paper": {"x2": "tfsdiff_x2", "x4": "tfsdiff_x4", "x8": "tfsdiff_x8"},
}
ABLATION_REFERENCE: dict[str, str] = {"recipe": "recipe_x4", "paper": "tfsdiff_x4"}
ABLATION_ROWS: dict[str, tuple[str, ...]] = {
    "recipe": ("recipe_wo_tmfa_x4", "recipe_wo_psf_x4", "recipe_official_x4"),
    "paper": ("wo_tmfa_x4", "wo_psf_x4", "official_x4"),
}


def comparison_methods() -> tuple[str, ...]:
    """The optional comparison methods of a Table 1-like table, in its order: each published method (bicubic, then
    it), then ``sr3+NAME`` for each rule and each published method."""
    published = PUBLISHED_FUSION.names()
    return (*published, *(SR3_PREFIX + name for name in (*FUSION_RULES, *published)))


def kind_of(method: str) -> str:
    """The ``kind`` of a method's record: ``row``, ``baseline``, ``published`` or ``sequential``."""
    if method in ROWS:
        return "row"
    if method in FUSION_RULES:
        return "baseline"
    return "sequential" if method.startswith(SR3_PREFIX) else "published"


class ResultsError(UsageError):
    """A saved record is unreadable or malformed (the message names the file)."""


@dataclass(frozen=True)
class Record:
    """One saved record: the method's scores per convention (NaN where unavailable), its scores against the HR
    sources (None in a record written before they were saved) and the record's other fields."""

    path: Path
    method: str
    kind: str
    scale: str
    subjects: dict[str, str | None]
    scores: dict[str, MethodScores]
    info: dict[str, Any]
    sources: MethodScores | None = None


def record_path(root: Path, scale: str, method: str) -> Path:
    return root / scale / f"{method}.json"


def method_folder(root: Path, scale: str, method: str) -> Path:
    return root / scale / method


def _per_case(scores: MethodScores) -> dict[str, dict[str, float | None]]:
    return {case: {metric: _finite(float(values[i])) for metric, values in scores.values.items()}
            for i, case in enumerate(scores.case_ids)}


def save_record(root: Path, scale: str, method: str, kind: str, scores: dict[str, MethodScores],
                subjects: dict[str, str | None], info: dict[str, Any], sources: MethodScores | None = None) -> Path:
    """Write the record of ``method`` (``scores``: convention -> its MethodScores; ``sources``: its
    ``SOURCE_METRICS`` against the HR sources; all over the same cases)."""
    cases = scores["paper"].case_ids
    per_case = {convention: _per_case(s) for convention, s in scores.items()}
    against_sources = {} if sources is None else {"per_case_sources": _per_case(sources)}
    record = {"format_version": FORMAT_VERSION, "method": method, "kind": kind, "scale": scale,
              "cases": [{"case_id": c, "subject": subjects.get(c)} for c in cases], **info, "per_case": per_case,
              **against_sources}
    path = record_path(root, scale, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _value(path: Path, table: str, case: str, metric: str, values: Any) -> float:
    """One saved number of ``table`` (``per_case.<convention>`` or ``per_case_sources``): finite, or null for LPIPS
    only (unavailable without its weights, shown as n/a); a null or non-finite value of another metric (e.g. a PSNR of
    infinity, saved as null) is a ResultsError naming the field."""
    field = f"{table}.{case}.{metric}"
    value = values.get(metric) if isinstance(values, dict) else None
    if value is None and metric == "LPIPS":
        return np.nan
    if value is None:
        raise ResultsError(f"{path}: {field} is missing or null (a value that was not finite, e.g. a PSNR of "
                           "infinity for a fused image equal to its reference): the tables need a finite number; "
                           "check that case, delete the record and run paper.experiments --run again")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ResultsError(f"{path}: {field} is {value!r}, not a finite number: the tables need a finite number; "
                           "delete the record and run paper.experiments --run again")
    return float(value)


def _table(path: Path, name: str, method: str, cases: list[str], table: Any,
           metrics: tuple[str, ...]) -> MethodScores:
    """The per-case numbers of one table of a record (``name``: its field) as MethodScores over ``cases``."""
    if not isinstance(table, dict) or sorted(table) != sorted(cases):
        raise ResultsError(f"{path}: {name} must have exactly the record's cases {cases}")
    values = {m: np.array([_value(path, name, c, m, table[c]) for c in cases], dtype=np.float64) for m in metrics}
    return MethodScores(method, tuple(cases), values)


def _parse(path: Path, data: Any) -> Record:
    if data.get("format_version") != FORMAT_VERSION:
        raise ResultsError(f"{path}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    method, cases = data["method"], [c["case_id"] for c in data["cases"]]
    subjects = {c["case_id"]: c["subject"] for c in data["cases"]}
    scores = {convention: _table(path, f"per_case.{convention}", method, cases, data["per_case"].get(convention),
                                 PAPER_METRICS) for convention in CONVENTIONS}
    sources = None if "per_case_sources" not in data else _table(path, "per_case_sources", method, cases,
                                                                   data["per_case_sources"], SOURCE_METRICS)
    info = {k: v for k, v in data.items() if k not in ("method", "kind", "scale", "cases", "per_case",
                                                       "per_case_sources")}
    return Record(path, method, data["kind"], data["scale"], subjects, scores, info, sources)


def load_record(path: Path) -> Record:
    """Read one record; ResultsError naming the file when it is not a record of this format."""
    redo = "delete it and run paper.experiments --run again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not a JSON record ({err}); {redo}") from None
    try:
        return _parse(path, data)
    except ResultsError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ResultsError(f"{path}: malformed record ({type(err).__name__}: {err}); {redo}") from None


def load_records(root: Path) -> dict[str, dict[str, Record]]:
    """scale -> method -> record of every ``<root>/<scale>/<method>.json`` of the known scales."""
    found: dict[str, dict[str, Record]] = {}
    for scale in SCALES:
        folder = root / scale
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = load_record(path)
            if record.method != path.stem or record.scale != scale:
                raise ResultsError(f"{path}: records method {record.method!r} at scale {record.scale!r}; expected "
                                   f"{path.stem!r} at {scale!r} (the file's name and folder)")
            found.setdefault(scale, {})[record.method] = record
    return found
