"""Equivalence with the official TFS-Diff code: golden outputs and strict loading of its checkpoint layout.

Fixtures (copied from the project's compatibility facts): `official_tfsdiff_golden_small.pt` holds a small official
U-Net, its inputs and outputs, and one official reverse step; `official_tfsdiff_128_256_state_dict_shapes.json`
lists the keys and shapes of the released 128->256 checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.config import load_config
from model.diffusion import GaussianDiffusion
from model.model import TFSDiffModel
from model.schedule import NoiseSchedule
from model.unet import UNet
from tests.sr3_reference import p_mean_variance

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "official_tfsdiff_golden_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_net(golden: dict) -> UNet:
    c = golden["unet_config"]
    net = UNet(in_channel=c["in_channel"], out_channel=c["out_channel"], inner_channel=c["inner_channel"],
               norm_groups=c["norm_groups"], channel_mults=c["channel_mults"], attn_res=c["attn_res"],
               res_blocks=c["res_blocks"], dropout=c["dropout"], image_size=c["image_size"],
               tmfa_placement="all_channels")
    net.load_state_dict(golden["unet_state_dict"], strict=True)
    return net.eval()


def test_golden_network_output(golden: dict, official_net: UNet) -> None:
    with torch.no_grad():
        eps = official_net(golden["condition"], golden["x_t"], golden["noise_level"])
    assert (eps - golden["eps_pred"]).abs().max().item() <= 1e-5


def test_golden_reverse_step(golden: dict, official_net: UNet) -> None:
    schedule = NoiseSchedule.from_spec(SimpleNamespace(**golden["schedule"]))
    diffusion = GaussianDiffusion(official_net, schedule, clip_denoised=True)
    step = golden["reverse_step"]
    with torch.no_grad():
        mean, log_var = p_mean_variance(diffusion, golden["x_t"], step["t_index"], golden["condition"])
    assert (mean - step["model_mean"]).abs().max().item() <= 1e-5
    assert abs(log_var.item() - float(step["posterior_log_variance"])) <= 1e-5


def test_paper_placement_differs_from_official(golden: dict, official_net: UNet) -> None:
    """The paper's TMFA placement is a different function (sanity check that the option matters)."""
    c = golden["unet_config"]
    paper = UNet(in_channel=12, out_channel=3, inner_channel=c["inner_channel"], norm_groups=c["norm_groups"],
                 channel_mults=c["channel_mults"], attn_res=c["attn_res"], res_blocks=c["res_blocks"],
                 image_size=c["image_size"], tmfa_placement="condition")
    with pytest.raises(RuntimeError, match="size mismatch"):
        paper.load_state_dict(golden["unet_state_dict"], strict=True)


@pytest.fixture(scope="module")
def official_model() -> TFSDiffModel:
    cfg = load_config(ROOT / "config" / "official_128_256.json")
    return TFSDiffModel(cfg, torch.device("cpu"))


@pytest.mark.slow
def test_official_layout_keys_and_shapes(official_model: TFSDiffModel) -> None:
    expected = json.loads((FIXTURES / "official_tfsdiff_128_256_state_dict_shapes.json").read_text())
    ours = {k: list(v.shape) for k, v in official_model.diffusion.state_dict().items()}
    assert ours == expected
    assert len(expected) == 378
    assert official_model.num_parameters == 97_811_034


@pytest.mark.slow
def test_official_checkpoint_loads_strictly(official_model: TFSDiffModel, tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "official_tfsdiff_128_256_state_dict_shapes.json").read_text())
    buffers = dict(official_model.diffusion.named_buffers())
    generator = torch.Generator().manual_seed(0)
    state = {k: buffers[k].clone() if k in buffers else torch.randn(shape, generator=generator)
             for k, shape in expected.items()}
    torch.save(state, tmp_path / "I10000_E1250_gen.pth")
    official_model.load(tmp_path / "I10000_E1250", weights_only=True)
    loaded = official_model.diffusion.state_dict()
    for key in ("denoise_fn.SE_block.linear1.weight", "denoise_fn.ups.18.res_block.res_conv.weight"):
        torch.testing.assert_close(loaded[key], state[key])
