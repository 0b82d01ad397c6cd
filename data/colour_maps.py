"""The pseudo-colour maps of the Harvard Whole Brain Atlas functional images: render an activity map, read one back.

A map is a piecewise-linear curve through RGB anchor colours at positions in 0..1, sampled as a 256-entry lookup
table (LUT): activity ``a`` in 0..1 is rendered as ``LUT[round(255 a)]``. Both maps start at black, so zero activity
is black, as in the atlas.

* ``"harvard_pet"``: black -> dark blue -> blue -> yellow -> red -> magenta, anchors at 0, 15/127, 31/127, 63/127,
  95/127, 1. This is the atlas's 128-entry PET colour table, read from the 269 public ``PET-MRI/PET`` images
  (every colour in them lies within 1 grey level of this curve); the atlas's SPECT-Tl images use it too.
* ``"harvard_spect_tc"``: black -> dark teal -> purple -> mauve -> orange -> pale pink, anchors
  (0,0,0), (41,71,73), (82,0,143), (190,90,121), (255,114,0), (255,222,255) at 0, 0.161, 0.368, 0.575, 0.805, 1.
  The anchor colours are the corners of the colour curve of the 357 public ``SPECT-MRI/SPECT`` (SPECT-Tc) images;
  the positions are proportional to the number of distinct colours seen on each segment.

``colourise`` renders a grey image in a map (grey level ``g`` is activity ``g / 255``, so it gets ``LUT[g]``): how
``infer.py --colour-map NAME`` turns a grey functional scan into the pseudo-colour the model was trained on.
``activity_from_colours`` inverts a map: each pixel gets the activity of the nearest LUT colour (Euclidean RGB
distance, ties: the lower activity). ``closest_map`` names the map whose LUT explains an image's colours best.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLOUR_MAPS", "colour_lut", "render_activity", "colourise", "activity_from_colours", "lut_distance",
           "closest_map"]

COLOUR_MAPS: dict[str, tuple[tuple[float, tuple[int, int, int]], ...]] = {
    "harvard_pet": ((0.0, (0, 0, 0)), (15 / 127, (0, 0, 123)), (31 / 127, (0, 85, 255)), (63 / 127, (255, 255, 0)),
                    (95 / 127, (255, 0, 0)), (1.0, (255, 0, 255))),
    "harvard_spect_tc": ((0.0, (0, 0, 0)), (0.161, (41, 71, 73)), (0.368, (82, 0, 143)), (0.575, (190, 90, 121)),
                         (0.805, (255, 114, 0)), (1.0, (255, 222, 255))),
}
LUT_SIZE = 256


def colour_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of colour map ``name``; row k is the colour of activity k / 255."""
    if name not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {name!r}; known maps: {sorted(COLOUR_MAPS)}")
    positions = [p for p, _ in COLOUR_MAPS[name]]
    levels = np.linspace(0.0, 1.0, LUT_SIZE)
    channels = [np.interp(levels, positions, [colour[c] for _, colour in COLOUR_MAPS[name]]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


def render_activity(activity: np.ndarray, name: str) -> np.ndarray:
    """(H, W) float activity (clipped to 0..1) -> (H, W, 3) uint8 RGB in colour map ``name``."""
    index = np.rint(np.clip(activity, 0.0, 1.0) * (LUT_SIZE - 1)).astype(np.intp)
    return colour_lut(name)[index]


def colourise(grey: np.ndarray, name: str) -> np.ndarray:
    """uint8 grey levels of any shape -> RGB uint8 of that shape plus a last axis of 3: ``LUT[g]`` of map ``name``,
    the colour ``render_activity`` gives activity ``g / 255``."""
    if grey.dtype != np.uint8:
        raise ValueError(f"colourise expects uint8 grey levels, got {grey.dtype}")
    return colour_lut(name)[grey]


def _nearest_entries(rgb: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of (H, W, 3) ``rgb``: (LUT index of the nearest colour, its Euclidean distance), both (H, W)."""
    flat = rgb.reshape(-1, 3).astype(np.int32)
    codes, inverse = np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2], return_inverse=True)
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1).astype(np.float32)
    diff = colours[:, None, :] - colour_lut(name)[None].astype(np.float32)
    dist = np.sqrt((diff**2).sum(axis=-1))
    nearest = np.argmin(dist, axis=1)
    shape = rgb.shape[:2]
    return nearest[inverse].reshape(shape), dist[np.arange(len(colours)), nearest][inverse].reshape(shape)


def activity_from_colours(rgb: np.ndarray, name: str) -> np.ndarray:
    """(H, W, 3) uint8 image rendered in map ``name`` -> (H, W) float32 activity in 0..1 (nearest LUT colour)."""
    index, _ = _nearest_entries(rgb, name)
    return (index / (LUT_SIZE - 1)).astype(np.float32)


def lut_distance(rgb: np.ndarray, name: str) -> float:
    """Mean Euclidean RGB distance of the pixels of (H, W, 3) ``rgb`` to their nearest colour of map ``name``."""
    return float(_nearest_entries(rgb, name)[1].mean())


def closest_map(rgb: np.ndarray, max_distance: float) -> str | None:
    """Name of the map with the smallest ``lut_distance`` to ``rgb``, or None when even that exceeds
    ``max_distance`` (the image uses a map that is not in COLOUR_MAPS)."""
    distances = {name: lut_distance(rgb, name) for name in sorted(COLOUR_MAPS)}
    best = min(distances, key=lambda name: distances[name])
    return best if distances[best] <= max_distance else None
