"""Tiled sampling: any image size in bounded memory.

The network's activations grow with the pixels (infer.py's `needed_bytes`); the sampler's own tensors (x, the
noise, the condition, the residual base and clip bounds) are a few floats per pixel. `TiledNet` wraps the network
(the `NoiseNet` signature of `model.samplers`) so that each call runs it on overlapping tiles of the whole image and
blends the tiles' eps predictions with smooth weights into one whole-image eps. `sample_loop` and the sampler's step
are unchanged: x, the seeded noise (drawn for the whole image, in the same order as without tiles), the residual base
and the per-pixel clip bounds stay whole-image tensors, and only the network sees tiles. Blending eps at every step
(MONAI's sliding-window blending, applied per step) keeps the chain one consistent image, with no seams.

Tiles: side `Tiling.side` (rounded down to the U-Net's size multiple), neighbours overlapping by at least
`Tiling.overlap` pixels; the last tile of a row or column ends at the image's edge. Weights: along each axis a tile
ramps up over its first `overlap` pixels where it has a neighbour before it and down over its last `overlap` pixels
where it has one after it, with sin^2 (a half Hann window, whose overlapping halves sum to 1); the 2-d weight is the
product of the two axes', normalised by the sum over the tiles, so the weights sum to 1 at every pixel. With one
tile covering the image the weight is exactly 1 and the result is bit-identical to sampling without tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.samplers import NoiseNet

DEFAULT_TILE_SIDE = 512
DEFAULT_TILE_OVERLAP = 64


@dataclass(frozen=True)
class Tiling:
    """Tile side and minimal overlap of neighbouring tiles, in pixels (of the padded condition)."""

    side: int = DEFAULT_TILE_SIDE
    overlap: int = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if self.side < 1:
            raise ValueError(f"the tile side must be at least 1 pixel, got {self.side}")
        if not 0 <= self.overlap < self.side:
            raise ValueError(f"the tile overlap must be in 0..{self.side - 1} (less than the side {self.side}), "
                             f"got {self.overlap}")


def tile_starts(length: int, side: int, overlap: int) -> list[int]:
    """The first pixel of each tile along an axis of `length`: stride side - overlap, the last tile ending at
    `length`; one tile [0, length) when side >= length."""
    if side >= length:
        return [0]
    stride = side - overlap
    count = math.ceil((length - side) / stride) + 1
    return sorted({min(k * stride, length - side) for k in range(count)})


def _ramp(length: int, start: int, side: int, overlap: int, total: int) -> torch.Tensor:
    """The 1-d weight of the tile [start, start + side) of an axis of `total` pixels (float64)."""
    weight = torch.ones(side, dtype=torch.float64)
    if overlap == 0:
        return weight
    k = torch.arange(overlap, dtype=torch.float64)
    up = torch.sin(math.pi * (k + 0.5) / (2 * overlap)) ** 2  # > 0 everywhere; up[k] + up[overlap - 1 - k] = 1
    if start > 0:
        weight[:overlap] = torch.minimum(weight[:overlap], up)
    if start + side < total:
        weight[side - overlap:] = torch.minimum(weight[side - overlap:], up.flip(0))
    return weight


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an (H, W) image: their (top, left) corners, their size (th, tw) and their blend weights
    (one (th, tw) float64 map each, summing to 1 over the tiles at every pixel)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    corners: tuple[tuple[int, int], ...]
    weights: tuple[torch.Tensor, ...]

    @classmethod
    def build(cls, height: int, width: int, tiling: Tiling, multiple: int = 1) -> TileGrid:
        """The grid of `tiling` over (height, width), both multiples of `multiple`; tile sides are rounded down to
        `multiple` (at least one multiple) and capped at the image."""
        side = max(multiple, tiling.side // multiple * multiple)
        tile_h, tile_w = min(side, height), min(side, width)
        overlap = min(tiling.overlap, side - 1)
        rows, cols = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
        ramps_h = [_ramp(height, top, tile_h, overlap, height) for top in rows]
        ramps_w = [_ramp(width, left, tile_w, overlap, width) for left in cols]
        corners = tuple((top, left) for top in rows for left in cols)
        raw = [rh[:, None] * rw[None, :] for rh in ramps_h for rw in ramps_w]
        total = torch.zeros(height, width, dtype=torch.float64)
        for (top, left), w in zip(corners, raw):
            total[top:top + tile_h, left:left + tile_w] += w
        weights = tuple(w / total[top:top + tile_h, left:left + tile_w] for (top, left), w in zip(corners, raw))
        return cls(height, width, tile_h, tile_w, corners, weights)

    def __len__(self) -> int:
        return len(self.corners)


class TiledNet:
    """A `NoiseNet` that runs `net` tile by tile over `grid` and returns the blended whole-image eps."""

    def __init__(self, net: NoiseNet, grid: TileGrid, device: torch.device) -> None:
        self.net, self.grid = net, grid
        self.weights = [w.to(device=device, dtype=torch.float32)[None, None] for w in grid.weights]

    def __call__(self, condition: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        g = self.grid
        if condition.shape[-2:] != (g.height, g.width):
            raise ValueError(f"the tile grid is for {g.height}x{g.width}, got {tuple(condition.shape[-2:])}")
        if len(g) == 1:
            return self.net(condition, x_t, noise_level)  # one tile covering the image: exactly the whole-image eps
        eps: torch.Tensor | None = None
        for (top, left), weight in zip(g.corners, self.weights):
            rows, cols = slice(top, top + g.tile_h), slice(left, left + g.tile_w)
            out = self.net(condition[..., rows, cols].contiguous(), x_t[..., rows, cols].contiguous(), noise_level)
            if eps is None:
                eps = torch.zeros(out.shape[:2] + (g.height, g.width), dtype=out.dtype, device=out.device)
            eps[..., rows, cols] += weight * out
        assert eps is not None
        return eps
