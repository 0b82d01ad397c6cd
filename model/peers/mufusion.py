"""MUFusion: a general unsupervised image fusion network based on memory units (Cheng, Xu, Wu, Information Fusion 92
(2023) 80-92), re-implemented from the paper and the authors' released code (github AWCXV/MUFusion @223134e6,
MIT licence, copyright (c) 2023 AWCXV) and pinned to golden outputs of that code. Weights: the medical model
`medical/models/harvard.model`.

Network (554,721 parameters): early fusion, the two grey inputs stacked as channels (the functional/other image
first, the MRI second); every convolution is 3x3 with reflection padding 1, bias and ReLU. Encoder: E1 = conv1 (2->32),
E2 = conv2 (32->32), E3 = conv3 ([E1, E2] 64->64, stride 2), E4 = conv4 (64->64), E5 = conv5 ([E3, E4] 128->64),
E6 = conv6 ([E3, E4, E5] 192->64). Decoder: D6 = conv66 (E6), D5 = conv55 ([E5, D6]), D4 = conv44 ([E4, D5]),
D3 = conv33 ([E3, D4]), D2 = conv22 ([E2, bicubic x2 upsampling (align_corners False) of D3] 96->32),
out = conv11 ([E1, D2] 64->1) with tanh instead of ReLU. No fusion rule at test time.

Released behaviour, reproduced by default:

- Float64: the authors' test scripts make float64 the default tensor type, so the whole network runs in float64
  (the float32 weights are cast). `load(..., dtype=torch.float32)` runs in float32 instead (faster, not the
  authors' numbers: differences of order 1e-6 before the 8-bit stages).
- Tiles: the image is cut into 128x128 tiles at stride 124 (4-pixel overlap) along each axis, plus a column of tiles
  flush with the right edge, a row flush with the bottom edge and the bottom-right tile (9 tiles for 256x256); all
  tiles go through the network as one batch and overlapping outputs are averaged. Images must be at least 128 pixels
  high and wide (the authors' code fails below that).
- Between the two steps of the series, step 1 is saved as an 8-bit image by SciPy's `imsave`, which min-max
  stretches the float image: u8 = uint8(clip((x - min) * 255 / (max - min), 0, 255) + 0.5). Step 2 reads that file.
  `load(..., stretch_between_stages=False)` passes the step-1 output to step 2 clipped to [0, 1], in float.

Tri-modal use (dual-modal method in series, as the golden runs did): step 1 (the authors' grey script) fuses the
anatomical image (input 1) with the MR-T2 (input 2), grey by PIL's `convert('L')`,
L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (exactly R for a grey image), divided by 255; step 2 (the authors'
colour script) fuses the functional image's luminance (input 1) with the stretched 8-bit step-1 image (input 2).

Colour (the authors' colour script, `fuse`): the functional RGB image (float64) is split by
Y = 0.299 R + 0.587 G + 0.114 B clipped to [0, 255], Cb = -0.169 R - 0.331 G + 0.5 B, Cr = 0.5 R - 0.419 G - 0.081 B
(no +128 offset); Y / 255 is the network's input 1; the output times 255 is the new Y, and RGB =
[[1, 0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]] (Y, Cb, Cr), clipped to [0, 255] and rounded.

`fuse_raw` returns the step-2 network output after tile averaging, float64 (H, W), tanh range (observed about
[-0.05, 0.97]).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import FUSION_METHODS
from model.peers import PeerWeights, check_sources, weights_file

WEIGHTS = PeerWeights(method="MUFusion", relative_path="medical/models/harvard.model", size_bytes=2227655,
                      sha256="f8537a378d5b980fc190897eb94981fc74ab8afb5d362e7aada86b672455584d")

TILE = 128
TILE_STRIDE = TILE - 4
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]])
YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def pil_grey(rgb: np.ndarray) -> np.ndarray:
    """PIL's `Image.convert('L')` of a uint8 RGB (H, W, 3) array; a 2-D array is taken as already grey."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8, copy=False)
    c = rgb.astype(np.int64)
    return ((19595 * c[..., 0] + 38470 * c[..., 1] + 7471 * c[..., 2] + 32768) >> 16).astype(np.uint8)


