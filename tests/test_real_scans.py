"""Tests of the real-scan benchmark (paper/real_scans.py, paper/real_scans_report.py) and of the scoring it shares with
eval.py (metrics.scoring.score_folder): end to end on synthetic pair folders with a tiny model, and on the real
Harvard folders (../shared) with the shipped real-scan weights when both exist."""
from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
from core.config import load_config
from core.outputs import FOLDER_MARKER
from data.fusion_rules import FUSION_RULES, fuse
from data.images import read_image
from data.layout import SOURCES, source_hr_dir
from data.prepare_data import main as prepare_main
from metrics.scoring import MethodScores, ScoringError, score_folder
from paper import real_scans
from paper.real_scans_report import case_groups, margins, targets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HARVARD, TRIMODAL = SHARED / "harvard_aanlib", SHARED / "harvard_trimodal"
REAL_CONFIG = Path(__file__).resolve().parents[1] / "config" / "harvard_x4_residual_start200_64_256.json"
PAIR_SIZE, SIZE, SCALE = 32, 16, 4
# kind -> (folder names, pair ids); the MRIs of 21001 and 28001 are identical across CT-MRI and SPECT-MRI (two real
# triplets, subjects 21 and 28); 41001 is a test subject's PET-MRI pair; the others are train/val subjects.
PAIRS = {"CT-MRI": (("CT", "MRI"), ("11001", "12001", "21001", "28001")),
         "SPECT-MRI": (("MRI", "SPECT"), ("13001", "14001", "21001", "28001")),
         "PET-MRI": (("MRI", "PET"), ("15001", "16001", "41001"))}
METHODS = (*FUSION_RULES, "tfsdiff")


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(name: str, pair_id: str, make_rgb: Callable[..., np.ndarray]) -> np.ndarray:
    """A random PAIR_SIZE image per (modality, id); the MRI of an id is the same in every pair folder."""
    seed = int(pair_id) * 10 + ("CT", "MRI", "SPECT", "PET").index(name)
    return make_rgb(seed, (PAIR_SIZE, PAIR_SIZE), grey=name in ("CT", "MRI"))


def _make_inputs(root: Path, make_rgb: Callable[..., np.ndarray]) -> tuple[Path, Path]:
    """(pair folder, triplet folder): the pairs of PAIRS, and two triplet cases: ``pet41`` showing the MRI of 41001
    (subject 41) and ``novel`` showing no pair's slice (subject unknown)."""
    pairs = root / "pairs"
    for kind, (names, ids) in PAIRS.items():
        for name in names:
            for pair_id in ids:
                _save(pairs / kind / name / f"{pair_id}.png", _image(name, pair_id, make_rgb))
    triplets = root / "triplets"
    _save(triplets / "pet41_1_MR-T1.png", _image("MRI", "41001", make_rgb))
    _save(triplets / "pet41_2_MR-T2.png", make_rgb(7, (PAIR_SIZE, PAIR_SIZE), grey=True))
    _save(triplets / "pet41_3_PET.png", make_rgb(8, (PAIR_SIZE, PAIR_SIZE)))
    for k, name in enumerate(("MR-Gad", "MR-T2", "SPECT-Tl"), start=1):
        _save(triplets / f"novel_{k}_{name}.png", make_rgb(20 + k, (PAIR_SIZE, PAIR_SIZE), grey=k < 3))
    return pairs, triplets


