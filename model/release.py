"""Released weights: turn a training checkpoint into a weights-only file with a manifest, and verify it on load.

    python -m model.release --checkpoint experiments/<run>/checkpoint/I10000_E1000.pth \
        --config config/demo_pretrain.json --out pretrained/tfsdiff_demo_x4_16_64.pth [--no-ema] [--overwrite]

A release is two files side by side:

- `<name>.pth`: a checkpoint of our format (see `model.model`) holding only what sampling needs:
  `{"format": "tfsdiff", "version", "release": True, "weights": "ema" | "trained", "step", "epoch", "model",
  "ema": None, "config"}`, where `model` is the `GaussianDiffusion` state dict with the chosen network weights (the
  EMA average by default) and `config` the full training config. It loads wherever a checkpoint does for sampling
  (`infer.py`, `sr.py -p val`, `bench.run --checkpoint`); it cannot resume training (no optimiser or RNG state).
- `<name>.json`: its manifest: file name, size in bytes, SHA-256, step, which weights, and the config file it was
  trained with. `model.checkpoint_io.read_checkpoint` checks size and SHA-256 against the manifest before reading
  the weights, so a truncated download or a Git LFS pointer fails with a clear error instead of a confusing one.

An existing release is replaced only with --overwrite. Exit status (`core.cli.run_command`): 0 success, 2 for a usage
or input error (unreadable checkpoint, unusable --out), 1 for a failure while writing (disk full); --debug shows the
traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.cli import UsageError, add_debug_arg, run_and_report
from core.hashing import sha256_file
from model.checkpoint_io import (CHECKPOINT_VERSION, CheckpointError, atomic_save, manifest_path,
                                 read_checkpoint, resolve_checkpoint, write_text_atomic)


def export_release(checkpoint: Path, config_file: str, out: Path, use_ema: bool = True) -> dict[str, Any]:
    """Write the weights-only `out` and its manifest from a training checkpoint (a file, or a checkpoint or run
    folder as `model.checkpoint_io.resolve_checkpoint` reads it); returns the manifest."""
    kind, location = resolve_checkpoint(checkpoint)
    if kind == "official":
        raise CheckpointError(f"{location}_gen.pth is an official checkpoint: load it with sr.py (-p train) and "
                              "release one of the checkpoints that run writes")
    state = read_checkpoint(location)
    if state.get("release"):
        raise CheckpointError(f"{location} is already a release")
    model = dict(state["model"])
    weights = "trained"
    if use_ema:
        if state.get("ema") is None:
            raise CheckpointError(f"{location} has no EMA weights: export with --no-ema")
        model.update({f"denoise_fn.{k}": v for k, v in state["ema"].items()})
        weights = "ema"
    release = {"format": "tfsdiff", "version": CHECKPOINT_VERSION, "release": True, "weights": weights,
               "step": state["step"], "epoch": state["epoch"], "model": model, "ema": None,
               "config": state["config"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(release, out)
    manifest = {"file": out.name, "bytes": out.stat().st_size, "sha256": sha256_file(out), "weights": weights,
                "step": state["step"], "config": config_file,
                "parameters": sum(v.numel() for k, v in model.items() if k.startswith("denoise_fn."))}
    write_text_atomic(manifest_path(out), json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_out(out: Path, overwrite: bool) -> None:
    """UsageError unless `out` is a .pth file name that may be written (absent, or replaced with `overwrite`)."""
    if out.suffix != ".pth":
        raise UsageError(f"--out {out}: expected a .pth file name")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the weights file to write, e.g. {out / 'weights.pth'}")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} already exists: pass --overwrite to replace it (and its manifest), or "
                         "choose another name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="training checkpoint to release: a .pth file, a checkpoint folder or a run folder")
    parser.add_argument("--config", required=True, help="config file the checkpoint was trained with (recorded)")
    parser.add_argument("--out", required=True, type=Path, help="weights file to write (.pth); the manifest "
                                                                 "goes next to it as .json")
    parser.add_argument("--no-ema", action="store_true", help="release the trained weights instead of the EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing release at --out")
    add_debug_arg(parser)
    args = parser.parse_args(argv)

    def release() -> dict[str, Any]:
        check_out(args.out, args.overwrite)
        return export_release(args.checkpoint, args.config, args.out, use_ema=not args.no_ema)
    return run_and_report(release, (CheckpointError,), lambda manifest: json.dumps(manifest, indent=2), args.debug)


if __name__ == "__main__":
    sys.exit(main())
