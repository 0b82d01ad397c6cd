"""DistributedDataParallel through torchrun on CPU (gloo): equivalence with one process, resume, rank-0-only files."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sr
from data.embedded import build_embedded_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "name": "ddp",
    "seed": 11,
    "datasets": {
        "train": {"l_resolution": 8, "r_resolution": 32, "batch_size": 4},
        "val": {"l_resolution": 8, "r_resolution": 32, "batch_size": 2, "data_len": 2},
    },
    "model": {
        "unet": {"inner_channel": 16, "norm_groups": 8, "channel_multiplier": [1, 2], "attn_res": [16],
                 "res_blocks": 1, "dropout": 0.0},
        "beta_schedule": {
            "train": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-4, "linear_end": 0.2},
            "val": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-4, "linear_end": 0.2},
        },
        "diffusion": {"image_size": 32},
    },
    "train": {"n_iter": 4, "val_freq": 4, "save_checkpoint_freq": 2, "print_freq": 1},
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedded") / "mni32"
    return build_embedded_dataset(root, 32, scales=(4,), seed=0, limit=4, progress=False)


def write_config(folder: Path, dataset: Path, name: str, resume: str | None = None) -> Path:
    cfg = copy.deepcopy(CONFIG)
    cfg["name"] = name
    cfg["path"] = {"experiments_root": str(folder / "experiments"), "resume_state": resume}
    cfg["datasets"]["train"]["dataroot"] = str(dataset / "train")
    cfg["datasets"]["val"]["dataroot"] = str(dataset / "val")
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


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


def test_two_processes_match_one_and_resume(tmp_path: Path, dataset: Path) -> None:
    assert sr.main(["-c", str(write_config(tmp_path, dataset, "single")), "--no-progress"]) == 0
    (single,) = runs(tmp_path, "single")

    result = torchrun(write_config(tmp_path, dataset, "ddp"))
    assert result.returncode == 0, result.stderr[-3000:]
    (ddp,) = runs(tmp_path, "ddp")  # only rank 0 made a run folder
    assert sorted(p.name for p in (ddp / "checkpoint").iterdir()) == ["I2_E2.pth", "I4_E4.pth", "latest"]
    assert "world size 2" in (ddp / "logs" / "train.log").read_text()
    assert len(list((ddp / "results" / "step_4").glob("*_fused.png"))) == 2
    a, b = weights(single / "checkpoint" / "I4_E4.pth"), weights(ddp / "checkpoint" / "I4_E4.pth")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

    resumed = torchrun(write_config(tmp_path, dataset, "ddp_resumed", str(ddp / "checkpoint" / "I2_E2.pth")))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,) = runs(tmp_path, "ddp_resumed")
    c = weights(again / "checkpoint" / "I4_E4.pth")
    for key in a:
        torch.testing.assert_close(c[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_batch_not_divisible_is_a_clear_error(tmp_path: Path, dataset: Path) -> None:
    cfg = json.loads(write_config(tmp_path, dataset, "odd").read_text())
    cfg["datasets"]["train"]["batch_size"] = 3
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(cfg))
    result = torchrun(path)
    assert result.returncode != 0
    assert "batch_size 3 is not divisible by the 2 processes" in result.stderr
