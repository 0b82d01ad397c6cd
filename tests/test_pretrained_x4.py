"""The shipped x4 real-scan weights (pretrained/tfsdiff_x4_64_256.pth): training config as recorded; the README's
first command's config samples with them; fusion better than the baseline on embedded cases at 256x256. Size and
checksum of every release: tests/test_pretrained.py; the real-scan check: tests/test_real_scans.py."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.config import load_config, parse_config, resolve_input_paths
from data.builders.embedded import build_embedded_dataset
from data.fusion_dataset import FusionDataset, create_dataloader
from infer import load_model
from model.evaluation import evaluate_model

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "pretrained" / "tfsdiff_x4_64_256.pth"
MANIFEST = json.loads(WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))
RECIPE = load_config(ROOT / MANIFEST["config"])
DEMO = load_config(ROOT / "config" / "demo_x4_64_256.json")


def test_recorded_config_is_the_recipe_and_the_demo_samples_with_its_network() -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert MANIFEST["config"].startswith("config/harvard_x4_residual")
    recorded = parse_config(resolve_input_paths(state["config"], ROOT / MANIFEST["config"]))  # paths as if loaded
    # everything but the sampler (chosen on validation after training) and the paths is the committed recipe
    assert replace(recorded, model=replace(recorded.model, sampler=RECIPE.model.sampler), path=RECIPE.path) == RECIPE
    assert RECIPE.path.pretrained == DEMO.path.pretrained == str(WEIGHTS)
    assert DEMO.model == RECIPE.model


@pytest.mark.slow
def test_shipped_model_beats_the_baseline_on_embedded_cases_at_256(tmp_path: Path) -> None:
    emb = DEMO.datasets.embedded
    root = build_embedded_dataset(tmp_path / "emb", emb.r_resolution, emb.scales, emb.seed, limit=2, progress=False)
    split = DEMO.datasets.test
    dataset = FusionDataset(root / "test", split.l_resolution, split.r_resolution)
    loader = create_dataloader(dataset, 2, shuffle=False, flip=False, num_workers=0, seed=DEMO.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # conftest sets one thread for the tiny networks; this one fuses 256x256 images
    try:
        result = evaluate_model(load_model(DEMO, str(WEIGHTS)), loader, None, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(result.cases) == 2
    for case in result.cases:
        assert case.psnr_grey > case.baseline_psnr_grey, (case.case_id, case.psnr_grey, case.baseline_psnr_grey)
        assert case.ssim_grey > case.baseline_ssim_grey, (case.case_id, case.ssim_grey, case.baseline_ssim_grey)
