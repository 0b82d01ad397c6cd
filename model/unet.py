"""The noise-prediction network of TFS-Diff: the SR3 U-Net with the TMFA block in front.

SR3 (Saharia et al., 2022): BigGAN-style residual blocks (GroupNorm, Swish, dropout), the continuous noise level
sqrt(alpha_bar) encoded sinusoidally and passed through an MLP, injected into every residual block by a
feature-wise (additive or affine) layer, self-attention at the resolutions in `attn_res`, skip concatenation, and a
convolutional head. Module and parameter names follow the official TFS-Diff/SR3 code so that its checkpoints load.

TMFA placement (`tmfa_placement`):
- "condition" (paper, default): TMFA over the 9 condition channels, then concatenated with the noisy image;
- "all_channels" (official code): TMFA over all 12 channels of cat([condition, noisy image]);
- "off": no TMFA (the paper's "w/o TMFA" ablation).
The attribute is called `SE_block` as in the official code, so official checkpoints load strictly.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.tmfa import TMFABlock

TMFAPlacement = Literal["condition", "all_channels", "off"]
InitKind = Literal["kaiming", "orthogonal"]


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding of the continuous noise level (B,) -> (B, dim), as in WaveGrad/SR3."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        count = self.dim // 2
        step = torch.arange(count, dtype=noise_level.dtype, device=noise_level.device) / count
        encoding = noise_level.unsqueeze(1) * torch.exp(-math.log(1e4) * step.unsqueeze(0))
        return torch.cat([torch.sin(encoding), torch.cos(encoding)], dim=-1)


class FeatureWiseAffine(nn.Module):
    """Injects the noise embedding: x + f(e) (additive, SR3 default) or (1 + gamma) * x + beta (affine)."""

    def __init__(self, in_channels: int, out_channels: int, use_affine_level: bool = False) -> None:
        super().__init__()
        self.use_affine_level = use_affine_level
        self.noise_func = nn.Sequential(nn.Linear(in_channels, out_channels * (1 + int(use_affine_level))))

    def forward(self, x: torch.Tensor, noise_embed: torch.Tensor) -> torch.Tensor:
        params = self.noise_func(noise_embed).view(x.shape[0], -1, 1, 1)
        if self.use_affine_level:
            gamma, beta = params.chunk(2, dim=1)
            return (1 + gamma) * x + beta
        return x + params


class Swish(nn.Module):
    """x * sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Block(nn.Module):
    """GroupNorm -> Swish -> Dropout (Identity when 0) -> 3x3 convolution."""

    def __init__(self, dim: int, dim_out: int, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            Swish(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    """BigGAN-style residual block with noise-level injection between its two convolutions."""

    def __init__(self, dim: int, dim_out: int, noise_level_emb_dim: int, dropout: float = 0.0,
                 use_affine_level: bool = False, norm_groups: int = 32) -> None:
        super().__init__()
        self.noise_func = FeatureWiseAffine(noise_level_emb_dim, dim_out, use_affine_level)
        self.block1 = Block(dim, dim_out, groups=norm_groups)
        self.block2 = Block(dim_out, dim_out, groups=norm_groups, dropout=dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h = self.noise_func(h, time_emb)
        h = self.block2(h)
        return h + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection (SR3).

    Computed with `scaled_dot_product_attention`; the scale is 1/sqrt(channels) as in the official einsum code.
    """

    def __init__(self, in_channel: int, n_head: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm = nn.GroupNorm(norm_groups, in_channel)
        self.qkv = nn.Conv2d(in_channel, in_channel * 3, 1, bias=False)
        self.out = nn.Conv2d(in_channel, in_channel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.shape
        head_dim = channel // self.n_head
        qkv = self.qkv(self.norm(x)).view(batch, self.n_head, head_dim * 3, height * width)
        query, key, value = (t.transpose(-1, -2) for t in qkv.chunk(3, dim=2))  # (B, n, HW, d)
        out = F.scaled_dot_product_attention(query, key, value, scale=1.0 / math.sqrt(channel))
        out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        return self.out(out) + x


class ResnetBlocWithAttn(nn.Module):
    """A residual block, optionally followed by self-attention (name as in SR3)."""

    def __init__(self, dim: int, dim_out: int, *, noise_level_emb_dim: int, norm_groups: int = 32,
                 dropout: float = 0.0, with_attn: bool = False, use_affine_level: bool = False) -> None:
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResnetBlock(dim, dim_out, noise_level_emb_dim, dropout=dropout,
                                     use_affine_level=use_affine_level, norm_groups=norm_groups)
        if with_attn:
            self.attn = SelfAttention(dim_out, norm_groups=norm_groups)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, time_emb)
        return self.attn(x) if self.with_attn else x


class UNet(nn.Module):
    """eps_theta(condition, x_t, gamma): predicts the noise in x_t given the tri-modal condition.

    Inputs: `condition` (B, 9, H, W) = cat(src1, src2, src3) in [-1, 1]; `x_t` (B, 3, H, W); `noise_level` (B,) or
    (B, 1), the continuous sqrt(alpha_bar). Output: predicted noise (B, out_channel, H, W).
    """

    def __init__(self, in_channel: int = 12, out_channel: int = 3, inner_channel: int = 64, norm_groups: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 4, 8, 8), attn_res: Sequence[int] = (16,), res_blocks: int = 2,
                 dropout: float = 0.0, image_size: int = 256, use_affine_level: bool = False,
                 tmfa_placement: TMFAPlacement = "condition", tmfa_reduction: int = 4) -> None:
        super().__init__()
        self.condition_channels = in_channel - out_channel
        self.tmfa_placement = tmfa_placement
        self.noise_level_mlp = nn.Sequential(
            PositionalEncoding(inner_channel),
            nn.Linear(inner_channel, inner_channel * 4),
            Swish(),
            nn.Linear(inner_channel * 4, inner_channel),
        )
        block = dict(noise_level_emb_dim=inner_channel, norm_groups=norm_groups, dropout=dropout,
                     use_affine_level=use_affine_level)
        feat_channels, pre_channel, now_res = [inner_channel], inner_channel, image_size
        downs: list[nn.Module] = [nn.Conv2d(in_channel, inner_channel, kernel_size=3, padding=1)]
        for ind, mult in enumerate(channel_mults):
            channel_mult = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(ResnetBlocWithAttn(pre_channel, channel_mult, with_attn=now_res in attn_res, **block))
                feat_channels.append(channel_mult)
                pre_channel = channel_mult
            if ind != len(channel_mults) - 1:
                downs.append(Downsample(pre_channel))
                feat_channels.append(pre_channel)
                now_res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([
            ResnetBlocWithAttn(pre_channel, pre_channel, with_attn=True, **block),
            ResnetBlocWithAttn(pre_channel, pre_channel, with_attn=False, **block),
        ])
        ups: list[nn.Module] = []
        for ind in reversed(range(len(channel_mults))):
            channel_mult = inner_channel * channel_mults[ind]
            for _ in range(res_blocks + 1):
                ups.append(ResnetBlocWithAttn(pre_channel + feat_channels.pop(), channel_mult,
                                              with_attn=now_res in attn_res, **block))
                pre_channel = channel_mult
            if ind != 0:
                ups.append(Upsample(pre_channel))
                now_res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(pre_channel, out_channel, groups=norm_groups)
        if tmfa_placement == "condition":
            self.SE_block = TMFABlock(self.condition_channels, tmfa_reduction)
        elif tmfa_placement == "all_channels":
            self.SE_block = TMFABlock(in_channel, tmfa_reduction)
        elif tmfa_placement != "off":
            raise ValueError(f"unknown TMFA placement {tmfa_placement!r}")

    def forward(self, condition: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        if condition.shape[1] != self.condition_channels:
            raise ValueError(f"condition must have {self.condition_channels} channels, got {condition.shape[1]}")
        if self.tmfa_placement == "condition":
            condition = self.SE_block(condition)
        x = torch.cat([condition, x_t], dim=1)
        if self.tmfa_placement == "all_channels":
            x = self.SE_block(x)
        t = self.noise_level_mlp(noise_level.reshape(-1))
        feats = []
        for layer in self.downs:
            x = layer(x, t) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, t)
        for layer in self.ups:
            if isinstance(layer, ResnetBlocWithAttn):
                x = layer(torch.cat((x, feats.pop()), dim=1), t)
            else:
                x = layer(x)
        return self.final_conv(x)


def init_weights(module: nn.Module, kind: InitKind) -> None:
    """Initialise every Conv2d/Linear: Kaiming-normal fan-in (paper) or orthogonal (official SR3 code); zero biases.

    Normalisation layers keep PyTorch's default (weight 1, bias 0), as in SR3.
    """
    init = {"kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
            "orthogonal": lambda w: nn.init.orthogonal_(w, gain=1)}
    if kind not in init:
        raise ValueError(f"unknown initialisation {kind!r}; expected one of {sorted(init)}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init[kind](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
