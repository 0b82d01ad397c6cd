"""Test-wide settings and the factories the test modules share (so that no test module imports another).

One intra-op thread makes the tiny test networks several times faster on small CPUs.

Two tiers: a test that trains, builds a dataset, runs a command end to end (sr.py, infer.py on a model,
prepare_data, bench) or runs a full-size network is marked ``slow`` (pytest.ini); ``python -m pytest -m "not slow"
-q`` runs the fast tier, ``python -m pytest -q`` (README, CI) runs both.

The factories are fixtures that return a function (pytest's "factory as fixture"):

- ``make_rgb(seed, shape, grey=False)``: a seeded random uint8 RGB image; ``make_results(folder, case_ids,
  fused_seed, with_target)``: a method's results folder of such images.
- ``make_tiny_config(size, scale, steps, ema, changes)``: the smallest valid config dict, with overrides by dotted key.
- ``make_tiny_unet(**kwargs)``, ``make_tiny_diffusion(n_timestep)``, ``make_tiny_model(**config_kwargs)``: the
  network of that config, a short diffusion process around it, and the whole model, seeded.
- ``make_batches(n)`` and ``train_steps(model, batches)``: random training batches for the tiny model, and
  training on them as ``sr.py`` does (one optimiser step per batch, which counts itself).
- ``make_run_config(folder, name, changes)``: a config file for ``sr.py`` runs on ``embedded_dataset``, a 4-case
  32x32 x4 embedded dataset built once per session.
- ``tiny_x2_config``: ``tmp_path/tiny.json``, a x2 model (8 -> 16 px) of 3 steps with 8 channels and no attention,
  whose splits point at no data (for modes that read their own inputs: folders, volumes).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from core.config import parse_config
from core.results_layout import write_case
from data.builders.embedded import build_embedded_dataset
from model.diffusion import GaussianDiffusion
from model.model import TFSDiffModel
from model.schedule import NoiseSchedule
from model.unet import UNet

torch.set_num_threads(1)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def random_rgb(seed: int, shape: tuple[int, int] = (16, 16), grey: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 image of independent uniform pixels from ``numpy.random.default_rng(seed)``; with ``grey``,
    its first channel repeated (R = G = B)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    return np.repeat(rgb[..., :1], 3, axis=2) if grey else rgb


def write_random_results(folder: Path, case_ids: Sequence[str], fused_seed: int, with_target: bool = True) -> None:
    """A method's results folder (``core.results_layout``) of random 16x16 images: case ``i`` has sources seeded
    ``100 + 10 i + k`` (k = 1, 2, 3), target ``200 + i`` (unless not ``with_target``) and fused image
    ``fused_seed + i``, so ``fused_seed`` 200 is a perfect fusion."""
    for i, case in enumerate(case_ids):
        sources = [random_rgb(100 + 10 * i + k) for k in (1, 2, 3)]
        target = random_rgb(200 + i) if with_target else None
        write_case(folder, case, sources, random_rgb(fused_seed + i), target)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for ``dotted == "a.b.c"``, creating missing levels."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = copy.deepcopy(value)


def tiny_config(size: int = 16, scale: int = 4, steps: int = 20, ema: bool = False,
                changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The smallest valid config dict: ``size`` x ``size`` targets from sources at ``size / scale`` (train batch 2,
    val batch 1), a two-level U-Net (16 channels, attention at ``size / 2``, dropout 0.1), linear schedules of
    ``steps`` steps from 1e-4 to 0.2 for training and validation, and 10 iterations; ``dataroot`` is ``"unused"``.

    ``ema`` adds a weight EMA from step 1 with decay 0.5. ``changes`` maps dotted keys (``"train.n_iter"``) to the
    values that replace or add them, applied last.
    """
    split = {"dataroot": "unused", "l_resolution": size // scale, "r_resolution": size}
    schedule = {"schedule": "linear", "n_timestep": steps, "linear_start": 1e-4, "linear_end": 0.2}
    data: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "datasets": {"train": {**split, "batch_size": 2}, "val": dict(split)},
        "model": {
            "unet": {"inner_channel": 16, "norm_groups": 8, "channel_multiplier": [1, 2], "attn_res": [size // 2],
                     "res_blocks": 1, "dropout": 0.1},
            "beta_schedule": {"train": schedule, "val": dict(schedule)},
            "diffusion": {"image_size": size},
        },
        "train": {"n_iter": 10, "val_freq": 10, "save_checkpoint_freq": 10, "print_freq": 1},
    }
    if ema:
        data["train"]["ema_scheduler"] = {"step_start_ema": 1, "update_ema_every": 1, "ema_decay": 0.5}
    for dotted, value in (changes or {}).items():
        set_dotted(data, dotted, value)
    return data


def tiny_unet(**kwargs: Any) -> UNet:
    """The U-Net of ``tiny_config()`` without dropout (12 -> 3 channels, 16x16); ``kwargs`` override arguments."""
    return UNet(**{"inner_channel": 16, "norm_groups": 8, "channel_mults": (1, 2), "attn_res": (8,),
                   "res_blocks": 1, "image_size": 16, **kwargs})


def tiny_diffusion(n_timestep: int = 20) -> GaussianDiffusion:
    """``tiny_unet()`` initialised from seed 0 in a linear schedule of ``n_timestep`` steps (1e-4 to 0.1), in eval
    mode."""
    torch.manual_seed(0)
    schedule = SimpleNamespace(schedule="linear", n_timestep=n_timestep, linear_start=1e-4, linear_end=0.1)
    return GaussianDiffusion(tiny_unet(), NoiseSchedule.from_spec(schedule)).eval()


def tiny_model(**config_kwargs: Any) -> TFSDiffModel:
    """A model of ``tiny_config(**config_kwargs)`` on the CPU, initialised from the global RNG seeded with 0 (as
    sr.py seeds it)."""
    torch.manual_seed(0)
    return TFSDiffModel(parse_config(tiny_config(**config_kwargs)), torch.device("cpu"))


def tiny_batches(n: int) -> Batches:
    """``n`` training batches for ``tiny_config()``: (target (2, 3, 16, 16), condition (2, 9, 16, 16)), uniform in
    [-1, 1) from one generator seeded with 7."""
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.rand(2, 9, 16, 16, generator=g) * 2 - 1)
            for _ in range(n)]


