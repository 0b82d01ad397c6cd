"""Tests of data/loader.py: dataset_from_config for training, evaluation and DDP shards."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DatasetConfig
from core.distributed import DistInfo
from data.epoch_sampler import EpochSampler, ShardedEpochSampler
from data.fusion_dataset import DatasetError
from data.layout import hr_dir, write_case
from data.loader import dataset_from_config

L_RES, R_RES, N_CASES = 4, 16, 5


MakeRGB = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, make_rgb: MakeRGB) -> Path:
    root = tmp_path_factory.mktemp("loader") / "train"
    for i in range(N_CASES):
        images = [Image.fromarray(make_rgb(10 * i + k, (R_RES, R_RES))) for k in range(4)]
        write_case(root, f"case{i}", images[:3], images[3], [L_RES])
    return root


def _config(root: Path, **kwargs: object) -> DatasetConfig:
    return DatasetConfig(dataroot=str(root), l_resolution=L_RES, r_resolution=R_RES, **kwargs)


def test_training_order_is_the_seeded_shuffled_and_flipped_epoch(split: Path) -> None:
    dataset, sampler, loader = dataset_from_config(_config(split, batch_size=2), seed=3, train=True)
    assert type(sampler) is EpochSampler and (sampler.shuffle, sampler.flip) == (True, True)
    assert loader.batch_size == 2 and loader.sampler is sampler and len(dataset) == N_CASES
    sampler.set_epoch(1, start=2)
    expected = EpochSampler(N_CASES, 3, shuffle=True, flip=True).epoch_order(1)[2:]
    batches = list(loader)
    assert [cid for b in batches for cid in b.case_ids] == [dataset.case_ids[i] for i, _ in expected]
    index, flip = expected[0]
    item = dataset[(index, flip)]
    assert torch.equal(batches[0].src1[0], item["src1"]) and torch.equal(batches[0].target[0], item["target"])
    unshuffled = dataset_from_config(_config(split, use_shuffle=False), seed=3, train=True)[1]
    assert (unshuffled.shuffle, unshuffled.flip) == (False, True)


def test_evaluation_order_is_every_case_in_order_unflipped(split: Path) -> None:
    dataset, sampler, loader = dataset_from_config(_config(split, batch_size=4, data_len=3), seed=0, train=False,
                                                   dist=DistInfo(rank=1, world_size=2))
    assert type(sampler) is EpochSampler and list(sampler) == [(i, False) for i in range(3)]
    assert [b.case_ids for b in loader] == [("case0", "case1", "case2")]


def test_ddp_training_loads_this_process_shard(split: Path) -> None:
    cfg = _config(split, batch_size=4)
    _, sampler, loader = dataset_from_config(cfg, seed=1, train=True, dist=DistInfo(rank=1, world_size=2))
    assert type(sampler) is ShardedEpochSampler and loader.batch_size == 2
    expected = ShardedEpochSampler(N_CASES, 1, True, True, global_batch=4, rank=1, world_size=2)
    assert list(sampler) == list(expected)
    with pytest.raises(ValueError, match="batch_size 4 is not divisible by the 3 processes"):
        dataset_from_config(cfg, seed=1, train=True, dist=DistInfo(rank=0, world_size=3))


def test_target_is_optional_only_when_asked(split: Path, tmp_path: Path, make_rgb: MakeRGB) -> None:
    bare = tmp_path / "bare"
    for k in (1, 2, 3):
        folder = bare / f"{k}_sr_{L_RES}_{R_RES}"
        folder.mkdir(parents=True)
        Image.fromarray(make_rgb(k, (R_RES, R_RES))).save(folder / "only.png")
    with pytest.raises(DatasetError, match=str(hr_dir(bare, R_RES))):
        dataset_from_config(_config(bare), seed=0, train=False)
    _, _, loader = dataset_from_config(replace(_config(bare), batch_size=3), seed=0, train=False,
                                       require_target=False)
    batch = next(iter(loader))
    assert batch.target is None and batch.case_ids == ("only",)
