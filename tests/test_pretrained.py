"""The shipped weights (pretrained/): every release against its manifest; the demo weights' config as recorded and
fusion better than the baseline."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.config import load_config, parse_config, resolve_input_paths
from core.hashing import sha256_file
from data.builders.embedded import build_embedded_dataset
from data.fusion_dataset import FusionDataset, create_dataloader
from infer import load_model
from model.evaluation import evaluate_model

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "pretrained" / "tfsdiff_demo_x4_16_64.pth"
MANIFEST = json.loads(WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))
DEMO = load_config(ROOT / "config" / "demo.json")


@pytest.mark.parametrize("weights", sorted((ROOT / "pretrained").glob("*.pth")), ids=lambda p: p.name)
def test_every_release_matches_its_manifest(weights: Path) -> None:
    manifest = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    assert manifest["file"] == weights.name
    assert weights.stat().st_size == manifest["bytes"] <= 25 * 2**20
    assert sha256_file(weights) == manifest["sha256"]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert state["release"] and state["weights"] == manifest["weights"] and state["step"] == manifest["step"]
    assert manifest["parameters"] == sum(v.numel() for k, v in state["model"].items() if k.startswith("denoise_fn."))


def test_recorded_config_is_the_training_config_and_the_demo_network() -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    trained_with = load_config(ROOT / MANIFEST["config"])
    recorded = parse_config(resolve_input_paths(state["config"], ROOT / MANIFEST["config"]))  # paths as if loaded
    # The run was started with n_iter 10000 and stopped at step 8000 (see the model card); n_iter only says where
    # training stops, so the config in the repository says 8000. Its run folder went to experiments/, the name of the
    # runs folder then (now runs/): an output folder, not part of the weights. Everything else must match the record.
    assert recorded.train.n_iter == 10000 and recorded.path.experiments_root == "experiments"
    assert replace(recorded, train=replace(recorded.train, n_iter=trained_with.train.n_iter),
                   path=replace(recorded.path, experiments_root=trained_with.path.experiments_root)) == trained_with
    assert state["step"] == trained_with.train.n_iter
    for section in ("unet", "tmfa", "init", "beta_schedule", "diffusion"):
        assert getattr(DEMO.model, section) == getattr(trained_with.model, section), section
    assert DEMO.datasets.embedded == trained_with.datasets.embedded
    assert DEMO.path.pretrained == str(WEIGHTS)


@pytest.mark.slow
def test_shipped_model_beats_the_baseline_on_embedded_test_cases(tmp_path: Path) -> None:
    emb = DEMO.datasets.embedded
    root = build_embedded_dataset(tmp_path / "emb", emb.r_resolution, emb.scales, emb.seed, limit=4, progress=False)
    split = DEMO.datasets.test
    dataset = FusionDataset(root / "test", split.l_resolution, split.r_resolution)
    loader = create_dataloader(dataset, 4, shuffle=False, flip=False, num_workers=0, seed=DEMO.seed)
    model = load_model(DEMO, str(WEIGHTS))
    result = evaluate_model(model, loader, None, progress=False)
    assert len(result.cases) == 4
    for case in result.cases:
        assert case.psnr_rgb > case.baseline_psnr_rgb, (case.case_id, case.psnr_rgb, case.baseline_psnr_rgb)
