"""DistributedDataParallel through torchrun on CPU (gloo): equivalence with one process, resume, rank-0-only files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import sr

ROOT = Path(__file__).resolve().parents[1]
DDP = {"seed": 11, "datasets.train.batch_size": 4, "model.unet.dropout": 0.0, "train.n_iter": 4, "train.val_freq": 4,
       "train.save_checkpoint_freq": 2}
pytestmark = pytest.mark.slow
MakeRunConfig = Callable[[Path, str, Mapping[str, Any]], Path]


def torchrun(config: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "sr.py"), "-p", "train", "-c", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        out, err = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def runs(folder: Path, name: str) -> list[Path]:
    return sorted((folder / "experiments").glob(f"{name}_train_*"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_two_processes_match_one_and_resume(tmp_path: Path, make_run_config: MakeRunConfig) -> None:
    assert sr.main(["-c", str(make_run_config(tmp_path, "single", DDP)), "--no-progress"]) == 0
    (single,) = runs(tmp_path, "single")

    result = torchrun(make_run_config(tmp_path, "ddp", DDP))
    assert result.returncode == 0, result.stderr[-3000:]
    (ddp,) = runs(tmp_path, "ddp")  # only rank 0 made a run folder
    assert sorted(p.name for p in (ddp / "checkpoint").iterdir()) == ["I2_E2.pth", "I4_E4.pth", "latest"]
    assert "world size 2" in (ddp / "logs" / "train.log").read_text()
    assert len(list((ddp / "results" / "step_4").glob("*_fused.png"))) == 2
    a, b = weights(single / "checkpoint" / "I4_E4.pth"), weights(ddp / "checkpoint" / "I4_E4.pth")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

    resume = {"path.resume_state": str(ddp / "checkpoint" / "I2_E2.pth")}
    resumed = torchrun(make_run_config(tmp_path, "ddp_resumed", {**DDP, **resume}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,) = runs(tmp_path, "ddp_resumed")
    c = weights(again / "checkpoint" / "I4_E4.pth")
    for key in a:
        torch.testing.assert_close(c[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_batch_not_divisible_is_a_clear_error(tmp_path: Path, make_run_config: MakeRunConfig) -> None:
    result = torchrun(make_run_config(tmp_path, "odd", {**DDP, "datasets.train.batch_size": 3}))
    assert result.returncode != 0
    assert "batch_size 3 is not divisible by the 2 processes" in result.stderr
