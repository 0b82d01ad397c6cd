"""PRRGAN (Huang, Li, Tan, Cheng, "Generative adversarial network for trimodal medical image fusion using primitive
relationship reasoning", IEEE JBHI 2024), written from the paper and the authors' released code (github
JasonWong30/PRRGAN, commit 80be162: `Test_v2.py`, `model/net.py`), with the authors' tri-modal generator weights
(`output_dir/checkpoint-650.pth`). Only the generator runs at test time.

Generator: each of the three grey inputs goes separately through one shared encoder of two residual blocks (32
features). A block is a 3x3 convolution + BatchNorm + ReLU, then a two-branch multi-scale unit (1x1 reduction to 16
channels, then one or two 3x3 convolutions, with BatchNorm), concatenated, then a double-attention layer (A2-Net:
features gathered by a softmax over positions, the 32 x 32 global descriptors refined by a graph-reasoning unit,
R = theta^T phi / N with a residual Conv1d + BatchNorm1d, and distributed back by a second softmax over positions);
the first block adds its input back, the second ends in a 1x1 convolution to one channel. With e_i the three
one-channel outputs, the fused image is the per-pixel convex combination sum_i e_i^2 / (e_1^2 + e_2^2 + e_3^2) x_i
of the INPUT images x_i, so the result stays in [0, 1].

Inputs, as the authors' test script reads them (its order is `model(colour_Y, other, T2)`):

- functional (source 3): the Y channel of MATLAB `rgb2ycbcr` (BT.601 studio range, Y = 16 + (65.481 R + 128.553
  G + 24.966 B) / 255, rounded to uint8; so a functional image lies in [16, 235] while the anatomical ones use the
  full range). The authors ship such Y images precomputed; the formula was identified from their bundled data;
- anatomical (source 1) and MR-T2 (source 2): grey as OpenCV reads it (`imread(path, 0)`; R = G = B images exactly,
  colour ones by OpenCV's fixed-point RGB2GRAY);
- each scaled to [0, 1] (uint8 / 255), one image per batch, no normalisation.

Quirk reproduced by default: the authors' script never calls `model.eval()`, so every BatchNorm uses the batch
statistics of the one image it sees (each of the three encoder passes normalises with its own input's statistics)
and the running statistics are ignored. `batchnorm="eval"` uses the running statistics instead (the corrected
variant; the golden `*_evalBN_*` files); it changes the result by about 0.05 of the range on average. Neither mode
changes the stored running statistics. The energy weights are 0/0 = NaN where all three e_i are exactly 0, as in
the authors' code (not seen on real images).

Checked against the authors' code run on this CPU: identical to the bit in both BatchNorm modes at one and at two
threads; the golden files (two threads) are within 2.3e-5 at two threads and 1.3e-4 at one (float32 reduction
order of the convolutions, amplified by the energy weighting).

Outputs:

- `fuse_raw`: the fused grey image, float32 (H, W) in [0, 1]: what the golden `<case>_fused.npy` holds.
- `fuse_grey`: the authors' own 8-bit output (`save_img_single`): min-max stretched to [0, 1] per image, times 255,
  truncated to uint8: the golden `<case>_fused.png`.
- `fuse`: colour recomposition, which the authors' repository does not ship, done as the golden
  `<case>_fused_color.png` was made: the fused image times 255 as the studio-range luminance Y (the same scale as
  the Y input), with the Cb, Cr (uint8, MATLAB `rgb2ycbcr`) of the functional image, back to RGB by MATLAB's
  `ycbcr2rgb` (inverse BT.601 studio matrix), clipped to [0, 255] and rounded: uint8 (H, W, 3) RGB.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import FUSION_METHODS
from model.peers import PeerWeights, as_rgb, weights_file

WEIGHTS = PeerWeights(method="PRRGAN", relative_path="output_dir/checkpoint-650.pth", size_bytes=623971,
                      sha256="81da3843c449c1944658c9fc93cff2fb1ead82215e8971f670df7e8c91e9d15b")

BATCHNORM_MODES = ("train", "eval")

# MATLAB rgb2ycbcr for 0..255 values: ycc = rgb @ (_YCBCR / 255).T + _YCBCR_OFFSET (BT.601, studio range)
_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


class _Norm2d(nn.BatchNorm2d):
    """BatchNorm2d that, with `batch_stats`, normalises by the statistics of its input batch without touching the
    stored running statistics (PyTorch's training-mode arithmetic)."""

    batch_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class _Norm1d(nn.BatchNorm1d):
    """BatchNorm1d counterpart of `_Norm2d`."""

    batch_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


def _conv(cin: int, cout: int, k: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=bias)


def _run_chain(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class _MultiScale(nn.Module):
    """Two branches on the same input, concatenated: 1x1 reduction then one 3x3 conv (`modlist0`), or two
    (`modlist1`), each conv followed by BatchNorm, ReLU between them (keys as in the authors' checkpoint)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.modlist0 = nn.ModuleList([_conv(channels, half, 1), _Norm2d(half), nn.ReLU(),
                                       _conv(half, half, 3), _Norm2d(half)])
        self.modlist1 = nn.ModuleList([_conv(channels, half, 1), _Norm2d(half), nn.ReLU(),
                                       _conv(half, half, 3), _Norm2d(half), nn.ReLU(),
                                       _conv(half, half, 3), _Norm2d(half)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_run_chain(self.modlist0, x), _run_chain(self.modlist1, x)], dim=1)


class _GraphReasoning(nn.Module):
    """Relation reasoning over the D = 32 global descriptors v (B, C, D): R = theta(v)^T phi(v) / D (D x D),
    v* = W(R g(v)) + v with W = Conv1d + BatchNorm1d."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.g = nn.Conv1d(channels, channels, kernel_size=1)
        self.theta = nn.Conv1d(channels, channels, kernel_size=1)
        self.phi = nn.Conv1d(channels, channels, kernel_size=1)
        self.W = nn.Sequential(nn.Conv1d(channels, channels, kernel_size=1), _Norm1d(channels))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        g = self.g(v).permute(0, 2, 1)
        relation = torch.matmul(self.theta(v).permute(0, 2, 1), self.phi(v))
        relation = relation / relation.size(-1)
        reasoned = torch.matmul(relation, g).permute(0, 2, 1).contiguous()
        return self.W(reasoned) + v


class _DoubleAttention(nn.Module):
    """A2-Net double attention with graph reasoning on the gathered descriptors; 1x1 output projection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.Rs_GCN = _GraphReasoning(channels)
        self.convA = nn.Conv2d(channels, channels, kernel_size=1)
        self.convB = nn.Conv2d(channels, channels, kernel_size=1)
        self.convV = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv_reconstruct = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        features = self.convA(x).view(b, c, h * w)
        gather = F.softmax(self.convB(x).view(b, c, h * w), dim=-1)
        spread = F.softmax(self.convV(x).view(b, c, h * w), dim=-1)
        descriptors = self.Rs_GCN(torch.bmm(features, gather.permute(0, 2, 1)))
        return self.conv_reconstruct(descriptors.matmul(spread).view(b, c, h, w))


class _ResidualUnit(nn.Module):
    """conv3x3 + BN + ReLU, multi-scale unit, double attention; then `+ input features` (`last=False`) or a 1x1
    projection to `out_channels` (`last=True`). `conv2` exists in both (the checkpoint holds it) but only the last
    unit uses it."""

    def __init__(self, in_channels: int, out_channels: int, features: int, last: bool) -> None:
        super().__init__()
        self.last = last
        self.conv1 = _conv(in_channels, features, 3)
        self.bn1 = _Norm2d(features)
        self.MSB = _MultiScale(features)
        self.doubleatt = _DoubleAttention(features)
        self.conv2 = _conv(features, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.relu(self.bn1(self.conv1(x)))
        out = self.doubleatt(self.MSB(base))
        return self.conv2(out) if self.last else out + base


class _Encoder(nn.Module):
    def __init__(self, features: int = 32) -> None:
        super().__init__()
        self.layer1 = _ResidualUnit(1, features, features, last=False)
        self.layer2 = _ResidualUnit(features, 1, features, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x))


class PRRGANGenerator(nn.Module):
    """The tri-modal generator; `forward(colour_y, other, t2)` takes three (1, 1, H, W) images in [0, 1] (the
    authors' order) and returns the fused (1, 1, H, W) image. State-dict keys are the authors' (`layer.layer1...`).
    Always keep it in eval mode: `set_batchnorm` chooses batch or running statistics."""

    def __init__(self, batchnorm: str = "train") -> None:
        super().__init__()
        self.layer = _Encoder()
        self.set_batchnorm(batchnorm)

    def set_batchnorm(self, mode: str) -> None:
        if mode not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {mode!r}")
        self.batchnorm = mode
        for module in self.modules():
            if isinstance(module, (_Norm2d, _Norm1d)):
                module.batch_stats = mode == "train"

    def forward(self, colour_y: torch.Tensor, other: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        inputs = (colour_y, other, t2)
        energy = [self.layer(x) ** 2 for x in inputs]  # one pass per image: per-image batch statistics
        total = energy[0] + energy[1] + energy[2]
        return (energy[0] / total) * inputs[0] + (energy[1] / total) * inputs[1] + (energy[2] / total) * inputs[2]



def _matlab_round(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rgb_to_ycbcr_studio(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) Y, Cb, Cr of a uint8 RGB image as MATLAB `rgb2ycbcr` gives them (BT.601 studio range)."""
    ycc = as_rgb(rgb).astype(np.float64) @ (_YCBCR / 255.0).T + _YCBCR_OFFSET
    return np.clip(_matlab_round(ycc), 0, 255).astype(np.uint8)


def ycbcr_studio_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Float (H, W, 3) RGB on the 0..255 scale of float Y, Cb, Cr on 0..255 (MATLAB `ycbcr2rgb`, studio range),
    unclipped."""
    return (np.asarray(ycc, dtype=np.float64) - _YCBCR_OFFSET) @ np.linalg.inv(_YCBCR / 255.0).T


def grey_as_opencv_reads(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of an RGB source as `cv2.imread(path, 0)` gives it: the channel itself when R = G = B,
    otherwise OpenCV's fixed-point RGB2GRAY (9798 R + 19235 G + 3735 B over 2^15, rounded)."""
    rgb = as_rgb(rgb)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    x = rgb.astype(np.int64)
    return ((x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15).astype(np.uint8)


def authors_png(raw: np.ndarray) -> np.ndarray:
    """The authors' 8-bit output of a raw fused image: (x - min) / (max - min) * 255, truncated to uint8."""
    raw = np.asarray(raw, dtype=np.float32)
    stretched = (raw - raw.min()) / (raw.max() - raw.min())
    return (stretched * np.float32(255.0)).astype(np.uint8)


def recompose_colour(raw: np.ndarray, functional: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a raw fused image: raw x 255 as the studio-range Y, the uint8 Cb, Cr of the functional
    RGB image (MATLAB `rgb2ycbcr`), MATLAB `ycbcr2rgb`, clipped to [0, 255] and rounded."""
    chroma = rgb_to_ycbcr_studio(functional).astype(np.float64)
    ycc = np.stack([np.asarray(raw, dtype=np.float64) * 255.0, chroma[..., 1], chroma[..., 2]], axis=-1)
    return np.clip(np.round(ycbcr_studio_to_rgb(ycc)), 0, 255).astype(np.uint8)


class PRRGANFusion:
    """The loaded method: `fuse_raw`, `fuse` and `fuse_grey` over (anatomical, MR-T2, functional) uint8 sources."""

    def __init__(self, network: PRRGANGenerator, device: torch.device) -> None:
        self.network = network.eval()
        self.device = device

    def network_inputs(self, sources: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three uint8 (H, W) network inputs in the authors' order: (functional Y, anatomical, MR-T2)."""
        if len(sources) != 3:
            raise ValueError(f"PRRGAN fuses exactly three sources (anatomical, MR-T2, functional), got {len(sources)}")
        anatomical, t2, functional = (as_rgb(s) for s in sources)
        if not anatomical.shape == t2.shape == functional.shape:
            raise ValueError(f"sources must share one size, got {[s.shape for s in (anatomical, t2, functional)]}")
        return rgb_to_ycbcr_studio(functional)[..., 0], grey_as_opencv_reads(anatomical), grey_as_opencv_reads(t2)

    def _tensor(self, grey: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(np.ascontiguousarray(grey)).to(self.device).float() / 255.0)[None, None]

    def fuse_network_inputs(self, colour_y: np.ndarray, other: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """Fused float32 (H, W) image of three uint8 (H, W) network inputs in the authors' order and format (their
        `Y_color`, `other`, `T2` folders)."""
        with torch.no_grad():
            fused = self.network(self._tensor(colour_y), self._tensor(other), self._tensor(t2))
        return fused[0, 0].cpu().numpy().astype(np.float32)

    def fuse_raw(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """Fused grey image, float32 (H, W) in [0, 1]."""
        return self.fuse_network_inputs(*self.network_inputs(sources))

    def fuse_grey(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W): the authors' saved output (per-image min-max stretch, truncation)."""
        return authors_png(self.fuse_raw(sources))

    def fuse(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) RGB: fused luminance (raw x 255, studio range) with the functional image's chroma."""
        return recompose_colour(self.fuse_raw(sources), sources[2])


def load_network(path: str | Path, device: torch.device | str = "cpu", batchnorm: str = "train") -> PRRGANGenerator:
    """The generator with the weights under `model` of the authors' training checkpoint at `path` (strict keys).

    The checkpoint also holds the optimiser, AMP scaler, epoch and the training `argparse.Namespace`; it is read
    with `weights_only=True`, allowing only `argparse.Namespace` (a plain attribute holder) besides tensors and
    containers, so no other pickled object can run code."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    network = PRRGANGenerator(batchnorm=batchnorm)
    network.load_state_dict(checkpoint["model"], strict=True)
    return network.to(device).eval()


def load(peer_dir: str | Path | None, device: torch.device | str = "cpu", batchnorm: str = "train") -> PRRGANFusion:
    """PRRGAN with the authors' checked weights `output_dir/checkpoint-650.pth` under `peer_dir`; `batchnorm`
    "train" (default, the authors' script: per-image batch statistics) or "eval" (running statistics)."""
    device = torch.device(device)
    return PRRGANFusion(load_network(weights_file(peer_dir, WEIGHTS), device, batchnorm), device)


FUSION_METHODS.register("prrgan", needs_weights=True)(load)
