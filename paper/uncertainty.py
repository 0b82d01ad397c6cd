"""How well the uncertainty map of `infer.py --samples K --uncertainty` ranks the errors, on a split with ground truth.

For every case of the split (default: the validation split of the config) the model draws K samples
(`Fuser.fuse(keep_samples=True)`, the sampler of the config or of the flags; default K = 4) and the bench compares,
per pixel,

- the spread: `model.fuser.FusedBatch.spread`, the standard deviation over the K samples of each sample's luminance
  in grey levels (the map's value / 16 before its rounding and saturation), with
- the error: |grey(fused) - grey(ground truth)| in grey levels, `fused` the mean image that infer.py writes (uint8)
  and grey the evaluator's `metrics.fusion.to_grey`.

It prints, over the pixels of all cases pooled (and over the foreground, the pixels where the ground truth's grey is
above 0), the Spearman and Pearson correlations of spread and error, the mean error of the `--top` fraction (default
10 %) of pixels with the largest spread against the mean error of the others (ties at the cut broken by pixel order),
and, per case, the Spearman correlation. It writes no file.

    python -m paper.uncertainty [-c config/harvard_x4_residual_start200_64_256.json] [--split val] [--samples 4]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from scipy import stats
from tqdm import tqdm

from core.cli import UsageError, add_debug_arg, add_sampler_args, apply_sampler_args, checkpoint_to_load, \
    run_and_report
from core.config import load_config
from data.loader import dataset_from_config, ensure_config_data
from metrics.fusion import to_grey
from metrics.registry import tensor2img
from model.fuser import Fuser

DEFAULT_CONFIG = "config/harvard_x4_residual_start200_64_256.json"
DEFAULT_SAMPLES = 4


@dataclass(frozen=True)
class Ranking:
    """Spread against error over a set of pixels."""

    pixels: int
    spearman: float
    pearson: float
    top_error: float  # mean error of the `top` fraction with the largest spread
    rest_error: float  # mean error of the other pixels
    top_share: float  # fraction of the summed error that lies in the top pixels

    def describe(self, top: float) -> str:
        return (f"{self.pixels} pixels: Spearman {self.spearman:.3f}, Pearson {self.pearson:.3f}; mean |error| in the "
                f"{top:.0%} most uncertain {self.top_error:.2f} vs {self.rest_error:.2f} in the rest "
                f"(x{self.top_error / self.rest_error:.2f}); they hold {self.top_share:.0%} of the summed error")


def ranking(spread: np.ndarray, error: np.ndarray, top: float) -> Ranking:
    """`Ranking` of flat arrays `spread` and `error` (same length, at least 2 pixels)."""
    order = np.argsort(-spread, kind="stable")
    count = max(1, int(np.ceil(top * spread.size)))
    chosen = np.zeros(spread.size, bool)
    chosen[order[:count]] = True
    total = float(error.sum())
    return Ranking(int(spread.size), float(stats.spearmanr(spread, error).statistic),
                   float(stats.pearsonr(spread, error).statistic), float(error[chosen].mean()),
                   float(error[~chosen].mean()) if count < spread.size else float("nan"),
                   float(error[chosen].sum()) / total if total > 0 else float("nan"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config (default {DEFAULT_CONFIG})")
    parser.add_argument("--checkpoint", help="weights (default: the config's resume_state, else its pretrained)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="a split with ground truth")
    parser.add_argument("--top", type=float, default=0.1, help="fraction of most uncertain pixels (default 0.1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_sampler_args(parser)
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    if args.samples is None:
        args.samples = DEFAULT_SAMPLES
    return args


def measure(args: argparse.Namespace) -> str:
    if not 0 < args.top < 1:
        raise UsageError(f"--top {args.top}: expected a fraction between 0 and 1")
    if args.samples < 2:
        raise UsageError(f"--samples {args.samples}: the spread needs at least 2 samples")
    cfg = apply_sampler_args(args, load_config(args.config))
    split = getattr(cfg.datasets, args.split)
    if split is None:
        raise UsageError(f"the config has no datasets.{args.split} section")
    ensure_config_data(cfg.datasets)
    loader = dataset_from_config(split, seed=cfg.seed, train=False)[2]
    fuser = Fuser.from_checkpoint(cfg, checkpoint_to_load(args.checkpoint, cfg, for_training=False))
    generator = fuser.generator()  # one sequence over the split, as validation samples it
    spreads, errors, foreground, lines = [], [], [], []
    for batch in tqdm(loader, desc="cases", disable=args.no_progress):
        result = fuser.fuse(batch, generator=generator, progress=False, keep_samples=True)
        for i, case in enumerate(batch.case_ids):
            truth = to_grey(tensor2img(batch.target[i]))
            error = np.abs(to_grey(result.image(i)) - truth).ravel()
            spread = result.spread(i).ravel()
            spreads.append(spread)
            errors.append(error)
            foreground.append(truth.ravel() > 0)
            lines.append(f"  {case}: Spearman {stats.spearmanr(spread, error).statistic:.3f}, mean spread "
                         f"{spread.mean():.2f}, mean |error| {error.mean():.2f}")
    spread, error, mask = np.concatenate(spreads), np.concatenate(errors), np.concatenate(foreground)
    sampler = cfg.model.sampler
    head = (f"{len(lines)} cases of {split.dataroot}, {sampler.samples} samples of sampler {sampler.type} "
            f"(steps {sampler.steps}, start_step {sampler.start_step}, clip {sampler.clip}), seed {cfg.seed}; "
            f"spread: mean {spread.mean():.2f}, 99th percentile {np.percentile(spread, 99):.2f}, max "
            f"{spread.max():.2f} grey levels")
    return "\n".join([head, "all pixels: " + ranking(spread, error, args.top).describe(args.top),
                      "foreground (ground truth grey > 0): " + ranking(spread[mask], error[mask], args.top).describe(
                          args.top), "per case:", *lines])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report(lambda: measure(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
