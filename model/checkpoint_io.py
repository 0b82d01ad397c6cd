"""Checkpoint files on disk: atomic writes, finding the file a path names, reading it, and checking released weights.

Released weights (see `model.release`) come with a manifest `<name>.json` next to `<name>.pth` that records the
file's size and SHA-256; `read_checkpoint` checks them before reading, so a truncated file or a Git LFS pointer
fails with a clear error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from core.hashing import sha256_file

CHECKPOINT_VERSION = 2
_LFS_POINTER = b"version https://git-lfs"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the configuration."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolve_checkpoint(path: str | Path) -> tuple[str, Path]:
    """Classify `path`: ("ours", file), ("ours", folder/latest's file) or ("official", prefix of *_gen.pth)."""
    p = Path(path)
    if p.is_dir():
        latest = p / "latest"
        if not latest.is_file():
            raise CheckpointError(f"{p} is a folder without a 'latest' file: give a checkpoint file instead")
        p = p / latest.read_text(encoding="utf-8").strip()
    if p.is_file() and p.suffix == ".pth" and not p.name.endswith(("_gen.pth", "_opt.pth")):
        return "ours", p
    prefix = Path(str(p).removesuffix("_gen.pth").removesuffix("_opt.pth"))
    if Path(f"{prefix}_gen.pth").is_file():
        return "official", prefix
    raise CheckpointError(f"no checkpoint at {path} (looked for the file itself and for {prefix}_gen.pth)")


def manifest_path(weights: Path) -> Path:
    """The manifest of released weights `<name>.pth`: `<name>.json` in the same folder."""
    return weights.with_suffix(".json")


def verify_release(weights: Path) -> None:
    """If `weights` has a manifest next to it, check its size and SHA-256 (CheckpointError naming the file)."""
    manifest_file = manifest_path(weights)
    if not manifest_file.is_file():
        return
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        expected_size, expected_sha = int(manifest["bytes"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_file}: unreadable release manifest ({err})") from err
    with open(weights, "rb") as f:
        if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise CheckpointError(f"{weights} is a Git LFS pointer, not the weights: run `git lfs pull`")
    size = weights.stat().st_size
    if size != expected_size:
        raise CheckpointError(f"{weights} has {size} bytes, its manifest {manifest_file} says {expected_size}: "
                              "the file is truncated or was replaced")
    actual_sha = sha256_file(weights)
    if actual_sha != expected_sha:
        raise CheckpointError(f"{weights} has SHA-256 {actual_sha}, its manifest {manifest_file} says "
                              f"{expected_sha}: the file is corrupt or was replaced")


def read_checkpoint(location: Path) -> dict[str, Any]:
    """Our checkpoint dict at `location` (verified against its release manifest when it has one)."""
    verify_release(location)
    try:
        state = torch.load(location, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read checkpoint {location}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != "tfsdiff":
        raise CheckpointError(f"{location} is not a TFS-Diff checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{location} has checkpoint version {state['version']}, newer than this code's "
                              f"{CHECKPOINT_VERSION}: update the code")
    return state
