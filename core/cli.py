"""Command-line helpers shared by `sr.py`, `infer.py`, the benchmarks and the data and release commands: the sampler
flags that override `model.sampler`, the choice of the checkpoint to load, and the exit codes of a command.

Library code never parses arguments; the scripts call these helpers and pass plain config objects down.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from core.config import ConfigError, SamplerConfig, TFSDiffConfig

T = TypeVar("T")


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    """Add --sampler, --steps and --eta (each overrides model.sampler of the config)."""
    group = parser.add_argument_group("sampler (overrides model.sampler)")
    group.add_argument("--sampler", choices=("ddpm", "respaced", "ddim"),
                       help="ddpm = full chain (reference), respaced = DDPM over --steps steps, ddim = DDIM")
    group.add_argument("--steps", type=int, help="kept steps for respaced/ddim (1..n_timestep of the val schedule)")
    group.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (0 = deterministic)")


def sampler_from_args(args: argparse.Namespace, cfg: TFSDiffConfig) -> SamplerConfig:
    """model.sampler with the command-line overrides applied; raises ConfigError naming the flag."""
    base = cfg.model.sampler
    kind = args.sampler or base.type
    same = kind == base.type
    steps = args.steps if args.steps is not None else (base.steps if same else None)
    eta = args.eta if args.eta is not None else (base.eta if same else 0.0)
    try:
        sampler = SamplerConfig(type=kind, steps=steps, eta=eta)
    except ConfigError as err:
        raise ConfigError(f"--{err.key}", f"{err.reason} (with --sampler {kind})") from None
    n_timestep = cfg.model.beta_schedule.val.n_timestep
    if sampler.steps is not None and sampler.steps > n_timestep:
        raise ConfigError("--steps", f"{sampler.steps} exceeds model.beta_schedule.val.n_timestep {n_timestep}")
    return sampler


def apply_sampler_args(args: argparse.Namespace, cfg: TFSDiffConfig) -> TFSDiffConfig:
    """`cfg` with `model.sampler` replaced by the command line's choice (`sampler_from_args`)."""
    return replace(cfg, model=replace(cfg.model, sampler=sampler_from_args(args, cfg)))


def checkpoint_to_load(flag: str | None, cfg: TFSDiffConfig, for_training: bool) -> str | None:
    """The checkpoint a script loads: `--checkpoint` if given, else `path.resume_state`; for sampling (not
    training) else the released weights `path.pretrained`. None when there is none."""
    if flag:
        return flag
    return cfg.path.resume_state if for_training else cfg.path.sampling_checkpoint()


def run_and_report(action: Callable[[], T], errors: tuple[type[Exception], ...],
                   show: Callable[[T], str] = str) -> int:
    """Run ``action``, print ``show(result)`` to stdout and return exit code 0; if it raises one of ``errors``, print
    ``error: <message>`` to stderr and return exit code 2."""
    try:
        result = action()
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(show(result))
    return 0
