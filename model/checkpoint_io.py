"""Checkpoint files on disk: atomic writes, finding the file a path names, reading it, and checking released weights.

A checkpoint folder holds `I{step}_E{epoch}.pth` files, each written to a temporary `.<name>.tmp<pid>` file, synced
and renamed (so a file of that name is always complete), and a `latest` file naming the newest one. A run that
resumed from another checkpoint records its absolute path in `resumed_from` before its first step. A folder given
as a checkpoint resolves to the file `latest` names, else to its newest complete checkpoint, else to the one it
resumed from; a run folder stands for its `checkpoint/` sub-folder. Temporary files left by a killed save never
count as checkpoints; the next save in their folder, or the next run resuming from it, removes them
(`remove_stale_temporaries`).

Released weights (see `model.release`) come with a manifest `<name>.json` next to `<name>.pth` that records the
file's size and SHA-256; `read_checkpoint` checks them before reading, so a truncated file or a Git LFS pointer
fails with a clear error.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from core.cli import naming_path
from core.errors import UsageError
from core.hashing import sha256_file

CHECKPOINT_VERSION = 2
_LFS_POINTER = b"version https://git-lfs"
CHECKPOINT_FILE = re.compile(r"I(\d+)_E(\d+)\.pth")
LATEST, RESUMED_FROM, RUN_CHECKPOINTS = "latest", "resumed_from", "checkpoint"
_TEMPORARY = re.compile(r"\..+\.tmp(\d+)")
_STARTED = time.time()
log = logging.getLogger("tfsdiff")


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the configuration."""


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`. An OSError names `path`."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise naming_path(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file next to `path`, then rename it over `path`. An OSError names `path`."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise naming_path(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the process exists but belongs to another user
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the `.<name>.tmp<pid>` files in `folder` that a killed save left: those whose process is gone, and
    those older than this process (their pid was reused). Returns the removed files."""
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or not path.is_file() or int(match.group(1)) == os.getpid():
            continue
        if not _process_alive(int(match.group(1))) or path.stat().st_mtime < _STARTED:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Write the checkpoint dict `state` as `folder/I{step}_E{epoch}.pth` atomically, then point `latest` at it;
    first remove the temporary files that killed saves left in `folder` (logged). Returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(folder):
        log.info("removed %s, left by a save that was killed", stale)
    path = folder / f"I{state['step']}_E{state['epoch']}.pth"
    atomic_save(state, path)
    write_text_atomic(folder / LATEST, path.name + "\n")
    return path


def newest_checkpoint(folder: Path) -> Path | None:
    """The `I{step}_E{epoch}.pth` file of `folder` with the highest step (then epoch); None without one."""
    found = [(int(m.group(1)), int(m.group(2)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_FILE.fullmatch(p.name)) and p.is_file()]
    return max(found)[2] if found else None


def resume_records(source: str | Path) -> dict[str, str]:
    """The files a run that resumes from `source` keeps in its checkpoint folder from its start (see
    `core.logger.make_run_dirs`): `resumed_from` with the absolute path of the checkpoint (file or official prefix)
    that `source` names, so the folder resolves to it until it holds a checkpoint of its own."""
    _, location = resolve_checkpoint(source)
    return {RESUMED_FROM: f"{location.absolute()}\n"}


def checkpoint_folder(source: str | Path) -> Path:
    """The checkpoint folder a `--checkpoint` path names: a run folder's `checkpoint/`, a folder, or the folder of a
    file or official prefix."""
    p = Path(source)
    if not p.is_dir():
        return p.parent
    return p / RUN_CHECKPOINTS if (p / RUN_CHECKPOINTS).is_dir() and not (p / LATEST).is_file() else p


def _checkpoint_in_folder(folder: Path) -> Path:
    """The checkpoint a folder stands for: `latest`, else the newest complete one, else `resumed_from`."""
    folder = checkpoint_folder(folder)
    latest = folder / LATEST
    if latest.is_file():
        return folder / latest.read_text(encoding="utf-8").strip()
    newest = newest_checkpoint(folder)
    if newest is not None:
        return newest
    record = folder / RESUMED_FROM
    if not record.is_file():
        raise CheckpointError(f"{folder} holds no complete checkpoint (no '{LATEST}' file, no I<step>_E<epoch>.pth) "
                              "and records no checkpoint it resumed from (for a run folder: the run stopped before "
                              "its first save): pass the checkpoint it started from, or start again without "
                              "--checkpoint")
    source = Path(record.read_text(encoding="utf-8").strip())
    if not source.is_file() and not Path(f"{source}_gen.pth").is_file():
        raise CheckpointError(f"{folder} holds no complete checkpoint, and {source}, which its '{RESUMED_FROM}' "
                              "names, no longer exists: pass another checkpoint")
    return source


def resolve_checkpoint(path: str | Path) -> tuple[str, Path]:
    """Classify `path`: ("ours", file), ("ours", the file a folder stands for) or ("official", prefix of
    *_gen.pth)."""
    p = Path(path)
    if p.is_dir():
        p = _checkpoint_in_folder(p)
    if p.is_file() and p.suffix == ".pth" and not p.name.endswith(("_gen.pth", "_opt.pth")):
        return "ours", p
    prefix = Path(str(p).removesuffix("_gen.pth").removesuffix("_opt.pth"))
    if Path(f"{prefix}_gen.pth").is_file():
        return "official", prefix
    raise CheckpointError(f"no checkpoint at {p} (looked for the file itself and for {prefix}_gen.pth)")


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


def load_file(location: Path, what: str = "checkpoint") -> Any:
    """`torch.load(location, weights_only=True)` on the CPU; any failure is a CheckpointError naming the file.

    Arbitrary bytes make torch.load raise almost anything (UnpicklingError, IndexError, KeyError, EOFError,
    RuntimeError), so every exception is caught here and described by what the file turned out to be.
    """
    try:
        with open(location, "rb") as f:
            head = f.read(len(_LFS_POINTER))
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {location}: {err.strerror}") from err
    if head == _LFS_POINTER:
        raise CheckpointError(f"{location} is a Git LFS pointer, not the {what}: run `git lfs pull`")
    if not head:
        raise CheckpointError(f"{location} is empty (0 bytes): the {what} was never written; pass another one")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(location, map_location="cpu", weights_only=True)
    except Exception as err:  # see the docstring: the exception type says little about the file
        kind = "truncated or damaged" if isinstance(err, (EOFError, RuntimeError)) else \
            "not a PyTorch checkpoint (random bytes, or a pickle of objects a checkpoint never holds)"
        raise CheckpointError(f"cannot read {what} {location}: {kind} ({type(err).__name__}); pass a .pth file "
                              "written by sr.py or model.release") from err


def read_checkpoint(location: Path) -> dict[str, Any]:
    """Our checkpoint dict at `location` (verified against its release manifest when it has one)."""
    verify_release(location)
    state = load_file(location)
    if not isinstance(state, dict) or state.get("format") != "tfsdiff":
        raise CheckpointError(f"{location} is not a TFS-Diff checkpoint (a file of another program or an official "
                              "*_gen.pth renamed): pass a checkpoint written by sr.py or model.release")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{location} has checkpoint version {state['version']}, newer than this code's "
                              f"{CHECKPOINT_VERSION}: update the code")
    missing = [key for key in ("model", "step", "epoch") if key not in state]
    if missing or not isinstance(state["model"], dict):
        lacks = ", ".join(missing) or "a model state dict"
        raise CheckpointError(f"{location} is an incomplete TFS-Diff checkpoint (no {lacks}): pass another checkpoint")
    return state


def sampling_weights(state: dict[str, Any], use_ema: bool = True) -> tuple[dict[str, Any], bool]:
    """The `GaussianDiffusion` state dict to sample with from our checkpoint dict `state`: its `model` with the
    network's weights replaced by its EMA weights when it has them and `use_ema`; and whether they were."""
    ema_state = state.get("ema")
    if not use_ema or ema_state is None:
        return state["model"], False
    return {**state["model"], **{f"denoise_fn.{k}": v for k, v in ema_state.items()}}, True


def read_official_weights(prefix: Path) -> tuple[Path, dict[str, Any]]:
    """The file `<prefix>_gen.pth` of an official checkpoint and its state dict (the `GaussianDiffusion` layout)."""
    gen = Path(f"{prefix}_gen.pth")
    state = load_file(gen, "official checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{gen} is not an official TFS-Diff checkpoint (not a state dict)")
    return gen, state


def read_official_training_state(prefix: Path) -> tuple[Path, dict[str, Any]] | None:
    """The file `<prefix>_opt.pth` of an official checkpoint and its dict (`optimizer`, `iter`, `epoch`); None when
    the checkpoint has no such file."""
    opt = Path(f"{prefix}_opt.pth")
    if not opt.is_file():
        return None
    opt_state = load_file(opt, "official optimiser state")
    if not isinstance(opt_state, dict) or not {"optimizer", "iter", "epoch"} <= opt_state.keys():
        raise CheckpointError(f"{opt} is not an official optimiser state (no optimizer, iter and epoch)")
    return opt, opt_state


def check_readable(path: str | Path) -> None:
    """Fail early (CheckpointError naming the file) when `path` names no readable checkpoint, ours or official."""
    kind, location = resolve_checkpoint(path)
    if kind == "ours":
        read_checkpoint(location)
    else:
        load_file(Path(f"{location}_gen.pth"), "official checkpoint")
