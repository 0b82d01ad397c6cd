"""Tests of the paper's experiments (issue 15): the committed row configs (config/experiments/) against the real-scan
recipe, the paired statistics (paper/stats.py), the tables rebuilt from saved records
(paper/tables.py, paper/records.py), with the comparison rows (bicubic + published methods, SR3 + fusion), their
times, the no-reference table and the best sequential pipeline, and ``--run`` end to end on synthetic pair folders
with a tiny untrained checkpoint and a tiny untrained SR3 model (paper/experiments.py, paper/comparisons.py).
Nothing here trains."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import config_to_dict, load_config
from core.outputs import FOLDER_MARKER
from core.registry import PUBLISHED_FUSION
from core.typed_json import read_json_with_comments
from data.fusion_rules import FUSION_RULES
from data.images import read_image
from data.layout import SOURCES, source_hr_dir
from metrics.scoring import PAPER_METRICS, MethodScores, score_metrics
from model.model import TFSDiffModel
from paper import experiments, tables
from paper import records as layout
from paper.stats import RESAMPLES, bootstrap_interval, paired_difference, sign_flip_p

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "config" / "harvard_x4_64_256.json"
CONFIG_DIR = ROOT / "config" / "experiments"
SCALE_KEYS = tuple(f"datasets.{s}.{k}" for s in ("train", "val", "test") for k in ("dataroot", "l_resolution"))
# row -> the dotted keys (or key prefixes) in which it may differ from the recipe besides name and train.n_iter, and
# the keys that must differ (what the row is about).
ROW_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tfsdiff_x4": ((), ()),
    "wo_tmfa_x4": (("model.tmfa.placement",), ("model.tmfa.placement",)),
    "wo_psf_x4": (("model.loss.",), ("model.loss.type",)),
    "official_x4": (("model.tmfa.placement", "model.loss."), ("model.tmfa.placement", "model.loss.type")),
    "tfsdiff_x2": (SCALE_KEYS, SCALE_KEYS),
    "tfsdiff_x8": (SCALE_KEYS, SCALE_KEYS),
}
# the budget: the rows train 6,000 steps at a constant rate, the recipe longer with a late drop of the rate
ALWAYS = ("name", "train.n_iter", "train.optimizer.lr_milestones", "train.optimizer.lr_gamma")


def _flat(path: Path) -> dict[str, Any]:
    return experiments.flatten(config_to_dict(load_config(path)))


# ------------------------------------------------------------------------------------------------ configs


PAPER_ROWS = [name for name, row in layout.ROWS.items() if row.form == "paper"]
PUBLISHED = ("ifcnn", "prrgan", "matr", "mufusion", "bitonicx", "ctsr")  # the registry's order
RECIPE_ROWS = [name for name, row in layout.ROWS.items() if row.form == "recipe"]


def test_every_row_has_a_config_and_no_config_is_left_over() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == sorted(PAPER_ROWS) == sorted(ROW_KEYS)
    assert all(layout.ROWS[name].config == f"experiments/{name}.json" for name in PAPER_ROWS)
    assert {row.form for row in layout.ROWS.values()} == set(layout.FORMS)


@pytest.mark.parametrize("row", RECIPE_ROWS)
def test_a_recipe_row_is_stage_2_of_the_recipe_at_its_scale(row: str) -> None:
    """A recipe row's config is a stage 2 of the real-scan recipe (steps 6,000 to 10,000 on levels 1..200) at the
    row's scale; the x4 row's is the config of the shipped weights."""
    cfg = load_config(ROOT / "config" / layout.ROWS[row].config)
    scale = cfg.datasets.test.r_resolution // cfg.datasets.test.l_resolution
    assert f"x{scale}" == layout.ROWS[row].scale and cfg.datasets.test.r_resolution == 256
    assert cfg.train.n_iter == 10000 and cfg.model.diffusion.train_max_step == 200
    assert cfg.model.diffusion.residual_base == "laplacian_ycbcr"
    if row == "recipe_x4":
        assert Path(cfg.path.pretrained) == ROOT / "pretrained" / "tfsdiff_x4_64_256.pth"


@pytest.mark.parametrize("row", sorted(ROW_KEYS))
def test_config_differs_from_the_recipe_only_in_its_row_keys(row: str) -> None:
    recipe, ours = _flat(RECIPE), _flat(CONFIG_DIR / f"{row}.json")
    allowed, required = ROW_KEYS[row]
    differing = {k for k in recipe.keys() | ours.keys() if recipe.get(k) != ours.get(k)}
    stray = {k for k in differing if k not in ALWAYS and not k.startswith(allowed)}
    assert not stray, f"{row} differs from the recipe in {sorted(stray)}"
    assert set(required) <= differing, f"{row} must change {sorted(set(required) - differing)}"
    assert ours["name"] == row


def test_every_row_has_the_same_budget() -> None:
    budgets = {row: {k: v for k, v in _flat(CONFIG_DIR / f"{row}.json").items() if k.startswith("train.")}
               for row in ROW_KEYS}
    assert all(b == budgets["tfsdiff_x4"] for b in budgets.values()), budgets
    assert budgets["tfsdiff_x4"]["train.n_iter"] == 6000


@pytest.mark.parametrize("row", sorted(ROW_KEYS))
def test_config_matches_its_row_and_its_prepare_command(row: str) -> None:
    path = CONFIG_DIR / f"{row}.json"
    cfg = load_config(path)
    scale = cfg.datasets.test.r_resolution // cfg.datasets.test.l_resolution
    assert f"x{scale}" == layout.ROWS[row].scale and cfg.datasets.test.r_resolution == 256
    text = path.read_text(encoding="utf-8")
    command = re.search(r"// Data: +(python data/prepare_data\.py pairs .*?)\n(?!//  )", text, re.S)
    assert command, f"{path} names no prepare command"
    words = command.group(1).replace("\\\n//", " ").split()
    out = words[words.index("--out") + 1]
    scales = words[words.index("--scales") + 1:words.index("--copies")]
    assert cfg.datasets.train.dataroot == str(ROOT / out / "train") and str(scale) in scales
    assert f"python -m paper.experiments --run {row} " in text and f"-c config/experiments/{row}.json" in text
    assert read_json_with_comments(path)["name"] == row


# ------------------------------------------------------------------------------------------------ statistics


def test_training_differences_ignore_loader_and_sampler_keys_only() -> None:
    cfg = load_config(CONFIG_DIR / "tfsdiff_x4.json")
    data = config_to_dict(cfg)
    data["datasets"]["train"].update(num_workers=3, cache_images=not cfg.datasets.train.cache_images)
    data["model"]["sampler"]["steps"] = 7
    data["datasets"]["val"]["data_len"] = 2
    assert experiments.training_differences(cfg, experiments.parse_config(data, "loader")) == []
    data["train"]["optimizer"]["lr"] = 1e-3
    assert experiments.training_differences(cfg, experiments.parse_config(data, "optimiser")) == [
        f"train.optimizer.lr: {cfg.train.optimizer.lr!r} != 0.001"]


def test_a_dataroot_compares_as_the_path_inside_the_clone_that_trained() -> None:
    """A checkpoint trained in a moved clone or a git worktree records another absolute dataroot: the same path
    inside the clone is the same data; another folder is not."""
    cfg = load_config(ROOT / "config" / "harvard_x8_residual_start200_32_256.json")
    data = config_to_dict(cfg)
    data["datasets"]["train"]["dataroot"] = "/elsewhere/clone/datasets/harvard_x8/train"
    assert experiments.training_differences(cfg, experiments.parse_config(data, "worktree")) == []
    data["datasets"]["train"]["dataroot"] = "/elsewhere/clone/datasets/harvard_x4/train"
    assert experiments.training_differences(cfg, experiments.parse_config(data, "other")) == [
        f"datasets.train.dataroot: {cfg.datasets.train.dataroot!r} != '/elsewhere/clone/datasets/harvard_x4/train'"]


def test_records_name_repository_configs_relative_to_the_repository(tmp_path: Path) -> None:
    assert experiments.repository_relative(str(CONFIG_DIR / "wo_psf_x4.json")) == "config/experiments/wo_psf_x4.json"
    assert experiments.repository_relative(str(tmp_path / "mine.json")) == str(tmp_path / "mine.json")


def test_sign_flip_p_is_exact_for_small_samples() -> None:
    # 8 sign vectors of (1, 2, 3): only all-plus and all-minus reach |mean| 2
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == (0.25, True)
    assert sign_flip_p(np.array([1.0, -1.0])) == (1.0, True)


def test_sign_flip_p_monte_carlo_bound_and_null() -> None:
    p, exact = sign_flip_p(np.linspace(1.0, 2.0, 30))
    assert not exact and p == 1 / (1 + RESAMPLES)
    p_null, _ = sign_flip_p(np.random.default_rng(1).standard_normal(40))
    assert p_null > 0.05


def test_bootstrap_is_reproducible_contains_the_mean_and_depends_on_the_seed() -> None:
    diff = np.random.default_rng(2).normal(0.4, 1.0, 34)
    low, high = bootstrap_interval(diff)
    assert (low, high) == bootstrap_interval(diff) and low < diff.mean() < high
    assert bootstrap_interval(diff, seed=1) != (low, high)
    result = paired_difference(diff + 10.0, np.full(34, 10.0))
    assert result.mean == pytest.approx(diff.mean(), abs=1e-12) and result.n == 34


def test_zero_differences_and_bad_inputs() -> None:
    result = paired_difference(np.ones(5), np.ones(5))
    assert (result.mean, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same cases"):
        paired_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        paired_difference(np.array([1.0, np.nan]), np.ones(2))


# ------------------------------------------------------------------------------------------------ tables


def _scores(method: str, cases: list[str], seed: int, shift: float = 0.0) -> dict[str, MethodScores]:
    """Random per-case values of every paper metric, both conventions (LPIPS unavailable: NaN)."""
    rng = np.random.default_rng(seed)
    result = {}
    for k, convention in enumerate(("paper", "cddfuse")):
        values = {m: rng.uniform(0.2, 0.9, len(cases)) + shift + k for m in PAPER_METRICS}
        values["LPIPS"] = np.full(len(cases), np.nan)
        result[convention] = MethodScores(method, tuple(cases), values)
    return result


CASES = [f"real_ct_spect_{s}{i:03d}" for s in (21, 28) for i in range(5, 11)]


@pytest.fixture()
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Records of the x4 baselines, TFS-Diff x4, w/o TMFA (all cases) and w/o PSF (the first 9 cases); a run folder
    of official_x4 with a checkpoint at the budget but no results, and one of tfsdiff_x2 part-way; then ``--table``.
    The working folder is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    for run, name in (("official_x4_train_260101_000000", "I6000_E18.pth"), ("official_x4_train_260102_000000",
                      "I2000_E6.pth"), ("tfsdiff_x2_train_260101_000000", "I3000_E9.pth")):
        (tmp_path / "runs" / run / "checkpoint").mkdir(parents=True)
        (tmp_path / "runs" / run / "checkpoint" / name).write_bytes(b"")
    (tmp_path / "runs" / "tfsdiff_x8_train_260101_000000").mkdir(parents=True)
    out = tmp_path / "results"
    subjects = {c: c[14:16] for c in CASES}
    records: dict[str, dict[str, MethodScores]] = {}
    for i, rule in enumerate(FUSION_RULES):
        records[rule] = _scores(rule, CASES, seed=i)
        layout.save_record(out, "x4", rule, "baseline", records[rule], subjects, {"command": "test"})
    for seed, (row, cases, step) in enumerate((("tfsdiff_x4", CASES, 6000), ("wo_tmfa_x4", CASES, 6000),
                                               ("wo_psf_x4", CASES[:9], 3000)), start=10):
        records[row] = _scores(row, cases, seed, shift=0.5 if row == "tfsdiff_x4" else 0.0)
        info = {"checkpoint": f"runs/{row}_train_x/checkpoint/I{step}_E1.pth", "step": step, "n_iter": 6000,
                "sampler": {"type": "respaced", "steps": 20, "eta": 0.0}, "seconds_per_image": 1.5,
                "l_resolution": 64, "r_resolution": 256}
        layout.save_record(out, "x4", row, "row", records[row], subjects, info)
    assert experiments.main(["--table", "--out", str(out)]) == 0
    return {"out": out, "records": records, "doc": json.loads((out / "tables.json").read_text()),
            "markdown": (out / "tables.md").read_text()}


def _line(markdown: str, label: str, section: str = "") -> list[str]:
    """The cells of the first table line whose first cell is ``label``, after the heading ``section``."""
    lines = markdown.splitlines()
    start = lines.index(section) if section else 0
    line = next(x for x in lines[start:] if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_tables_are_the_per_case_means_and_stds(saved: dict[str, Any]) -> None:
    doc, records = saved["doc"]["forms"]["paper"], saved["records"]
    for method in (*FUSION_RULES, "tfsdiff_x4"):
        table = doc["table1"]["x4"][method]
        for convention, suffix in (("paper", ""), ("cddfuse", "_cddfuse")):
            for metric in ("PSNR", "SSIM") if suffix else PAPER_METRICS:
                values = records[method][convention].values[metric]
                cell = table["metrics"][metric + suffix]
                if metric == "LPIPS":
                    assert cell == {"mean": None, "std": None}
                else:
                    assert cell == {"mean": float(np.mean(values)), "std": float(np.std(values))}
    for method in ("tfsdiff_x4", "wo_tmfa_x4", "wo_psf_x4"):
        values = records[method]["paper"].values["PSNR"]
        assert doc["table2"][method]["metrics"]["PSNR"]["mean"] == float(np.mean(values))
    assert doc["table2"]["wo_psf_x4"]["n"] == 9


def test_markdown_cells_show_the_saved_numbers(saved: dict[str, Any]) -> None:
    markdown, records = saved["markdown"], saved["records"]
    cells = _line(markdown, "Bicubic + PCA", "## Table 1-like (paper form), ×4")
    ssim = records["pca"]["paper"].values["SSIM"]
    assert cells[1] == "12" and cells[3 + 1].strip("*") == f"{np.mean(ssim):.3f} ± {np.std(ssim):.3f}"
    psnr = records["tfsdiff_x4"]["paper"].values["PSNR"]
    assert f"**{np.mean(psnr):.2f} ± {np.std(psnr):.2f}**" in _line(markdown, "TFS-Diff, paper form (tfsdiff_x4)")
    assert _line(markdown, "TFS-Diff, paper form (tfsdiff_x4)")[5 + 1] == "n/a"  # LPIPS
    assert "w/o PSF, paper form (wo_psf_x4), partial: step 3000 of 6000" in markdown
    assert _line(markdown, "TFS-Diff (recipe_x4)", "## Table 1-like, ×4")[1] == "released, not evaluated yet"


def test_ablation_differences_are_paired_over_common_cases(saved: dict[str, Any]) -> None:
    diffs = {(d["row"], d["metric"]): d for d in saved["doc"]["forms"]["paper"]["differences"]}
    ref = saved["records"]["tfsdiff_x4"]["paper"]
    for row, n in (("wo_tmfa_x4", 12), ("wo_psf_x4", 9)):
        for metric in ("PSNR", "SSIM"):
            d = diffs[row, metric]
            other = saved["records"][row]["paper"]
            expected = ref.values[metric][:n] - other.values[metric]
            assert d["n"] == n and d["cases"] == CASES[:n]
            assert d["mean_difference"] == float(expected.mean())
            assert d["ci_low"] < d["mean_difference"] < d["ci_high"]
            assert (d["ci_low"], d["ci_high"]) == bootstrap_interval(expected)
            assert d["p_value"] == sign_flip_p(expected)[0]
    line = _line(saved["markdown"], "w/o TMFA, paper form")
    assert line[3] == f"{diffs['wo_tmfa_x4', 'PSNR']['mean_difference']:+.2f}"


def test_tables_are_reproducible(saved: dict[str, Any]) -> None:
    assert experiments.main(["--table", "--out", str(saved["out"])]) == 0
    assert json.loads((saved["out"] / "tables.json").read_text()) == saved["doc"]
    assert (saved["out"] / "tables.md").read_text() == saved["markdown"]


def test_missing_rows_are_reported_never_invented(saved: dict[str, Any]) -> None:
    doc, markdown = saved["doc"], saved["markdown"]
    assert {m["method"]: m["status"] for m in doc["missing"]} == {
        "official_x4": "trained, not evaluated yet", "tfsdiff_x2": "training: step 3000 of 6000",
        "tfsdiff_x8": "training: step 0 of 6000", "recipe_x4": "released, not evaluated yet",
        "recipe_x2": "released, not evaluated yet", "recipe_x8": "released, not evaluated yet",
        **{row: "not trained yet" for row in RECIPE_ROWS if row not in ("recipe_x4", "recipe_x2", "recipe_x8")}}
    paper = doc["forms"]["paper"]
    for scale, status in (("x2", "training: step 3000 of 6000"), ("x8", "training: step 0 of 6000")):
        assert all("metrics" not in entry for entry in paper["table1"][scale].values())
        assert _line(markdown, f"TFS-Diff, paper form (tfsdiff_{scale})")[1:3] == [status, "—"]
        assert paper["table1"][scale]["pca"]["status"].startswith("not evaluated yet")
    assert "metrics" not in paper["table2"]["official_x4"]
    official = [d for d in paper["differences"] if d["row"] == "official_x4"]
    assert len(official) == 2 and all(d["status"].endswith("trained, not evaluated yet") for d in official)
    assert "No row has results yet" not in markdown


def test_no_results_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert experiments.main(["--table", "--out", str(tmp_path / "results")]) == 0
    doc = json.loads((tmp_path / "results" / "tables.json").read_text())
    assert [m["method"] for m in doc["missing"]] == list(layout.ROWS) and doc["records"] == []
    assert "No row has results yet" in (tmp_path / "results" / "tables.md").read_text()


def test_a_malformed_record_is_an_error_naming_it(saved: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path = saved["out"] / "x4" / "pca.json"
    record = json.loads(path.read_text())
    del record["per_case"]["cddfuse"][CASES[0]]
    path.write_text(json.dumps(record))
    assert experiments.main(["--table", "--out", str(saved["out"])]) == 2
    assert f"error: {path}: per_case.cddfuse must have exactly the record's cases" in capsys.readouterr().err
    path.write_text("{")
    assert experiments.main(["--table", "--out", str(saved["out"])]) == 2
    assert f"error: {path}: not a JSON record" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ comparison rows

PUBLISHED_ORDER = ("ifcnn", "matr")  # in the registry's order (ifcnn before matr), saved below in the other order
SEQUENTIAL_ORDER = ("sr3+laplacian_ycbcr", "sr3+average", "sr3+ifcnn")  # rules (FUSION_RULES order), then published


def _source_scores(method: str, cases: list[str], seed: int) -> MethodScores:
    rng = np.random.default_rng(100 + seed)
    return MethodScores(method, tuple(cases), {m: rng.uniform(0.1, 3.0, len(cases)) for m in layout.SOURCE_METRICS})


@pytest.fixture()
def compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """x4 records of every rule (dwt written before times and HR-source scores were saved), two published methods,
    three sequential ones (sr3+ifcnn, the best by PSNR, on the first 10 cases only) and tfsdiff_x4; x2 records of the
    rules and tfsdiff_x2 but no sequential one; then ``--table``."""
    monkeypatch.chdir(tmp_path)
    out, subjects = tmp_path / "results", {c: c[14:16] for c in CASES}
    scores: dict[str, dict[str, MethodScores]] = {}
    sources: dict[str, MethodScores] = {}
    methods = [(rule, CASES, 0.0) for rule in FUSION_RULES] + [("matr", CASES, 0.0), ("ifcnn", CASES, 0.0)]
    methods += [("sr3+average", CASES, 0.1), ("sr3+ifcnn", CASES[:10], 2.0), ("sr3+laplacian_ycbcr", CASES, 0.0)]
    for seed, (method, cases, shift) in enumerate([*methods, ("tfsdiff_x4", CASES, 3.0)]):
        scores[method] = _scores(method, cases, seed, shift)
        sources[method] = _source_scores(method, cases, seed)
        info: dict[str, Any] = {"command": "test", "seconds_per_image": 0.001 * (seed + 1)}
        if method.startswith("sr3+"):
            info |= {"sr3_seconds_per_case": 20.0, "fusion_seconds_per_image": 0.5, "seconds_per_image": 20.5}
        if method == "tfsdiff_x4":
            info |= {"step": 6000, "n_iter": 6000, "seconds_per_image": 12.25}
        if method == "dwt":
            layout.save_record(out, "x4", method, "baseline", scores[method], subjects, {"command": "old"})
            continue
        layout.save_record(out, "x4", method, layout.kind_of(method), scores[method], subjects, info, sources[method])
    for seed, method in enumerate((*FUSION_RULES, "tfsdiff_x2")):
        info = {"step": 6000, "n_iter": 6000} if method == "tfsdiff_x2" else {}
        layout.save_record(out, "x2", method, layout.kind_of(method), _scores(method, CASES, seed), subjects,
                           info | {"seconds_per_image": 1.0}, _source_scores(method, CASES, seed))
    assert experiments.main(["--table", "--out", str(out)]) == 0
    return {"out": out, "scores": scores, "sources": sources, "doc": json.loads((out / "tables.json").read_text()),
            "markdown": (out / "tables.md").read_text()}


def _section(markdown: str, heading: str) -> list[str]:
    """The table lines under ``heading``, up to the next heading."""
    lines = markdown.splitlines()
    rest = lines[lines.index(heading) + 1:]
    end = next((i for i, line in enumerate(rest) if line.startswith("## ")), len(rest))
    return [line for line in rest[:end] if line.startswith("|")]


def test_table1_lists_rules_then_published_then_sequential_then_tfsdiff(compared: dict[str, Any]) -> None:
    expected = [*FUSION_RULES, *PUBLISHED_ORDER, *SEQUENTIAL_ORDER, "tfsdiff_x4"]
    assert list(compared["doc"]["forms"]["paper"]["table1"]["x4"]) == expected
    assert list(compared["doc"]["forms"]["recipe"]["table1"]["x4"]) == [*expected[:-1], "recipe_x4"]
    labels = [line.split(" | ")[0].removeprefix("| ") for line in
              _section(compared["markdown"], "## Table 1-like (paper form), ×4")[2:]]
    assert labels == ["Bicubic + Laplacian-YCbCr", "Bicubic + Average", "Bicubic + Maximum", "Bicubic + PCA",
                      "Bicubic + DWT", "Bicubic + IFCNN", "Bicubic + MATR", "SR3 + Laplacian-YCbCr", "SR3 + Average",
                      "SR3 + IFCNN", "TFS-Diff, paper form (tfsdiff_x4)"]
    assert list(compared["doc"]["forms"]["paper"]["table1"]["x2"]) == [*FUSION_RULES, "tfsdiff_x2"]  # none recorded
    psnr = compared["scores"]["sr3+ifcnn"]["paper"].values["PSNR"]
    assert compared["doc"]["forms"]["paper"]["table1"]["x4"]["sr3+ifcnn"]["metrics"]["PSNR"]["mean"] == float(
        np.mean(psnr))


def test_table1_has_the_seconds_per_image_of_each_record(compared: dict[str, Any]) -> None:
    table = compared["doc"]["forms"]["paper"]["table1"]["x4"]
    assert table["sr3+average"]["seconds_per_image"] == 20.5 and table["tfsdiff_x4"]["seconds_per_image"] == 12.25
    assert table["laplacian_ycbcr"]["seconds_per_image"] == 0.001 and table["dwt"]["seconds_per_image"] is None
    section = "## Table 1-like (paper form), ×4"
    assert _section(compared["markdown"], section)[0].endswith("| s / image |")
    assert _line(compared["markdown"], "SR3 + Average", section)[-1] == "20.500"
    assert _line(compared["markdown"], "Bicubic + Laplacian-YCbCr", section)[-1] == "0.001"
    assert _line(compared["markdown"], "Bicubic + DWT", section)[-1] == "n/a"
    assert _line(compared["markdown"], "TFS-Diff (recipe_x4)", "## Table 1-like, ×4")[-1] == "—"
    assert "s / image" not in _section(compared["markdown"], "## Table 2-like (paper form): ablations, ×4")[0]


def test_no_reference_table_holds_the_scores_against_the_hr_sources(compared: dict[str, Any]) -> None:
    doc, markdown = compared["doc"]["forms"]["paper"]["no_reference"]["x4"], compared["markdown"]
    assert list(doc) == list(compared["doc"]["forms"]["paper"]["table1"]["x4"])
    for method in ("laplacian_ycbcr", "ifcnn", "sr3+ifcnn", "tfsdiff_x4"):
        values = compared["sources"][method].values
        assert doc[method]["metrics"] == {m: {"mean": float(np.mean(values[m])), "std": float(np.std(values[m]))}
                                          for m in layout.SOURCE_METRICS}
    assert all(cell == {"mean": None, "std": None} for cell in doc["dwt"]["metrics"].values())
    heading = "## No-reference metrics (paper form), ×4: against the three HR sources, cddfuse convention"
    lines = _section(markdown, heading)
    assert lines[0] == ("| Method | n | EN (grey, bits) ↑ | SD (grey) ↑ | SF (grey) ↑ | MI (grey, nats, sum over 2 "
                        "sources) ↑ | SCD (grey) ↑ | VIF (grey, VIFF, sum over 2 sources) ↑ | Qabf (grey, GAF = gF) "
                        "↑ | SSIM (grey, data_range 2, sum over 2 sources) ↑ |")
    assert _line(markdown, "Bicubic + DWT", heading)[1:] == ["12", *["n/a"] * len(layout.SOURCE_METRICS)]
    en = compared["sources"]["sr3+ifcnn"].values["EN"]
    assert _line(markdown, "SR3 + IFCNN", heading)[2].strip("*") == f"{np.mean(en):.3f} ± {np.std(en):.3f}"
    assert tables.NO_SOURCES in markdown.split(heading, 1)[1].split("## ", 1)[0]
    x2 = "## No-reference metrics (paper form), ×2: against the three HR sources, cddfuse convention"
    assert tables.NO_SOURCES not in markdown.split(x2, 1)[1].split("## ", 1)[0]  # every x2 record has them


def test_tfsdiff_against_the_best_sequential_pipeline(compared: dict[str, Any]) -> None:
    entry = compared["doc"]["forms"]["paper"]["sequential"]["x4"]
    assert (entry["best"], entry["reference"]) == ("sr3+ifcnn", "tfsdiff_x4")
    assert entry["candidates"] == list(SEQUENTIAL_ORDER)
    ours, best = compared["scores"]["tfsdiff_x4"]["paper"], compared["scores"]["sr3+ifcnn"]["paper"]
    for d, metric in zip(entry["differences"], ("PSNR", "SSIM")):
        expected = ours.select(CASES[:10]).values[metric] - best.values[metric]
        assert (d["metric"], d["n"], d["cases"], d["row"]) == (metric, 10, CASES[:10], "sr3+ifcnn")
        assert d["mean_difference"] == float(expected.mean())
        assert (d["ci_low"], d["ci_high"]) == bootstrap_interval(expected)
        assert (d["p_value"], d["exact_p"]) == sign_flip_p(expected)
    heading = "## TFS-Diff (paper form) against the best SR3 + fusion pipeline, ×4, paired over cases"
    cells = _line(compared["markdown"], "SR3 + IFCNN (best of 3 SR3 + fusion rows by mean PSNR)", heading)
    assert cells[1:4] == ["PSNR (grey, peak 255)", "10", f"{entry['differences'][0]['mean_difference']:+.2f}"]
    recipe = compared["doc"]["forms"]["recipe"]["sequential"]["x4"]
    assert recipe["best"] == "sr3+ifcnn"
    assert all(d["status"] == "TFS-Diff (recipe_x4): released, not evaluated yet" for d in recipe["differences"])


def test_no_sequential_record_is_said_in_one_line(compared: dict[str, Any]) -> None:
    entry = compared["doc"]["forms"]["paper"]["sequential"]["x2"]
    assert (entry["best"], entry["differences"], entry["status"]) == (None, [], tables.NO_SEQUENTIAL)
    lines = _section(compared["markdown"], "## TFS-Diff (paper form) against the best SR3 + fusion pipeline, ×2, "
                                           "paired over cases")
    assert lines[2:] == [f"| SR3 + fusion | — | — | {tables.NO_SEQUENTIAL} | — | — |"]  # one line, no numbers


def test_a_malformed_source_score_is_an_error_naming_it(compared: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = compared["out"] / "x4" / "ifcnn.json"
    record = json.loads(path.read_text())
    record["per_case_sources"][CASES[3]]["Qabf"] = None
    path.write_text(json.dumps(record))
    assert experiments.main(["--table", "--out", str(compared["out"])]) == 2
    assert f"error: {path}: per_case_sources.{CASES[3]}.Qabf is missing or null" in capsys.readouterr().err


def test_kinds_and_the_order_of_the_comparison_methods() -> None:
    assert PUBLISHED_FUSION.names() == PUBLISHED
    assert layout.comparison_methods() == (*PUBLISHED, *(f"sr3+{m}" for m in (*FUSION_RULES, *PUBLISHED)))
    assert [layout.kind_of(m) for m in ("recipe_x4", "pca", "ifcnn", "sr3+ifcnn", "sr3+dwt")] == [
        "row", "baseline", "published", "sequential", "sequential"]


# ------------------------------------------------------------------------------------------------ --run end to end

SIZE, SCALE, PAIR_SIZE = 16, 4, 32
PAIRS = {"CT-MRI": (("CT", "MRI"), ("11001", "21001", "28001")),
         "SPECT-MRI": (("MRI", "SPECT"), ("13001", "21001", "28001")),
         "PET-MRI": (("MRI", "PET"), ("15001", "41001"))}
MODALITIES = ("CT", "MRI", "SPECT", "PET")


def _pairs(root: Path, make_rgb: Callable[..., np.ndarray]) -> Path:
    """Pair folders with two real test triplets (21001, 28001: the same MRI in both kinds), a PET-MRI pair of test
    subject 41 and three train pairs."""
    for kind, (names, ids) in PAIRS.items():
        for name in names:
            for pair_id in ids:
                seed = int(pair_id) * 10 + MODALITIES.index(name)
                path = root / kind / name / f"{pair_id}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_rgb(seed, (PAIR_SIZE, PAIR_SIZE), grey=name in ("CT", "MRI"))).save(path)
    return root


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory: pytest.TempPathFactory, make_rgb, make_tiny_config, make_tiny_model) -> dict:
    """Synthetic pairs; tiny configs of rows tfsdiff_x4 and wo_tmfa_x4 (budget 10 steps); an untrained tiny model
    saved as step 10 in a tfsdiff_x4 run folder and as step 5 elsewhere."""
    root = tmp_path_factory.mktemp("experiments_run")
    test = {"dataroot": "unused", "l_resolution": SIZE // SCALE, "r_resolution": SIZE, "batch_size": 2}
    configs = {}
    for row, extra in (("tfsdiff_x4", {}), ("wo_tmfa_x4", {"model.tmfa.placement": "off"})):
        changes = {"name": row, "datasets.test": test, "path.experiments_root": str(root / "experiments"), **extra}
        configs[row] = root / f"{row}.json"
        configs[row].write_text(json.dumps(make_tiny_config(SIZE, SCALE, changes=changes)), encoding="utf-8")
    model = make_tiny_model(size=SIZE, scale=SCALE)
    model.step = 10
    final = model.save(root / "experiments" / "tfsdiff_x4_train_260101_000000" / "checkpoint")
    model.step = 5
    early = model.save(root / "early")
    return {"root": root, "pairs": _pairs(root / "pairs", make_rgb), "configs": configs, "final": final,
            "early": early}


def _run(inputs: dict, row: str, out: Path, *extra: str) -> int:
    return experiments.main(["--run", row, "--config", str(inputs["configs"][row]), "--data", str(inputs["pairs"]),
                             "--out", str(out), "--no-progress", *extra])


@pytest.mark.slow
def test_run_evaluates_the_newest_run_and_the_baselines_once(run_inputs: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    assert _run(run_inputs, "tfsdiff_x4", out) == 0
    record = json.loads((out / "x4" / "tfsdiff_x4.json").read_text())
    ids = ["real_ct_spect_21001", "real_ct_spect_28001"]
    assert [c["case_id"] for c in record["cases"]] == ids and [c["subject"] for c in record["cases"]] == ["21", "28"]
    assert record["checkpoint"] == str(run_inputs["final"]) and (record["step"], record["n_iter"]) == (10, 10)
    assert sorted(p.name for p in (out / "x4" / "tfsdiff_x4").iterdir() if p.name != FOLDER_MARKER) == sorted(
        f"{c}_{k}.png" for c in ids for k in ("src1", "src2", "src3", "fused", "hr"))
    baseline_times = {r: (out / "x4" / f"{r}.json").stat().st_mtime_ns for r in FUSION_RULES}
    doc = json.loads((out / "tables.json").read_text())
    psnr = [record["per_case"]["paper"][c]["PSNR"] for c in ids]
    table1 = doc["forms"]["paper"]["table1"]["x4"]
    assert table1["tfsdiff_x4"]["metrics"]["PSNR"]["mean"] == float(np.mean(psnr))
    assert set(table1) == {*FUSION_RULES, "tfsdiff_x4"}
    assert all("metrics" in table1[r] for r in FUSION_RULES)
    assert _run(run_inputs, "tfsdiff_x4", out, "--checkpoint", str(run_inputs["final"])) == 0
    assert baseline_times == {r: (out / "x4" / f"{r}.json").stat().st_mtime_ns for r in FUSION_RULES}


@pytest.mark.parametrize(("extra", "message"), [
    (["--peer", "median"], "--peer median: 'median' is not a published method (one of ifcnn, prrgan, matr"),
    (["--peer", "bitonicx", "--peer", "bitonicx"], "--peer bitonicx is given twice"),
    (["--sr3-config", "sr3.json"], "--sr3-config goes with --sr3 (the sequential baselines)"),
    (["--sr3", "--sr3-config", "{root}/none.json"], "--sr3-config {root}/none.json does not exist"),
    (["--sr3", "--sr3-config", "{config}"], "is a config of task 'fusion', not an SR3 config"),
    (["--peer", "ifcnn={root}/nowhere"], "IFCNN: {root}/nowhere/Code/snapshots/IFCNN-MAX.pth does not exist"),
])
def test_run_refuses_unusable_peer_and_sr3_arguments(run_inputs: dict, tmp_path: Path, extra: list[str],
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--peer / --sr3 / --sr3-config as paper.real_scans checks them: exit 2, one error naming the argument, before
    anything is written."""
    names = {"root": run_inputs["root"], "config": run_inputs["configs"]["tfsdiff_x4"]}
    out = tmp_path / "results"
    assert _run(run_inputs, "tfsdiff_x4", out, *(arg.format(**names) for arg in extra)) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message.format(**names) in err and "Traceback" not in err
    assert not out.exists()


