"""TMFA semantics, U-Net shapes and options, initialisation."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from model.tmfa import TMFABlock
from model.unet import UNet, init_weights


MakeUNet = Callable[..., UNet]


def test_tmfa_is_squeeze_excitation() -> None:
    torch.manual_seed(0)
    block = TMFABlock(9, reduction=4)
    x = torch.randn(2, 9, 5, 7)
    pooled = x.mean(dim=(2, 3))
    hidden = torch.relu(pooled @ block.linear1.weight.T + block.linear1.bias)
    weights = torch.sigmoid(hidden @ block.linear2.weight.T + block.linear2.bias)
    torch.testing.assert_close(block(x), x * weights[:, :, None, None])
    assert block.linear1.weight.shape == (2, 9) and block.linear2.weight.shape == (9, 2)
    assert ((block.attention(x) > 0) & (block.attention(x) < 1)).all()


def test_tmfa_reweights_channels_only() -> None:
    block = TMFABlock(12, reduction=4)
    x = torch.randn(1, 12, 4, 4)
    ratio = block(x) / x
    # one weight per channel: constant over space
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    with pytest.raises(ValueError, match="expects 12 channels"):
        block(torch.randn(1, 9, 4, 4))


@pytest.mark.parametrize("placement", ["condition", "all_channels", "off"])
def test_unet_shapes_and_placement(placement: str, make_tiny_unet: MakeUNet) -> None:
    net = make_tiny_unet(tmfa_placement=placement)
    out = net(torch.randn(2, 9, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2))
    assert out.shape == (2, 3, 16, 16)
    se = getattr(net, "SE_block", None)
    expected = {"condition": 9, "all_channels": 12, "off": None}[placement]
    assert (se.channels if se is not None else None) == expected


def test_paper_placement_leaves_noisy_image_unweighted(make_tiny_unet: MakeUNet) -> None:
    """With the paper placement, the SE weights depend on the condition only, not on x_t."""
    torch.manual_seed(0)
    net = make_tiny_unet(tmfa_placement="condition")
    seen = []
    net.SE_block.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    net(torch.randn(1, 9, 16, 16), torch.randn(1, 3, 16, 16), torch.rand(1))
    assert seen == [9]


def test_noise_level_shapes_agree(make_tiny_unet: MakeUNet) -> None:
    torch.manual_seed(0)
    net = make_tiny_unet().eval()
    c, x, g = torch.randn(2, 9, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2)
    torch.testing.assert_close(net(c, x, g), net(c, x, g.view(2, 1)))


def test_noise_level_matters(make_tiny_unet: MakeUNet) -> None:
    torch.manual_seed(0)
    net = make_tiny_unet().eval()
    c, x = torch.randn(1, 9, 16, 16), torch.randn(1, 3, 16, 16)
    assert not torch.allclose(net(c, x, torch.tensor([0.1])), net(c, x, torch.tensor([0.9])))


def test_affine_level_doubles_noise_projection(make_tiny_unet: MakeUNet) -> None:
    net = make_tiny_unet(use_affine_level=True)
    assert net.downs[1].res_block.noise_func.noise_func[0].weight.shape == (32, 16)
    assert net(torch.randn(1, 9, 16, 16), torch.randn(1, 3, 16, 16), torch.rand(1)).shape == (1, 3, 16, 16)


def test_wrong_condition_channels_error(make_tiny_unet: MakeUNet) -> None:
    with pytest.raises(ValueError, match="9 channels"):
        make_tiny_unet()(torch.randn(1, 6, 16, 16), torch.randn(1, 3, 16, 16), torch.rand(1))


def test_dropout_in_second_block_only(make_tiny_unet: MakeUNet) -> None:
    net = make_tiny_unet(dropout=0.2)
    block = net.downs[1].res_block
    assert isinstance(block.block1.block[2], nn.Identity)
    assert isinstance(block.block2.block[2], nn.Dropout) and block.block2.block[2].p == 0.2


@pytest.mark.parametrize("kind", ["kaiming", "orthogonal"])
def test_init_weights(kind: str, make_tiny_unet: MakeUNet) -> None:
    torch.manual_seed(0)
    net = make_tiny_unet()
    init_weights(net, kind)
    conv = net.downs[1].res_block.block2.block[3]
    assert torch.count_nonzero(conv.bias) == 0
    w = conv.weight.flatten(1)
    if kind == "kaiming":
        fan_in = w.shape[1]
        assert abs(w.std().item() - (2.0 / fan_in) ** 0.5) < 0.02
    else:
        torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown initialisation"):
        init_weights(net, "xavier")  # type: ignore[arg-type]
