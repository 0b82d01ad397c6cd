"""Tests of metrics/lpips.py: no download ever, the cached AlexNet file is verified by SHA-256 and loaded into LPIPS."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from core.hashing import sha256_file
from metrics import lpips as lp


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache in which any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def _random_alexnet_file(path: Path) -> torch.nn.Module:
    import torchvision

    alexnet = torchvision.models.alexnet(weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}, path)
    return alexnet


def test_the_official_digest_matches_the_file_name() -> None:
    assert lp.ALEXNET_FILE == f"alexnet-owt-{lp.ALEXNET_SHA256[:8]}.pth"
    assert len(lp.ALEXNET_SHA256) == 64 and set(lp.ALEXNET_SHA256) <= set("0123456789abcdef")


def test_lpips_is_unavailable_without_weights_and_says_where_they_go(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / lp.ALEXNET_FILE
    assert lp.alexnet_weights_path() == expected
    assert lp.load_lpips() is None
    note = lp.missing_weights_note()
    assert str(expected) in note and lp.ALEXNET_SHA256 in note and "n/a" in note


def test_a_cached_file_with_another_digest_is_refused(torch_home: Path) -> None:
    path = lp.alexnet_weights_path()
    _random_alexnet_file(path)
    with pytest.raises(ValueError, match=f"{path.name} has SHA-256 .*expected {lp.ALEXNET_SHA256}"):
        lp.load_lpips()


def test_lpips_loads_a_verified_alexnet_file(torch_home: Path, make_rgb: Callable[..., np.ndarray]) -> None:
    path = lp.alexnet_weights_path()
    alexnet = _random_alexnet_file(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == digest
    scorer = lp.load_lpips(expected_sha256=digest)
    assert scorer is not None
    torch.testing.assert_close(scorer.model.net.slice1[0].weight, alexnet.features[0].weight)
    a, b = make_rgb(20, (64, 64)), make_rgb(21, (64, 64))
    assert scorer(a, a) == pytest.approx(0.0, abs=1e-6)
    assert scorer(a, b) > 0.0
    assert scorer(a, b) == scorer(b, a)
    with pytest.raises(ValueError, match="differ in shape"):
        scorer(a, b[:32])


def test_unreadable_or_foreign_checkpoints_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / lp.ALEXNET_FILE
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the AlexNet weights .*alexnet-owt"):
        lp.Lpips(garbage)
    foreign = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="other.pth is not torchvision's AlexNet checkpoint"):
        lp.Lpips(foreign)
