"""Released weights: turn a training checkpoint into a weights-only file with a manifest, and verify it on load.

    python -m model.release --checkpoint runs/<run>/checkpoint/I10000_E1000.pth \
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

What may be written (`core.outputs`, issue 22):

- `--out` and its manifest are never the checkpoint (the path given, or the file a folder stands for), never inside
  a checkpoint folder and never contain it, and never the `--config` file; with or without --overwrite.
- `--config` must exist and parse (`core.config.load_config`), and when the checkpoint records its config, the
  network (`model.task`, `model.unet`, `model.tmfa`, `model.diffusion.residual_base` / `residual_scale`) must be
  the config's. An SR3 checkpoint (`model.task: "sr3"`) is released the same way.
- An existing `<out>.pth` is replaced only with --overwrite and only when it is a release: its state says
  `"release": True` and its manifest `<out>.json` names it with a matching size and SHA-256. A training checkpoint
  (it can resume training) or any other file is never replaced, nor is an existing `<out>.json` that is not the
  manifest of `<out>.pth`.
- The two files are published together (`core.outputs.publish_files`): both are written to temporary files, then
  renamed; on a failure neither is left.

Exit status (`core.cli.run_command`): 0 success, 2 for a usage or input error (unreadable checkpoint or config,
unusable --out), 1 for a failure while writing (disk full); --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from core.cli import UsageError, add_debug_arg, naming_path, run_and_report
from core.config import TFSDiffConfig, config_to_dict, load_config
from core.outputs import OutputError, check_apart, publish_files, record_files
from model.checkpoint_io import (CHECKPOINT_VERSION, CheckpointError, load_file, manifest_path, read_checkpoint,
                                 resolve_checkpoint, verify_release)

NETWORK_KEYS = ("unet", "tmfa")  # model.<key> must be the checkpoint's (as TFSDiffModel checks on load)
MODEL_KEYS = {"task": "fusion"}  # model.<key> (default when not recorded: a checkpoint from before the key)
DIFFUSION_KEYS = {"residual_base": None, "residual_scale": 1.0}  # model.diffusion.<key> (default when not recorded)


def _existing(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _not_a_release(out: Path) -> str | None:
    """Why the existing `out` is not a release that model.release wrote (None when it is one: its state says
    release and its manifest names it with a matching size and SHA-256)."""
    if out.is_symlink() or not out.is_file():
        return "is not a regular file"
    try:
        state = load_file(out)
    except CheckpointError:
        return "is not a TFS-Diff checkpoint (unreadable as one)"
    if not isinstance(state, dict) or state.get("format") != "tfsdiff":
        return "is not a TFS-Diff checkpoint"
    if state.get("release") is not True:
        return "is a training checkpoint (it can resume training), not a release"
    manifest_file = manifest_path(out)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        named = manifest.get("file") if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        named = None
    if named != out.name:
        return f"has no release manifest {manifest_file.name} that names it"
    try:
        verify_release(out)
    except CheckpointError as err:
        return f"does not match its manifest ({err})"
    return None


def check_targets(out: Path, overwrite: bool) -> None:
    """OutputError unless `out` and its manifest may be written: both absent, or (with `overwrite`) an existing
    release and its own manifest, which are then recorded as the project's (`core.outputs.record_files`)."""
    manifest_file = manifest_path(out)
    if manifest_file.is_dir() and not manifest_file.is_symlink():
        raise OutputError(f"{manifest_file}, where the manifest of --out {out} goes, is a folder: choose another "
                          "--out or move the folder")
    if not _existing(out):
        if _existing(manifest_file):
            raise OutputError(f"{manifest_file} already exists and is not the manifest of a release at {out} (there "
                              "is none): it is never replaced; choose another --out or remove it yourself")
        return
    reason = _not_a_release(out)
    if reason is not None:
        raise OutputError(f"--out {out} already exists and {reason}: it is never replaced by a release; choose "
                          "another --out")
    if not overwrite:
        raise OutputError(f"--out {out} already exists: pass --overwrite to replace it (and its manifest "
                          f"{manifest_file.name}), or choose another name")
    record_files([out, manifest_file])  # a verified release of ours: publish_files may replace it