SR3_TINY = {"model.task": "sr3", "model.unet.in_channel": 6, "model.tmfa": {"placement": "off"},
            "model.loss": {"type": "mse"}, "model.unet.inner_channel": 8, "model.unet.norm_groups": 4,
            "model.unet.attn_res": [], "name": "sr3_tiny"}


@pytest.mark.slow
def test_run_adds_the_sequential_rows_once_with_times_and_hr_source_scores(
        run_inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tiny_config) -> None:
    """--run with --sr3 (a tiny untrained SR3 model): the sr3+NAME records beside the baselines, each with SR3's
    time plus its own, every record with its scores against the HR sources of the test split; a second --run leaves
    them as they are; the tables pick the best sequential row and pair TFS-Diff with it."""
    monkeypatch.chdir(tmp_path)
    sr3_config = tmp_path / "sr3_tiny.json"
    sr3_config.write_text(json.dumps(make_tiny_config(SIZE, SCALE, changes=SR3_TINY)), encoding="utf-8")
    torch.manual_seed(0)
    sr3_weights = TFSDiffModel(load_config(sr3_config), torch.device("cpu")).save(tmp_path / "sr3")
    out, extra = tmp_path / "results", ("--sr3", str(sr3_weights), "--sr3-config", str(sr3_config))
    assert _run(run_inputs, "tfsdiff_x4", out, *extra) == 0
    sequential = [f"sr3+{rule}" for rule in FUSION_RULES]
    saved = {m: json.loads((out / "x4" / f"{m}.json").read_text()) for m in (*FUSION_RULES, *sequential, "tfsdiff_x4")}
    for method in sequential:
        record = saved[method]
        assert record["kind"] == "sequential" and record["sr3_checkpoint"] == str(sr3_weights)
        assert record["seconds_per_image"] == record["sr3_seconds_per_case"] + record["fusion_seconds_per_image"]
        assert record["sr3_seconds_per_case"] > 0 and record["sr3_sampler"]["type"] == "ddpm"
    assert all(saved[rule]["seconds_per_image"] > 0 for rule in FUSION_RULES)
    case, test_split = "real_ct_spect_21001", out / "x4" / "data" / "test"
    hr_sources = [read_image(source_hr_dir(test_split, k, SIZE) / f"{case}.png") for k in SOURCES]
    for method, record in saved.items():
        fused = read_image(out / "x4" / method / f"{case}_fused.png")
        expected = score_metrics(layout.SOURCE_METRICS, fused, hr_sources, None, "sources", None, "cddfuse")
        assert record["per_case_sources"][case] == pytest.approx(expected, rel=1e-12)
    times = {m: (out / "x4" / f"{m}.json").stat().st_mtime_ns for m in (*FUSION_RULES, *sequential)}
    assert _run(run_inputs, "tfsdiff_x4", out, *extra) == 0
    assert times == {m: (out / "x4" / f"{m}.json").stat().st_mtime_ns for m in (*FUSION_RULES, *sequential)}
    doc = json.loads((out / "tables.json").read_text())["forms"]["paper"]
    assert list(doc["table1"]["x4"]) == [*FUSION_RULES, *sequential, "tfsdiff_x4"]
    best = max(sequential, key=lambda m: np.mean([v["PSNR"] for v in saved[m]["per_case"]["paper"].values()]))
    entry = doc["sequential"]["x4"]
    assert entry["best"] == best and [d["n"] for d in entry["differences"]] == [2, 2]


