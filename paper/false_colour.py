"""False colour (issue 12's target "no colour that is in none of the sources"), as a number.

For one fused image and the three sources its method saw (the ``src1..3`` files of the results layout, i.e. the
bicubic-upsampled inputs): the pixels where every source is grey (the chroma magnitude sqrt((Cb - 128)^2 +
(Cr - 128)^2), BT.601 full range as in ``data.fusion_rules.rgb_to_ycbcr``, is at most ``GREY_TOLERANCE`` grey levels
in each source), and over them the mean chroma magnitude of the fused image, in grey levels of 0..255. It is 0 for
a fused image that is grey wherever its inputs are; the anatomical sources are grey, so these are the pixels where
the functional map is black or absent. A case without such pixels is NaN.

    python -m paper.false_colour FOLDER [FOLDER ...]   # results folders (<id>_fused.png, <id>_src{1,2,3}.png)

prints, for each folder, its cases and the mean and largest false colour over them. A folder without fused images,
a case with a missing or unreadable source, or a case whose fused image and sources differ in size is an error
naming the case and its files (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.cli import UsageError, add_debug_arg, run_and_report
from core.results_layout import fused_case_ids, result_path
from data.fusion_rules import rgb_to_ycbcr
from data.images import read_image

GREY_TOLERANCE = 4.0


def chroma_magnitude(rgb: np.ndarray) -> np.ndarray:
    """(H, W) chroma magnitude, in grey levels, of an (H, W, 3) RGB image in 0..255."""
    ycc = rgb_to_ycbcr(rgb).astype(np.float64)
    return np.hypot(ycc[..., 1] - 128.0, ycc[..., 2] - 128.0)


def false_colour(fused: np.ndarray, sources: Sequence[np.ndarray]) -> float:
    """Mean chroma magnitude of ``fused`` where every source is grey (NaN when no pixel is)."""
    grey = np.logical_and.reduce([chroma_magnitude(s) <= GREY_TOLERANCE for s in sources])
    if not grey.any():
        return float("nan")
    return float(chroma_magnitude(fused)[grey].mean())


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def case_false_colour(folder: Path, case: str, read: Callable[[Path], np.ndarray]) -> float:
    """:func:`false_colour` of one case of a results folder; UsageError naming the case and the files when the
    fused image and its sources differ in size."""
    paths = [result_path(folder, case, kind) for kind in ("fused", "src1", "src2", "src3")]
    images = [read(path) for path in paths]
    if len({image.shape for image in images}) > 1:
        sizes = ", ".join(f"{path.name} {_size(image)}" for path, image in zip(paths, images))
        raise UsageError(f"case {case} of {folder}: the fused image and its sources differ in size ({sizes}): "
                         "they must have one size, as infer.py writes them; re-run the fusion of that case")
    return false_colour(images[0], images[1:])


def folder_false_colour(folder: Path, ids: Sequence[str], read: Callable[[Path], np.ndarray]) -> dict[str, float]:
    """case id -> :func:`false_colour` of one method's results folder."""
    return {case: case_false_colour(folder, case, read) for case in ids}


def report(folders: Sequence[Path]) -> str:
    """One Markdown table line per folder: cases, mean and largest false colour (NaN cases left out)."""
    lines = ["| folder | cases | mean false colour | largest |", "|---|---|---|---|"]
    for folder in folders:
        ids = sorted(fused_case_ids(folder))
        if not ids:
            raise UsageError(f"{folder}: no <id>_fused.png files (expected a results folder of eval.py's layout)")
        values = np.array(list(folder_false_colour(folder, ids, read_image).values()))
        finite = values[np.isfinite(values)]
        cells = (f"{finite.mean():.2f} | {finite.max():.2f}" if finite.size else "n/a | n/a")
        lines.append(f"| {folder} | {len(ids)} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="results folders of fused images and their sources")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    return run_and_report(lambda: report(args.folders), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
