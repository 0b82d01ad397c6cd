"""TMFA block: the Tri-Modal Fusion Attention of TFS-Diff (paper Sec. 2.2).

A squeeze-and-excitation block (Hu et al., 2018) over the channels of the concatenated, bicubic-upsampled
source images: global average pooling, FC (C -> C/r), ReLU, FC (C/r -> C), Sigmoid, channel reweighting.

Parameter names (`linear1`, `linear2`) are those of the official code's `SE_block`, so its checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn


class TMFABlock(nn.Module):
    """Channel attention over a (B, C, H, W) tensor; returns the reweighted tensor of the same shape."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"TMFABlock needs channels >= 1 and reduction >= 1, got {channels}, {reduction}")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.linear1 = nn.Linear(channels, hidden)
        self.linear2 = nn.Linear(hidden, channels)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in (0, 1), shape (B, C, 1, 1)."""
        squeezed = x.mean(dim=(2, 3))
        weights = torch.sigmoid(self.linear2(torch.relu(self.linear1(squeezed))))
        return weights[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"TMFABlock expects {self.channels} channels, got {x.shape[1]}")
        return x * self.attention(x)