@pytest.mark.slow
def test_run_refuses_a_partial_or_foreign_checkpoint(run_inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    assert _run(run_inputs, "tfsdiff_x4", out, "--checkpoint", str(run_inputs["early"])) == 2
    assert "is at step 5, not at the budget train.n_iter 10" in capsys.readouterr().err
    assert _run(run_inputs, "wo_tmfa_x4", out, "--checkpoint", str(run_inputs["final"])) == 2
    assert "was not trained as row wo_tmfa_x4 (" in (err := capsys.readouterr().err)
    assert "model.tmfa.placement: 'off' != 'condition'" in err
    assert _run(run_inputs, "wo_tmfa_x4", out) == 2  # it has no run folder
    assert "no training run of wo_tmfa_x4" in capsys.readouterr().err
    assert experiments.main(["--run", "tfsdiff_x2", "--config", str(run_inputs["configs"]["tfsdiff_x4"]), "--data",
                             str(run_inputs["pairs"]), "--out", str(out)]) == 2
    assert "its test split is at scale x4, but row tfsdiff_x2 is x2" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_run_with_allow_partial_marks_the_row(run_inputs: dict, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    assert _run(run_inputs, "tfsdiff_x4", out, "--checkpoint", str(run_inputs["early"]), "--allow-partial") == 0
    assert "TFS-Diff, paper form (tfsdiff_x4), partial: step 5 of 10" in (out / "tables.md").read_text()


def test_the_published_tables_are_rebuilt_from_the_committed_records(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/experiments_results holds the per-case records of the evaluated rows and baselines (numbers only, no
    images): ``--table`` on a copy of them gives the committed tables.md / tables.json byte for byte, and every line
    of the Table 1-like, Table 2-like and difference tables appears in docs/experiments.md, so the page cannot drift
    from the records. A row without a record is one nobody has trained (the status a fresh clone gives it)."""
    status_of = experiments.status_of
    monkeypatch.setattr(experiments, "status_of", lambda method: "not trained yet" if method in layout.ROWS
                        else status_of(method))
    published = ROOT / "docs" / "experiments_results"
    for record in published.glob("x*/*.json"):
        (tmp_path / record.parent.name).mkdir(exist_ok=True)
        (tmp_path / record.parent.name / record.name).write_bytes(record.read_bytes())
    assert experiments.main(["--table", "--out", str(tmp_path)]) == 0
    rebuilt = (tmp_path / "tables.md").read_text()
    assert rebuilt == (published / "tables.md").read_text()
    doc, committed = (json.loads((folder / "tables.json").read_text()) for folder in (tmp_path, published))
    names = [Path(record).relative_to(tmp_path).as_posix() for record in doc.pop("records")]
    assert names == [Path(record).relative_to("docs/experiments_results").as_posix()
                     for record in committed.pop("records")]
    assert doc == committed and all(m["status"] == "not trained yet" for m in doc["missing"])
    evaluated = {Path(name).stem for name in names}
    assert {m["method"] for m in doc["missing"]} == set(layout.ROWS) - evaluated
    assert set(PAPER_ROWS) | {"recipe_x4", "recipe_x2", "recipe_x8", "recipe_wo_tmfa_x4", "recipe_official_x4",
                                "recipe_wo_psf_x4"} <= evaluated
    page = (ROOT / "docs" / "experiments.md").read_text().splitlines()
    table_lines = [line for line in rebuilt.split("## Table 1-like", 1)[1].splitlines() if line.startswith("| ")]
    assert len(table_lines) >= 30 and [line for line in table_lines if line not in page] == []
