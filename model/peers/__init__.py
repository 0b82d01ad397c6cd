"""Published fusion methods, re-implemented from their papers and their authors' code (never copied), for the
paper's comparison rows (Table 1: super-resolution first, then a fusion method).

Each method is one module of this package. Its weights are never in the repository and never downloaded: the user
names a folder (`--peer-dir`), a clone of the authors' repository or any folder that holds the weight file at the
same relative path, and `weights_file` checks the file's size and SHA-256 before it is read.

A method module provides:

- `WEIGHTS`: a `PeerWeights` (the weight file's path inside the authors' repository, its size and SHA-256), or None
  for a method without weights;
- `load(peer_dir, device) -> method`: an object with `fuse(sources) -> np.ndarray`, where `sources` are the three
  registered uint8 RGB images (H, W, 3) in the Harvard tri-modal order (anatomical, MR-T2, functional) and the
  result is one uint8 RGB image (H, W, 3), and `fuse_raw(sources)`, the method's output before 8-bit rounding in its
  native range (what the golden outputs of the authors' code hold).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli import UsageError
from core.hashing import sha256_file


class PeerWeightsError(UsageError):
    """A published method's weight file is missing or is not the authors' file (exit status 2)."""


@dataclass(frozen=True)
class PeerWeights:
    """Where a method's weight file lies inside its authors' repository, and what it must be."""

    method: str
    relative_path: str
    size_bytes: int
    sha256: str

    def describe(self) -> str:
        return f"{self.relative_path} ({self.size_bytes:,} bytes, SHA-256 {self.sha256})"


def weights_file(peer_dir: str | Path | None, weights: PeerWeights) -> Path:
    """The checked weight file of `weights` under `peer_dir`; PeerWeightsError naming the expected path and SHA-256
    when it is missing or differs."""
    if peer_dir is None:
        raise PeerWeightsError(f"{weights.method} needs its authors' weights: pass --peer-dir DIR, a clone of the "
                               f"authors' repository or a folder holding {weights.describe()}")
    path = Path(peer_dir) / weights.relative_path
    if not path.is_file():
        raise PeerWeightsError(f"{weights.method}: {path} does not exist; --peer-dir must hold "
                               f"{weights.describe()}")
    size = path.stat().st_size
    digest = sha256_file(path) if size == weights.size_bytes else None
    if digest != weights.sha256:
        found = f"{size:,} bytes" + (f", SHA-256 {digest}" if digest else "")
        raise PeerWeightsError(f"{weights.method}: {path} is not the authors' weight file ({found}); expected "
                               f"{weights.describe()}")
    return path


def check_sources(sources: Sequence[np.ndarray], min_side: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three sources (anatomical, MR-T2, functional) as arrays; ValueError unless they are uint8 RGB (H, W, 3)
    of one size with both sides at least `min_side`."""
    if len(sources) != 3:
        raise ValueError(f"expected 3 sources (anatomical, MR-T2, functional), got {len(sources)}")
    arrays = [np.asarray(s) for s in sources]
    for a in arrays:
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape != arrays[0].shape:
            raise ValueError(f"sources must be uint8 RGB arrays (H, W, 3) of one size, got "
                             f"{[(x.dtype.name, x.shape) for x in arrays]}")
    if min(arrays[0].shape[:2]) < min_side:
        raise ValueError(f"sources must be at least {min_side} pixels on a side, got {arrays[0].shape[:2]}")
    return arrays[0], arrays[1], arrays[2]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 source as (H, W, 3) RGB (a grey (H, W) image repeated); ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"sources must be uint8 images, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sources must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    return image
