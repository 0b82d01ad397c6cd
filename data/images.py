"""The one image reader, the [-1, 1] tensor mapping, and the one pairing of files by stem.

Every image file the project reads as an input goes through :func:`read_image`: the dataset loader, ``prepare_data``,
``eval.py`` and single-case inference. Its rules:

* Extensions (:data:`IMAGE_EXTENSIONS`, case-insensitive): png, jpg, jpeg, gif, bmp, tif, tiff. This is the union of
  the loader's and ``prepare_data``'s former lists: the loader now reads gif too.
* The EXIF orientation is applied (a rotated camera JPEG is read upright).
* Grey, RGB, palette and 1-bit images become RGB (grey -> R = G = B, pseudo-colour kept).
* Alpha (RGBA, LA, PA, palette with transparency) is composited on black: ``RGB * alpha / 255``, rounded.
* 16-bit, 32-bit int and float images are scaled per image by min-max to 0..255, rounded (a constant image gives 0),
  then R = G = B. In a float image the minimum and maximum are those of the finite pixels, and a NaN or infinite
  pixel (no data, as masked scans hold) reads as the minimum, i.e. black; an image without a finite pixel is an error.
* Of an animated GIF only the first frame is used.

:func:`to_tensor` maps such an array to the model's range [-1, 1] as SR3 does (``uint8 / 255 * 2 - 1``);
``metrics.registry.tensor2img`` is its inverse (rounded and clipped back to uint8).

Files are paired by stem: :func:`list_by_stem` lists a folder (hidden files ignored), :func:`pair_by_stem` checks that
several listings hold the same stems and names what each one lacks. Errors are :class:`ImageReadError` and
:class:`PairingError` (both ``ValueError``), naming the file or folder; callers wrap them in their own error class.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from core.errors import UsageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "PairingError", "read_image", "to_tensor", "file_stem",
           "list_by_stem", "pair_by_stem", "format_ids"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff")
_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_MAX_IDS_SHOWN = 10


class ImageReadError(UsageError):
    """An image file is missing or cannot be decoded; the message names the file."""


class PairingError(UsageError):
    """Files are not paired by stem (or a stem is ambiguous); the message names the folders and the stems."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded PIL image -> (H, W, 3) uint8 RGB by the module's rules."""
    if img.mode in _HIGH_DEPTH_MODES:
        grey = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(grey)
        if not finite.any():
            raise ValueError("no pixel holds a finite value (all NaN or infinite)")
        low, high = float(grey[finite].min()), float(grey[finite].max())
        grey = np.where(finite, grey, low)
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        return np.repeat(np.rint(scaled).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info or img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        return np.rint(rgba[..., :3] * rgba[..., 3:] / 255.0).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (rules in the module docstring).

    Raises ImageReadError naming ``path`` when the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img)
    except _READ_ERRORS as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) float32 tensor in [-1, 1]: ``array / 255 * 2 - 1``."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {array.dtype} {array.shape}")
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8, order="C")).permute(2, 0, 1).to(torch.float32)
    return tensor.div(255).mul(2).sub(1)


def file_stem(path: Path, extensions: tuple[str, ...]) -> str | None:
    """File name without its (case-insensitive) extension from ``extensions``; None for other files."""
    name = path.name
    for ext in extensions:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def list_by_stem(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[dict[str, Path], list[Path]]:
    """(stem -> file, skipped) for the entries of ``folder``, sorted by name.

    Hidden entries (name starting with ".") are ignored; sub-folders and files without one of ``extensions`` are
    returned in ``skipped``. Two files with one stem (e.g. ``a.png`` and ``a.jpg``) raise PairingError.
    """
    found: dict[str, Path] = {}
    skipped: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = file_stem(path, extensions) if path.is_file() else None
        if stem is None:
            skipped.append(path)
        elif stem in found:
            raise PairingError(f"ambiguous case id {stem!r} in {folder}: {found[stem].name} and {path.name}")
        else:
            found[stem] = path
    return found, skipped


def format_ids(ids: Collection[str]) -> str:
    """Sorted ids joined by ", ", cut after 10 with ``, ... (N in total)``."""
    shown = sorted(ids)[:_MAX_IDS_SHOWN]
    return ", ".join(shown) + (f", ... ({len(ids)} in total)" if len(ids) > _MAX_IDS_SHOWN else "")


def pair_by_stem(listings: Mapping[str, Collection[str]]) -> list[str]:
    """The sorted stems of ``listings`` (name -> stems), which must all hold the same stems.

    Otherwise PairingError with one line per listing that lacks stems of the others: ``  <name>: missing <ids>``.
    """
    every = set().union(*(set(stems) for stems in listings.values()))
    problems = [f"  {name}: missing {format_ids(every - set(stems))}" for name, stems in listings.items()
                if every - set(stems)]
    if problems:
        raise PairingError("\n".join(problems))
    return sorted(every)


def pad_to_square(array: np.ndarray) -> np.ndarray:
    """Zero-pad an (H, W) or (H, W, C) image, centred, to a square of side max(H, W) (the extra row or column of an
    odd difference goes to the bottom or right)."""
    height, width = array.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pad = ((top, side - height - top), (left, side - width - left)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad)

