"""A run folder is resumable from the moment it exists: what a folder given as --checkpoint stands for, the removal of
temporary files left by killed saves, and kill -9 of a resumed run (before its first step and during its first
save) followed by a resume from its folder that ends bit-identical to the uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import sr
from core.logger import setup_logger
from model.checkpoint_io import (CheckpointError, RESUMED_FROM, remove_stale_temporaries, resolve_checkpoint,
                                 resume_records)

ROOT = Path(__file__).resolve().parents[1]
TRAINING = {"datasets.train.batch_size": 3, "model.beta_schedule.train.n_timestep": 40,
            "model.beta_schedule.val.n_timestep": 40, "train.n_iter": 6, "train.val_freq": 1000,
            "train.save_checkpoint_freq": 3}
# Runs sr.main in a child that SIGKILLs itself before its first training step or inside its first torch.save.
KILLED_RUN = """
import os, signal, sys
import torch
import sr
from core.logger import setup_logger
from model.model import TFSDiffModel

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def half_written_then_die(obj, f):
    f.write(b"half a checkpoint")
    f.flush()
    die()

if sys.argv[1] == "first_step":
    TFSDiffModel.train_step = die
else:
    torch.save = half_written_then_die
sr.main(sys.argv[2:])
"""
MakeRunConfig = Callable[[Path, str, Mapping[str, Any]], Path]


def _touch(path: Path, age_seconds: float = 0.0) -> Path:
    path.write_bytes(b"")
    if age_seconds:
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
    return path


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def _run_folder(experiments: Path, name: str) -> Path:
    (found,) = sorted(experiments.glob(f"{name}_train_*"))
    return found


# ----------------------------------------------------------------------------------------------- folders

def test_a_folder_stands_for_latest_else_its_newest_complete_checkpoint_else_its_source(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = run / "checkpoint"
    folder.mkdir(parents=True)
    source = _touch(tmp_path / "I3_E1.pth")
    (folder / RESUMED_FROM).write_text(f"{source}\n", encoding="utf-8")
    for path in (run, folder):
        assert resolve_checkpoint(path) == ("ours", source)
    _touch(folder / f".I9_E4.pth.tmp{_dead_pid()}")  # a killed save is never a checkpoint
    _touch(folder / "I9_E4_gen.pth")  # nor an official file
    assert resolve_checkpoint(run) == ("ours", source)
    for name in ("I4_E2.pth", "I12_E5.pth", "I6_E3.pth"):
        _touch(folder / name)
    assert resolve_checkpoint(run) == ("ours", folder / "I12_E5.pth")  # by step, not by name
    (folder / "latest").write_text("I6_E3.pth\n", encoding="utf-8")
    assert resolve_checkpoint(folder) == ("ours", folder / "I6_E3.pth")


def test_a_folder_without_checkpoint_or_source_names_what_to_pass(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoint"
    folder.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no complete checkpoint .* pass the checkpoint it started from"):
        resolve_checkpoint(tmp_path / "run")
    (folder / RESUMED_FROM).write_text(f"{tmp_path / 'deleted.pth'}\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="deleted.pth, which its 'resumed_from' names, no longer exists"):
        resolve_checkpoint(folder)


def test_resume_records_name_the_source_file_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ckpt").mkdir()
    source = _touch(tmp_path / "ckpt" / "I3_E1.pth")
    (tmp_path / "ckpt" / "latest").write_text("I3_E1.pth\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert resume_records("ckpt") == {RESUMED_FROM: f"{source}\n"}


# ----------------------------------------------------------------------------------------------- temporary files

def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = _touch(tmp_path / f".I3_E1.pth.tmp{_dead_pid()}")
    latest_of_dead = _touch(tmp_path / f".latest.tmp{_dead_pid()}")
    reused_pid = _touch(tmp_path / f".I6_E2.pth.tmp{os.getppid()}", age_seconds=3600)  # alive pid, older than us
    live = _touch(tmp_path / f".I9_E3.pth.tmp{os.getppid()}")  # alive pid, written now: another process saving
    own = _touch(tmp_path / f".I12_E4.pth.tmp{os.getpid()}", age_seconds=3600)
    others = [_touch(tmp_path / "I3_E1.pth"), _touch(tmp_path / "notes.tmp123"), _touch(tmp_path / "latest")]
    assert remove_stale_temporaries(tmp_path) == sorted([dead, latest_of_dead, reused_pid])
    assert all(p.exists() for p in (live, own, *others))


def test_save_removes_stale_temporaries_with_a_log_line(tmp_path: Path, make_tiny_model: Callable[..., Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    stale = _touch(tmp_path / f".I0_E0.pth.tmp{_dead_pid()}")
    logger = setup_logger()  # the project logger does not propagate: listen to it directly
    logger.addHandler(caplog.handler)
    try:
        make_tiny_model().save(tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["I0_E0.pth", "latest"]
    assert f"removed {stale}" in caplog.text


@pytest.mark.slow
def test_resume_keeps_adams_moments_but_trains_at_the_configs_learning_rate(
        tmp_path: Path, make_tiny_model: Callable[..., Any], make_batches: Callable[[int], Any],
        train_steps: Callable[..., None], caplog: pytest.LogCaptureFixture) -> None:
    first = make_tiny_model(changes={"train.optimizer.lr": 1e-3})
    train_steps(first, make_batches(2))
    saved = first.save(tmp_path)
    resumed = make_tiny_model(changes={"train.optimizer.lr": 2.5e-4})
    logger = setup_logger()
    logger.addHandler(caplog.handler)
    try:
        resumed.load(saved)
    finally:
        logger.removeHandler(caplog.handler)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [2.5e-4]
    moments = [s["exp_avg"] for s in first.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, resumed.optimizer.state_dict()["state"].values()))
    assert "learning rate 0.00025 (train.optimizer at step 2) instead of the 0.001 saved in" in caplog.text
    same = make_tiny_model(changes={"train.optimizer.lr": 1e-3})
    caplog.clear()
    same.load(saved)
    assert [g["lr"] for g in same.optimizer.param_groups] == [1e-3] and "learning rate" not in caplog.text


@pytest.mark.slow
def test_learning_rate_milestones_apply_by_step_and_survive_a_resume(
        tmp_path: Path, make_tiny_model: Callable[..., Any], make_batches: Callable[[int], Any],
        train_steps: Callable[..., None]) -> None:
    changes = {"train.optimizer.lr": 1e-3, "train.optimizer.lr_milestones": [2, 3], "train.optimizer.lr_gamma": 0.5,
               "model.unet.dropout": 0.0}  # no dropout: the global RNG differs between the two models
    straight = make_tiny_model(changes=changes)
    rates = []
    for batch in make_batches(4):
        train_steps(straight, [batch])
        rates.append(straight.optimizer.param_groups[0]["lr"])
    assert rates == [1e-3, 1e-3, 5e-4, 2.5e-4]  # the rates of steps 1..4: x0.5 from step 2 done, again from step 3
    first = make_tiny_model(changes=changes)
    train_steps(first, make_batches(4)[:2])
    resumed = make_tiny_model(changes=changes)
    resumed.load(first.save(tmp_path))
    assert resumed.optimizer.param_groups[0]["lr"] == 5e-4
    train_steps(resumed, make_batches(4)[2:])
    assert all(torch.equal(a, b) for a, b in zip(straight.diffusion.state_dict().values(),
                                                 resumed.diffusion.state_dict().values()))


# ----------------------------------------------------------------------------------------------- kill -9

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, make_run_config: MakeRunConfig) -> Path:
    """The checkpoint folder of an uninterrupted 6-step run (I3_E1.pth, I6_E3.pth)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert sr.main(["-c", str(make_run_config(folder, "full", TRAINING)), "--no-progress"]) == 0
    return _run_folder(folder / "experiments", "full") / "checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first_step", "first_save"])
