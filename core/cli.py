"""Command-line helpers shared by `sr.py`, `infer.py`, `eval.py`, the benchmarks and the data and release commands:
the sampler flags that override `model.sampler`, the choice of the checkpoint to load, and the one error policy.

The error policy (`run_command`): every command exits with

- 0 on success,
- 2 for a usage or input error: a bad option, config, image, dataset or checkpoint, or a path that cannot be used
  (permission denied, read-only, not a folder, already exists, is a folder, does not exist),
- 1 for a failure while running (disk full, another I/O error, a NaN loss, any unexpected error),
- 130 when interrupted (Ctrl-C),

after printing one `error: ...` message that names the path or the key and says what to do. The traceback is shown
only with `--debug`. argparse's own usage errors exit 2 as well.

Library code never parses arguments; the scripts call these helpers and pass plain config objects down.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from core.config import ConfigError, SamplerConfig, TFSDiffConfig
from core.errors import UsageError
from core.registry import SAMPLERS

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# errno -> (exit code, what is wrong with the path, what to do)
_OS_ERRORS: dict[int, tuple[int, str, str]] = {
    errno.EACCES: (EXIT_USAGE, "permission denied", "fix its permissions or choose another path"),
    errno.EPERM: (EXIT_USAGE, "operation not permitted", "fix its permissions or choose another path"),
    errno.EROFS: (EXIT_USAGE, "read-only file system", "choose a path on a writable file system"),
    errno.ENOTDIR: (EXIT_USAGE, "a part of the path is a file, not a folder", "choose another path"),
    errno.EEXIST: (EXIT_USAGE, "already exists and is in the way", "remove it or choose another path"),
    errno.EISDIR: (EXIT_USAGE, "is a folder where a file is expected", "give a file path"),
    errno.ENOENT: (EXIT_USAGE, "does not exist", "check the path"),
    errno.ENOSPC: (EXIT_FAILURE, "no space left on the device", "free some space and run again"),
    errno.EDQUOT: (EXIT_FAILURE, "disk quota exceeded", "free some space and run again"),
}

_OS_ERROR_CLASSES = {FileExistsError: errno.EEXIST, PermissionError: errno.EACCES, NotADirectoryError: errno.ENOTDIR,
                     IsADirectoryError: errno.EISDIR, FileNotFoundError: errno.ENOENT}


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    """Add --sampler, --steps, --eta, --samples, --clip, --start-step and --start-from (each overrides
    model.sampler)."""
    group = parser.add_argument_group("sampler (overrides model.sampler)")
    group.add_argument("--sampler", choices=SAMPLERS.names(),  # core.registry: the samplers of model/samplers.py
                       help=", ".join(f"{name} = {spec.help}" for name, spec in SAMPLERS.items()))
    group.add_argument("--steps", type=int, help="kept steps for respaced/ddim (1..n_timestep of the val schedule)")
    group.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (0 = deterministic)")
    group.add_argument("--samples", type=int, help="average this many samples (>= 1; the mean of the samples)")
    group.add_argument("--clip", choices=("x0", "image"), help="clip each step's x0 estimate to [-1, 1] (x0), or "
                       "so that the fused image lies in [-1, 1] (image; differs only for a residual model)")
    group.add_argument("--start-step", type=int, help="respaced/ddim: start the chain at this step from a zero clean "
                       "signal noised to its level (default: the whole chain from pure noise)")
    group.add_argument("--start-from", choices=("zero", "condition"), help="with --start-step: the clean signal "
                       "noised to the start: zero (default) or the conditioning image (SR3 only)")


def sampler_from_args(args: argparse.Namespace, cfg: TFSDiffConfig) -> SamplerConfig:
    """model.sampler with the command-line overrides applied; raises ConfigError naming the flag."""
    base = cfg.model.sampler
    kind = args.sampler or base.type
    same = kind == base.type
    steps = args.steps if args.steps is not None else (base.steps if same else None)
    eta = args.eta if args.eta is not None else (base.eta if same else 0.0)
    samples = args.samples if args.samples is not None else base.samples
    start = args.start_step if args.start_step is not None else (base.start_step if same else None)
    clip = args.clip or base.clip
    start_from = args.start_from or (base.start_from if start is not None else "zero")
    try:
        sampler = SamplerConfig(type=kind, steps=steps, eta=eta, samples=samples, start_step=start, clip=clip,
                                start_from=start_from)
    except ConfigError as err:
        raise ConfigError(f"--{err.key.replace('_', '-')}", f"{err.reason} (with --sampler {kind})") from None
    n_timestep = cfg.model.beta_schedule.val.n_timestep
    if sampler.steps is not None and sampler.steps > n_timestep:
        raise ConfigError("--steps", f"{sampler.steps} exceeds model.beta_schedule.val.n_timestep {n_timestep}")
    if sampler.start_step is not None and sampler.start_step > n_timestep:
        raise ConfigError("--start-step", f"{sampler.start_step} exceeds model.beta_schedule.val.n_timestep "
                          f"{n_timestep}")
    max_step = cfg.model.diffusion.train_max_step
    if max_step is not None and (sampler.start_step is None or sampler.start_step > max_step):
        raise ConfigError("--start-step", f"this model was trained on steps 1..{max_step} only "
                          f"(model.diffusion.train_max_step): pass --start-step {max_step} or less")
    try:
        replace(cfg.model, sampler=sampler)  # the model's own checks of its sampler (start_from: SR3 only)
    except ConfigError as err:
        raise ConfigError(f"--{err.key.removeprefix('sampler.').replace('_', '-')}", err.reason) from None
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


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    """Add --debug (show the traceback of an error)."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def describe_os_error(err: OSError) -> tuple[int, str]:
    """(exit code, one-line message naming the path and what to do) for a filesystem error; an OSError raised with
    a message only (no errno) is classified by its subclass and keeps its message."""
    number = err.errno if err.errno is not None else next(
        (n for cls, n in _OS_ERROR_CLASSES.items() if isinstance(err, cls)), None)
    code, what, todo = _OS_ERRORS.get(number or 0, (EXIT_FAILURE, err.strerror or "input/output error",
                                                    "check the path and the device"))
    if err.errno is None:
        return code, f"{err}: {todo}"
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    return code, f"{paths}: {what}: {todo}" if paths else f"{what}: {todo}"