def minmax_bytescale(x: np.ndarray) -> np.ndarray:
    """SciPy's (<= 1.2) `bytescale` of a float image, as its `imsave` applies it: min-max stretch to [0, 255],
    clip, + 0.5, truncation to uint8 (a constant image maps to 0)."""
    low, high = float(x.min()), float(x.max())
    scale = 255.0 / ((high - low) or 1.0)
    return (np.clip((x - low) * scale, 0, 255) + 0.5).astype(np.uint8)


def tile_origins(height: int, width: int) -> list[tuple[int, int]]:
    """Top-left corners of the authors' 128x128 tiles, in their order: the stride-124 grid row by row, then the
    column flush with the right edge, the row flush with the bottom edge, and the bottom-right tile."""
    if height < TILE or width < TILE:
        raise ValueError(f"MUFusion tiles images into {TILE}x{TILE} patches; got {height}x{width}")
    rows = range(0, height - TILE + 1, TILE_STRIDE)
    cols = range(0, width - TILE + 1, TILE_STRIDE)
    return ([(i, j) for i in rows for j in cols] + [(i, width - TILE) for i in rows]
            + [(height - TILE, j) for j in cols] + [(height - TILE, width - TILE)])


def _conv(in_channels: int, out_channels: int, stride: int = 1, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    # Sequential indices (pad 0, conv 1, activation 2) give the checkpoint's key names `<name>.1.weight`.
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3, stride=stride),
                         activation())