def test_killed_resumed_run_resumes_from_its_folder_bit_identically(moment: str, uninterrupted: Path, tmp_path: Path,
                                                                    make_run_config: MakeRunConfig) -> None:
    source = uninterrupted / "I3_E1.pth"
    killed_cfg = make_run_config(tmp_path, "killed", TRAINING)
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, moment, "-c", str(killed_cfg), "--checkpoint",
                            str(source), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed = _run_folder(tmp_path / "experiments", "killed")
    left = sorted(p.name for p in (killed / "checkpoint").iterdir())
    if moment == "first_save":
        assert left[0].startswith(".I6_E3.pth.tmp") and left[1:] == [RESUMED_FROM]
    else:
        assert left == [RESUMED_FROM]

    again_cfg = make_run_config(tmp_path, "again", TRAINING)
    assert sr.main(["-c", str(again_cfg), "--checkpoint", str(killed), "--no-progress"]) == 0
    again = _run_folder(tmp_path / "experiments", "again")
    assert sorted(p.name for p in (killed / "checkpoint").iterdir()) == [RESUMED_FROM]  # the stale file is gone
    log = (again / "logs" / "train.log").read_text(encoding="utf-8")
    assert ("removed" in log) == (moment == "first_save")
    assert f"resuming from {source.absolute()}" in log and "from step 3 to 6" in log
    assert (again / "checkpoint" / RESUMED_FROM).read_text(encoding="utf-8").strip() == str(source.absolute())
    expected = torch.load(uninterrupted / "I6_E3.pth", weights_only=True)
    resumed = torch.load(again / "checkpoint" / "I6_E3.pth", weights_only=True)
    for part in ("model", "optimizer", "rng", "step", "epoch", "batch_in_epoch"):
        _assert_identical(resumed[part], expected[part], part)


def _assert_identical(a: Any, b: Any, where: str) -> None:
    """Nested dicts, lists and tensors equal exactly (tensors by torch.equal: same shape, dtype and values)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where
