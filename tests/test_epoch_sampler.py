"""Tests of data/epoch_sampler.py: the deterministic, resumable epoch order (and its DDP shards)."""

from __future__ import annotations

import pytest
import torch

from data.epoch_sampler import EpochSampler, ShardedEpochSampler


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=3, shuffle=True, flip=True), EpochSampler(50, seed=3, shuffle=True, flip=True)
    a.set_epoch(4)
    b.set_epoch(4)
    order = list(a)
    assert order == list(b) and order == list(a)
    assert sorted(i for i, _ in order) == list(range(50))
    assert {f for _, f in order} == {True, False}
    b.set_epoch(5)
    assert list(b) != order
    other_seed = EpochSampler(50, seed=4, shuffle=True, flip=True)
    other_seed.set_epoch(4)
    assert list(other_seed) != order


def test_sampler_resume_yields_tail() -> None:
    sampler = EpochSampler(20, seed=0, shuffle=True, flip=True)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=7)
    assert len(sampler) == 13
    assert list(sampler) == full[7:]
    sampler.set_epoch(2, start=20)
    assert list(sampler) == [] and len(sampler) == 0
    with pytest.raises(ValueError):
        sampler.set_epoch(2, start=21)


def test_sampler_no_shuffle_no_flip_is_identity() -> None:
    sampler = EpochSampler(6, seed=9, shuffle=False, flip=False)
    sampler.set_epoch(3)
    assert list(sampler) == [(i, False) for i in range(6)]
    flipping = EpochSampler(64, seed=9, shuffle=False, flip=True)
    assert [i for i, _ in flipping] == list(range(64))


def test_sampler_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    list(EpochSampler(30, seed=1, shuffle=True, flip=True))
    assert torch.equal(torch.get_rng_state(), state)


def test_shards_cover_each_global_batch_in_rank_order() -> None:
    full = EpochSampler(10, seed=2, shuffle=True, flip=True)
    full.set_epoch(3)
    order = list(full)
    padded = (order + order)[:12]  # 10 items padded by wrap-around to 3 global batches of 4
    shards = []
    for rank in range(2):
        shard = ShardedEpochSampler(10, seed=2, shuffle=True, flip=True, global_batch=4, rank=rank, world_size=2)
        shard.set_epoch(3)
        shards.append(list(shard))
        assert len(shard) == 6
    merged = [item for b in range(3) for rank in range(2) for item in shards[rank][2 * b:2 * b + 2]]
    assert merged == padded
    resumed = ShardedEpochSampler(10, seed=2, shuffle=True, flip=True, global_batch=4, rank=1, world_size=2)
    resumed.set_epoch(3, start=4)
    assert list(resumed) == shards[1][2:] and len(resumed) == 4
    with pytest.raises(ValueError, match="split evenly"):
        ShardedEpochSampler(10, seed=2, shuffle=True, flip=True, global_batch=4, rank=0, world_size=3)