def _make_config(folder: Path, make_tiny_config: Callable[..., dict[str, Any]], checkpoint: Path | None) -> Path:
    test = {"dataroot": "unused", "l_resolution": SIZE // SCALE, "r_resolution": SIZE, "batch_size": 2}
    changes: dict[str, Any] = {"datasets.test": test, "path.experiments_root": str(folder / "experiments")}
    if checkpoint is not None:
        changes["path.pretrained"] = str(checkpoint)
    path = folder / ("tiny.json" if checkpoint is not None else "tiny_without_weights.json")
    path.write_text(json.dumps(make_tiny_config(SIZE, SCALE, changes=changes)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, make_rgb, make_tiny_config, make_tiny_model) -> dict:
    """One benchmark run on the synthetic folders with a tiny checkpoint (named by the config's path.pretrained)."""
    root = tmp_path_factory.mktemp("real_scans")
    pairs, triplets = _make_inputs(root, make_rgb)
    checkpoint = make_tiny_model(size=SIZE, scale=SCALE).save(root / "weights")
    config = _make_config(root, make_tiny_config, checkpoint)
    out, figure = root / "out", root / "figure.png"
    code = real_scans.main(["--data", str(pairs), "--triplets", str(triplets), "-c", str(config), "--out", str(out),
                            "--figure", str(figure), "--no-progress"])
    assert code == 0
    return {"root": root, "pairs": pairs, "triplets": triplets, "config": config, "out": out, "figure": figure,
            "checkpoint": checkpoint, "record": json.loads((out / "real_scans.json").read_text())}


@pytest.mark.slow
def test_writes_the_test_split_results_tables_json_and_figure(bench_run: dict) -> None:
    out, record = bench_run["out"], bench_run["record"]
    ids = ["real_ct_spect_21001", "real_ct_spect_28001", "trimodal_novel", "trimodal_pet41"]
    assert [c["case_id"] for c in record["cases"]] == ids
    assert [c["subject"] for c in record["cases"]] == ["21", "28", None, "41"]
    assert record["groups"] == {"all": ids, "21": ids[:1], "28": ids[1:2], "41": ids[3:], "other": ids[2:3]}
    for method in METHODS:
        folder = out / "x4" / method
        assert (folder / FOLDER_MARKER).is_file()  # paper.real_scans's own folder (core.outputs)
        names = sorted(p.name for p in folder.iterdir() if p.name != FOLDER_MARKER)
        assert names == sorted(f"{c}_{k}.png" for c in ids for k in ("src1", "src2", "src3", "fused", "hr"))
        assert read_image(folder / f"{ids[0]}_fused.png").shape == (SIZE, SIZE, 3)
    markdown = (out / "real_scans.md").read_text()
    for title in ("All real test cases (4 cases)", "Subject 21 (1 cases)", "Subject 41 (1 cases)",
                  "Subject unknown (other) (1 cases)", "| TFS-Diff (ours) |", "| Bicubic + Laplacian-YCbCr |",
                  "convention: paper", "s per fused image"):
        assert title in markdown, title
    assert "convention: cddfuse" in (out / "real_scans_cddfuse.md").read_text()
    assert record["seconds_per_image"] > 0 and record["checkpoint"] == str(bench_run["checkpoint"])
    assert set(record["per_case"]) == {"paper", "cddfuse"} and set(record["per_case"]["paper"]) == set(METHODS)
    assert set(record["summary"]["paper"]) == set(record["groups"])
    colour = record["false_colour"]
    assert set(colour["per_case"]) == set(METHODS) and all(set(v) == set(ids) for v in colour["per_case"].values())
    assert set(colour["mean"]) == set(record["groups"]) and "False colour (mean chroma" in markdown
    assert Image.open(bench_run["figure"]).size == (120 + 10 * (128 + 4), 30 + 4 * (128 + 4))  # 4 rows, 10 columns


@pytest.mark.slow
def test_test_split_is_the_prepared_dataset_test_split(bench_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    prepared = bench_run["root"] / "prepared"
    code = prepare_main(["pairs", "--input", str(bench_run["pairs"]), "--triplets", str(bench_run["triplets"]),
                         "--out", str(prepared), "--size", str(SIZE), "--scales", str(SCALE), "--quiet"])
    assert code == 0, capsys.readouterr().err
    ours = bench_run["out"] / "data" / "test"
    hr_sources = {source_hr_dir(ours, k, SIZE).name for k in SOURCES}  # the HR sources, which only ours holds
    files = sorted(p.relative_to(ours) for p in ours.rglob("*.png") if p.parent.name not in hr_sources)
    assert files == sorted(p.relative_to(prepared / "test") for p in (prepared / "test").rglob("*.png"))
    assert all((ours / f).read_bytes() == (prepared / "test" / f).read_bytes() for f in files)
    gt = prepared / "test" / f"hr_{SIZE}"
    for case in gt.glob("*.png"):  # the ground truth is the baseline rule of exactly these HR sources
        sources = [read_image(source_hr_dir(ours, k, SIZE) / case.name) for k in SOURCES]
        assert np.array_equal(read_image(case), fuse("laplacian_ycbcr", sources))
    assert json.loads((bench_run["out"] / "data" / "manifest.json").read_text())["written_splits"] == ["test"]


def _per_image(csv_path: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """method -> case -> metric -> value of eval.py's per-image CSV (None for an empty cell)."""
    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    with csv_path.open() as handle:
        for row in csv.DictReader(handle):
            values = {k: (float(v) if v else None) for k, v in row.items() if k not in ("scale", "method", "case_id")}
            rows.setdefault(row["method"], {})[row["case_id"]] = values
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("convention", ["paper", "cddfuse"])
def test_scores_equal_eval_py(bench_run: dict, convention: str, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = bench_run["root"] / f"eval_{convention}"
    code = eval_cli.main([str(bench_run["out"] / "x4"), "--out", str(prefix), "--convention", convention,
                          "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _per_image(Path(f"{prefix}_per_image.csv")) == bench_run["record"]["per_case"][convention]


@pytest.mark.slow
def test_margins_and_targets_follow_the_per_case_numbers(bench_run: dict) -> None:
    record = bench_run["record"]
    per_case = record["per_case"]["paper"]
    for group, ids in record["groups"].items():
        mean = {m: {k: float(np.mean([per_case[m][c][k] for c in ids])) for k in ("PSNR", "SSIM")} for m in METHODS}
        best = max(FUSION_RULES, key=lambda rule: mean[rule]["PSNR"])
        got = record["margins"][group]
        assert got["best_baseline"] == best and got["cases"] == len(ids)
        assert got["psnr_margin"] == pytest.approx(mean["tfsdiff"]["PSNR"] - mean[best]["PSNR"])
        assert got["ssim_margin"] == pytest.approx(mean["tfsdiff"]["SSIM"] - mean[best]["SSIM"])
    checks = record["targets"]
    assert checks["psnr_margin_at_least_1_db"] == (record["margins"]["all"]["psnr_margin"] >= 1.0)
    assert checks["met"] == all(checks[k] is True for k in checks if k not in ("met", "rule"))


def test_targets_rules() -> None:
    def group(psnr: float, ssim: float) -> dict[str, float]:
        return {"psnr_margin": psnr, "ssim_margin": ssim}

    good = {"all": group(1.2, 0.01), "21": group(0.5, 0.02), "28": group(2.0, 0.001)}
    assert targets(good)["met"]
    assert not targets({**good, "all": group(0.9, 0.01)})["met"]
    assert not targets({**good, "28": group(0.5, -0.001)})["subject_28_above_best_baseline"]
    missing = targets({"all": group(3.0, 0.1), "21": group(3.0, 0.1)})
    assert missing["subject_28_above_best_baseline"] is None and not missing["met"]


def test_margins_pick_the_baseline_with_the_best_mean_psnr() -> None:
    def scores(method: str, psnr: list[float], ssim: list[float]) -> MethodScores:
        return MethodScores(method, ("a", "b"), {"PSNR": np.array(psnr), "SSIM": np.array(ssim)})

    result = margins([scores("average", [20, 22], [0.9, 0.9]), scores("pca", [23, 23], [0.5, 0.5]),
                      scores("tfsdiff", [24, 25], [0.6, 0.7])])
    assert result["best_baseline"] == "pca" and result["psnr_margin"] == pytest.approx(1.5)
    assert result["ssim_margin"] == pytest.approx(0.15)


def test_case_groups_and_figure_cases_spread_over_subjects() -> None:
    ids = [f"real_ct_spect_{s}{i:03d}" for s in (21, 28) for i in range(5, 21)] + ["trimodal_case09", "trimodal_x"]
    subject_of = {c: c[14:16] for c in ids[:32]} | {"trimodal_case09": "41", "trimodal_x": None}
    groups = case_groups(ids, subject_of)
    assert list(groups) == ["all", "21", "28", "41", "other"] and len(groups["21"]) == 16
    assert real_scans.figure_cases(groups) == ["real_ct_spect_21013", "real_ct_spect_28013", "trimodal_case09",
                                               "trimodal_x"]
    first = case_groups(ids[:4], subject_of)
    assert real_scans.figure_cases(first) == ids[:4]
    assert real_scans.figure_cases(case_groups(ids[:34], subject_of), 6) == [
        "real_ct_spect_21009", "real_ct_spect_21017", "real_ct_spect_28009", "real_ct_spect_28017",
        "trimodal_case09", "trimodal_x"]


def test_score_folder_rejects_cases_of_mixed_sizes(tmp_path: Path, make_rgb, make_results,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "x4" / "average"
    make_results(folder, ["a", "b"], 300)
    _save(folder / "b_fused.png", make_rgb(1, (8, 8)))
    with pytest.raises(ScoringError, match="images of case b differ in size"):
        score_folder(folder, ["a", "b"], "gt", "paper", None, "paper", read_image)
    assert eval_cli.main([str(folder), "--no-progress"]) == 2
    assert "differ in size" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["data", "triplets", "no_checkpoint", "bad_checkpoint", "cases", "config"])
def test_input_errors_exit_2_with_one_line(bench_run: dict, problem: str, make_tiny_config,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = bench_run["root"]
    args = {"--data": bench_run["pairs"], "-c": bench_run["config"], "--out": root / f"err_{problem}"}
    expected = {"data": "does not exist", "triplets": "does not exist", "no_checkpoint": "no checkpoint",
                "bad_checkpoint": "no checkpoint at", "cases": "--cases", "config": "missing.json"}[problem]
    extra: list[str] = []
    if problem == "data":
        args["--data"] = root / "missing"
    elif problem == "triplets":
        extra = ["--triplets", str(root / "missing")]
    elif problem == "no_checkpoint":
        args["-c"] = _make_config(root, make_tiny_config, None)
    elif problem == "bad_checkpoint":
        extra = ["--checkpoint", str(root / "nothing.pth")]
    elif problem == "cases":
        extra = ["--cases", "0"]
    else:
        args["-c"] = root / "missing.json"
    code = real_scans.main([str(a) for kv in args.items() for a in kv] + extra + ["--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_rerun_replaces_only_its_own_outputs(bench_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: paper.real_scans replaces its own previous --out without --overwrite (the documented rerun), keeps
    what it did not write, refuses a report file the user changed and a user's folder as --out, writing nothing."""
    root, out = bench_run["root"], bench_run["root"] / "again"
    args = ["--data", str(bench_run["pairs"]), "--triplets", str(bench_run["triplets"]), "-c", str(bench_run["config"]),
            "--cases", "1", "--no-progress"]
    assert real_scans.main([*args, "--out", str(out)]) == 0
    assert (out / FOLDER_MARKER).is_file() and (out / "data" / FOLDER_MARKER).is_file()
    (out / "x4" / "average" / "stale.png").write_bytes(b"old")  # inside its own method folder: replaced
    (out / "notes.txt").write_text("mine")  # beside its outputs: kept
    assert real_scans.main([*args, "--out", str(out)]) == 0
    assert not (out / "x4" / "average" / "stale.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert not [p.name for p in (out / "x4").iterdir() if p.name.startswith(".")]  # no temporary left
    (out / "real_scans.md").write_text("my edits")
    capsys.readouterr()
    assert real_scans.main([*args, "--out", str(out)]) == 2
    assert "real_scans.md already exists and was not written by TFS-Diff" in capsys.readouterr().err
    assert (out / "real_scans.md").read_text() == "my edits"
    user = root / "user_folder"
    (user / "data").mkdir(parents=True)
    (user / "data" / "mine.txt").write_text("mine")
    assert real_scans.main([*args, "--out", str(user)]) == 2
    assert "was not written by paper.real_scans" in capsys.readouterr().err
    assert sorted(p.name for p in user.rglob("*")) == ["data", "mine.txt"]


def _shipped_weights() -> Path | None:
    pretrained = load_config(REAL_CONFIG).path.pretrained if REAL_CONFIG.is_file() else None
    path = Path(pretrained) if pretrained else None
    if path is not None and not path.is_absolute():
        path = REAL_CONFIG.parents[1] / path
    return path if path is not None and path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(not (HARVARD.is_dir() and TRIMODAL.is_dir()),
                    reason=f"the real Harvard folders are not at {SHARED} (../shared of the repository, provided "
                           "beside the clone; they may not be copied into the repository)")
def test_shipped_model_beats_the_best_baseline_on_real_scans(tmp_path: Path) -> None:
    weights = _shipped_weights()
    if weights is None:
        pytest.skip("no shipped real-scan weights yet")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # as the command runs (conftest sets one thread for the tiny nets)
    try:
        start = time.perf_counter()
        code = real_scans.main(["--data", str(HARVARD), "--triplets", str(TRIMODAL), "-c", str(REAL_CONFIG),
                                "--checkpoint", str(weights), "--cases", "4", "--out", str(tmp_path),
                                "--no-progress"])
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    overall = json.loads((tmp_path / "real_scans.json").read_text())["margins"]["all"]
    assert overall["cases"] == 4
    assert overall["psnr_margin"] > 0 and overall["ssim_margin"] > 0, overall
    assert elapsed < 120, f"the benchmark on 4 real cases took {elapsed:.0f} s (limit 2 minutes)"