class MUFusionNet(nn.Module):
    """The MUFusion network (the authors' `TwoFusion_net`); state-dict keys and shapes match
    `medical/models/harvard.model`. Input (B, 2, H, W) with H, W even, output (B, 1, H, W) tanh."""

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, 32)
        self.conv2 = _conv(32, 32)
        self.conv3 = _conv(64, 64, stride=2)
        self.conv4 = _conv(64, 64)
        self.conv5 = _conv(128, 64)
        self.conv6 = _conv(192, 64)
        self.conv66 = _conv(64, 64)
        self.conv55 = _conv(128, 64)
        self.conv44 = _conv(128, 64)
        self.conv33 = _conv(128, 64)
        self.conv22 = _conv(96, 32)
        self.conv11 = _conv(64, 1, activation=nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.conv1(x)
        e2 = self.conv2(e1)
        e3 = self.conv3(torch.cat([e1, e2], 1))
        e4 = self.conv4(e3)
        e5 = self.conv5(torch.cat([e3, e4], 1))
        e6 = self.conv6(torch.cat([e3, e4, e5], 1))
        d5 = self.conv55(torch.cat([e5, self.conv66(e6)], 1))
        d4 = self.conv44(torch.cat([e4, d5], 1))
        d3 = self.conv33(torch.cat([e3, d4], 1))
        up = F.interpolate(d3, scale_factor=2, mode="bicubic", align_corners=False)
        d2 = self.conv22(torch.cat([e2, up], 1))
        return self.conv11(torch.cat([e1, d2], 1))


class MUFusion:
    """MUFusion loaded with the authors' weights; `fuse`, `fuse_raw`, and the in-series steps (`series`)."""

    name = "MUFusion"

    def __init__(self, net: MUFusionNet, device: torch.device, dtype: torch.dtype,
                 stretch_between_stages: bool = True) -> None:
        self.net, self.device, self.dtype = net, device, dtype
        self.stretch_between_stages = stretch_between_stages

    @torch.no_grad()
    def fuse_pair(self, first: np.ndarray, mri: np.ndarray) -> np.ndarray:
        """The authors' tiled dual-modal fusion of two float images (H, W) in [0, 1] (functional/other first, MRI
        second): the tile-averaged tanh output, float64 (H, W)."""
        h, w = mri.shape
        origins = tile_origins(h, w)
        pair = np.stack([first, mri]).astype(np.float64)
        tiles = np.stack([pair[:, i:i + TILE, j:j + TILE] for i, j in origins])
        out = self.net(torch.from_numpy(tiles).to(self.device, self.dtype))[:, 0].double().cpu().numpy()
        total, count = np.zeros((h, w)), np.zeros((h, w))
        for tile, (i, j) in zip(out, origins):
            total[i:i + TILE, j:j + TILE] += tile
            count[i:i + TILE, j:j + TILE] += 1
        return total / count

    def series(self, sources: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The tri-modal run in series, with its intermediates: `step1_anat` (raw, float64) and `step1_anat_u8`
        (the stretched 8-bit image step 2 reads; None without the stretch), `fused` (raw step-2 output, float64),
        `fused_rgb_float` (colour before rounding) and `fused_rgb` (uint8)."""
        anatomical, mri, functional = check_sources(sources)
        step1 = self.fuse_pair(pil_grey(anatomical) / 255.0, pil_grey(mri) / 255.0)
        if self.stretch_between_stages:
            step1_u8 = minmax_bytescale(step1)
            step2_mri = step1_u8 / 255.0
        else:
            step1_u8, step2_mri = None, np.clip(step1, 0.0, 1.0)
        luma, cb, cr = ycbcr_split(functional)
        fused = self.fuse_pair(luma / 255.0, step2_mri)
        rgb_float, rgb = ycbcr_merge(fused * 255.0, cb, cr)
        return dict(step1_anat=step1, step1_anat_u8=step1_u8, fused=fused, fused_rgb_float=rgb_float, fused_rgb=rgb)

    def fuse_functional(self, functional: np.ndarray, mri: np.ndarray) -> np.ndarray:
        """The authors' colour script on a dual-modal pair (functional RGB, MRI RGB or grey): raw float64 output."""
        return self.fuse_pair(ycbcr_split(functional)[0] / 255.0, pil_grey(np.asarray(mri)) / 255.0)

    def fuse_raw(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """Step-2 raw output (tile-averaged tanh), float64 (H, W)."""
        return self.series(sources)["fused"]

    def fuse(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """The fused colour image, uint8 RGB (H, W, 3) (fused output as Y, Cb and Cr of the functional image)."""
        return self.series(sources)["fused_rgb"]


def ycbcr_split(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The authors' colour split of a uint8 RGB image: Y clipped to [0, 255], Cb and Cr without offset (float64)."""
    ycbcr = np.dot(np.asarray(rgb), RGB_TO_YCBCR.T)
    return np.clip(ycbcr[..., 0], 0, 255), ycbcr[..., 1], ycbcr[..., 2]


def ycbcr_merge(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float64 clipped to [0, 255], rounded uint8 RGB) of the authors' inverse transform."""
    rgb = np.clip(np.dot(np.stack([y, cb, cr], axis=-1), YCBCR_TO_RGB.T), 0, 255)
    return rgb, np.round(rgb).astype(np.uint8)



def load_state_dict(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The authors' checkpoint, a plain state dict of float32 tensors (read with `weights_only=True`)."""
    return torch.load(path, map_location=device, weights_only=True)


def load(peer_dir: str | Path | None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
         stretch_between_stages: bool = True) -> MUFusion:
    """MUFusion with the authors' weights from `peer_dir` (checked by size and SHA-256), in eval mode on `device`,
    computing in `dtype` (float64 as the authors do). `stretch_between_stages=False`: step 2 reads the step-1 output
    clipped to [0, 1] instead of its min-max stretched 8-bit image."""
    device = torch.device(device)
    net = MUFusionNet()
    net.load_state_dict(load_state_dict(weights_file(peer_dir, WEIGHTS), device), strict=True)
    return MUFusion(net.to(device, dtype).eval(), device, dtype, stretch_between_stages)


FUSION_METHODS.register("mufusion", needs_weights=True)(load)