def train_on(model: TFSDiffModel, batches: Batches) -> None:
    """One training step per batch, as sr.py trains (``train_step`` counts ``model.step`` itself)."""
    for x0, condition in batches:
        model.train_step(x0, condition)


def write_run_config(folder: Path, dataset: Path, name: str, changes: Mapping[str, Any]) -> Path:
    """Write ``folder/<name>.json`` (with a ``//`` comment, as users write them): ``tiny_config`` at 32x32 x4 on
    the train and val splits of ``dataset`` (val: its first 2 cases in one batch), runs under
    ``folder/experiments``; ``changes`` as in ``tiny_config``."""
    data = tiny_config(32, 4, changes={
        "name": name,
        "path.experiments_root": str(folder / "experiments"),
        "datasets.train.dataroot": str(dataset / "train"),
        "datasets.val.dataroot": str(dataset / "val"),
        "datasets.val.batch_size": 2,
        "datasets.val.data_len": 2,
        **changes,
    })
    path = folder / f"{name}.json"
    path.write_text("// test config\n" + json.dumps(data, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def make_rgb() -> Callable[..., np.ndarray]:
    return random_rgb


@pytest.fixture(scope="session")
def make_results() -> Callable[..., None]:
    return write_random_results


@pytest.fixture(scope="session")
def make_tiny_config() -> Callable[..., dict[str, Any]]:
    return tiny_config


@pytest.fixture(scope="session")
def make_tiny_unet() -> Callable[..., UNet]:
    return tiny_unet


@pytest.fixture(scope="session")
def make_tiny_diffusion() -> Callable[..., GaussianDiffusion]:
    return tiny_diffusion


@pytest.fixture(scope="session")
def make_tiny_model() -> Callable[..., TFSDiffModel]:
    return tiny_model


@pytest.fixture(scope="session")
def make_batches() -> Callable[[int], Batches]:
    return tiny_batches


@pytest.fixture(scope="session")
def train_steps() -> Callable[[TFSDiffModel, Batches], None]:
    return train_on


@pytest.fixture(scope="session")
def embedded_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32x32 embedded dataset at scale 4 with at most 4 cases per split (seed 0), shared by the session."""
    root = tmp_path_factory.mktemp("embedded") / "mni32"
    return build_embedded_dataset(root, 32, scales=(4,), seed=0, limit=4, progress=False)


@pytest.fixture(scope="session")
def make_run_config(embedded_dataset: Path) -> Callable[[Path, str, Mapping[str, Any]], Path]:
    """``write_run_config`` on ``embedded_dataset``: ``make_run_config(folder, name, changes)``."""
    return lambda folder, name, changes: write_run_config(folder, embedded_dataset, name, changes)


TINY_X2 = (16, 8)  # tiny_x2_config: (r_resolution, l_resolution)


@pytest.fixture()
def tiny_x2_config(tmp_path: Path) -> Path:
    size, low = TINY_X2
    split = {"dataroot": str(tmp_path / "no_data"), "l_resolution": low, "r_resolution": size, "batch_size": 1}
    cfg = tiny_config(size, size // low, steps=3, changes={
        "path.experiments_root": str(tmp_path / "exp"), "datasets.train": split, "datasets.val": split,
        "model.unet.inner_channel": 8, "model.unet.norm_groups": 4, "model.unet.attn_res": []})
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path