def _serialise(release: dict[str, Any], out: Path) -> bytes:
    buffer = io.BytesIO()
    try:
        torch.save(release, buffer)
    except OSError as err:
        raise naming_path(err, out) from err
    return buffer.getvalue()


def export_release(checkpoint: Path, config_file: str, out: Path, use_ema: bool = True, overwrite: bool = False,
                   config: TFSDiffConfig | None = None) -> dict[str, Any]:
    """Write the weights-only `out` and its manifest from a training checkpoint (a file, or a checkpoint or run
    folder as `model.checkpoint_io.resolve_checkpoint` reads it); returns the manifest. `config_file` is recorded;
    `config`, when given (the command line's), must describe the checkpoint's network (`check_network`). The outputs
    are checked as the module docstring says before anything is written."""
    kind, location = resolve_checkpoint(checkpoint)
    for target in (out, manifest_path(out)):
        check_apart(target, (checkpoint, location, config_file), "--out")
    if kind == "official":
        raise CheckpointError(f"{location}_gen.pth is an official checkpoint: load it with sr.py (-p train) and "
                              "release one of the checkpoints that run writes")
    check_targets(out, overwrite)
    state = read_checkpoint(location)
    if state.get("release"):
        raise CheckpointError(f"{location} is already a release")
    if config is not None:
        check_network(config, config_file, state, location)
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
    data = _serialise(release, out)
    manifest = {"file": out.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "weights": weights,
                "step": state["step"], "config": config_file,
                "parameters": sum(v.numel() for k, v in model.items() if k.startswith("denoise_fn."))}
    out.parent.mkdir(parents=True, exist_ok=True)
    publish_files({out: data, manifest_path(out): json.dumps(manifest, indent=2) + "\n"}, overwrite, "--out")
    return manifest


def check_out(out: Path) -> None:
    """UsageError unless `out` is a .pth file name that is not a folder (`check_targets` decides whether an existing
    file may be replaced)."""
    if out.suffix != ".pth":
        raise UsageError(f"--out {out}: expected a .pth file name")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the weights file to write, e.g. {out / 'weights.pth'}")


def check_network(cfg: TFSDiffConfig, config_file: str, state: dict[str, Any], location: Path) -> None:
    """CheckpointError when the checkpoint records a config whose network differs from `cfg`'s (the keys that
    `TFSDiffModel` checks when it loads weights)."""
    saved = state.get("config")
    saved_model = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(saved_model, dict):
        return
    ours = config_to_dict(cfg)["model"]
    differing = [f"model.{k}" for k in NETWORK_KEYS if saved_model.get(k) != ours[k]]
    differing += [f"model.{k}" for k, default in MODEL_KEYS.items() if saved_model.get(k, default) != ours[k]]
    differing += [f"model.diffusion.{k}" for k, default in DIFFUSION_KEYS.items()
                  if (saved_model.get("diffusion") or {}).get(k, default) != ours["diffusion"][k]]
    if differing:
        raise CheckpointError(f"--config {config_file} does not describe the network of {location}: "
                              f"{', '.join(differing)} differ; pass the config it was trained with")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="training checkpoint to release: a .pth file, a checkpoint folder or a run folder")
    parser.add_argument("--config", required=True, help="config file the checkpoint was trained with (recorded)")
    parser.add_argument("--out", required=True, type=Path, help="weights file to write (.pth); the manifest "
                                                                 "goes next to it as .json")
    parser.add_argument("--no-ema", action="store_true", help="release the trained weights instead of the EMA")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing release and its manifest at --out (never another file)")
    add_debug_arg(parser)
    args = parser.parse_args(argv)

    def release() -> dict[str, Any]:
        check_out(args.out)
        cfg = load_config(args.config)  # it exists and parses before anything is written
        return export_release(args.checkpoint, args.config, args.out, use_ema=not args.no_ema,
                              overwrite=args.overwrite, config=cfg)
    return run_and_report(release, lambda manifest: json.dumps(manifest, indent=2), args.debug)


if __name__ == "__main__":
    sys.exit(main())