def naming_path(err: OSError, path: str | Path) -> OSError:
    """`err` with `path` as its file name (for errors raised by writes to a temporary file or an open file, which
    would name the temporary file or nothing); an error without errno is returned unchanged."""
    return err if err.errno is None else type(err)(err.errno, err.strerror, str(path))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def run_command(action: Callable[[], int], debug: bool = False, log: logging.Logger | None = None) -> int:
    """Run a command's ``action`` (which returns its exit code) under the module's error policy.

    A `UsageError` (`core.errors`: the base class of every input error) exits 2 with its message; filesystem errors
    as `describe_os_error` says; any other exception exits 1 with the first line of its message; Ctrl-C exits 130.
    The message goes to ``log`` (``log.error``) when given, else to stderr as ``error: <message>``; ``debug`` adds
    the traceback.
    """
    try:
        return action()
    except KeyboardInterrupt as err:
        code, message, caught = EXIT_INTERRUPTED, "interrupted", err
    except UsageError as err:
        code, message, caught = EXIT_USAGE, str(err), err
    except OSError as err:
        (code, message), caught = describe_os_error(err), err
    except Exception as err:  # the policy's last line: one message and exit 1 instead of a traceback
        code, message, caught = EXIT_FAILURE, f"failed with {type(err).__name__}: {_first_line(err)}" + (
            "" if debug else " (run again with --debug for the traceback)"), err
    if debug:
        traceback.print_exception(caught, file=sys.stderr)
    if log is not None:
        log.error("%s", message)
    else:
        print(f"error: {message}", file=sys.stderr)
    return code


def run_and_report(action: Callable[[], T], show: Callable[[T], str] = str, debug: bool = False) -> int:
    """`run_command` of ``action``; on success print ``show(result)`` to stdout and return 0."""
    def report() -> int:
        print(show(action()))
        return EXIT_OK
    return run_command(report, debug)
