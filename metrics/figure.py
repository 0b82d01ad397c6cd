"""The qualitative comparison figure (like the paper's Fig. 2) as one PNG, from result folders.

Rows: one per (scale, case); columns: the three inputs (`<id>_src{1,2,3}.png` of the first method folder), the
fused image of every method (`<id>_fused.png`), the uncertainty map of every method whose folders hold one for every
shown case (`<id>_uncertainty.png`, from `infer.py --samples K --uncertainty`; brighter is more uncertain, value / 16
grey levels of spread), and the ground truth (`<id>_hr.png` of the first method folder, when every shown case has
one). Tiles are enlarged by an integer factor with nearest-neighbour sampling (no
invented detail) so that the shorter tile side is at least 128 px; a header row names the columns and a left
column names the rows. A method missing at some scale gets a grey tile. Images are read with the reader the caller
passes (``eval.py`` passes ``data.images.read_image``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.results_layout import ImageReader, result_path
from metrics.tables import display_name

MIN_TILE = 128
GAP = 4
HEADER = 30
LABEL_WIDTH = 120
MISSING_GREY = 96


@dataclass(frozen=True)
class FigureSection:
    """The method folders of one scale, in column order; ``scale`` is e.g. ``x4`` or ""."""

    scale: str
    methods: tuple[tuple[str, Path], ...]


def _short_name(method: str) -> str:
    return display_name(method).removeprefix("Bicubic + ")


def _columns(sections: Sequence[FigureSection], case_ids: Sequence[str]) -> tuple[list[str], bool]:
    """(method names in column order over all sections, whether a ground-truth column is shown)."""
    names: list[str] = []
    for section in sections:
        names += [name for name, _ in section.methods if name not in names]
    with_gt = all(result_path(s.methods[0][1], case, "hr").is_file() for s in sections for case in case_ids)
    return names, with_gt


def _uncertainty_columns(sections: Sequence[FigureSection], case_ids: Sequence[str], names: list[str]) -> list[str]:
    """The methods (of `names`) whose every folder holds an uncertainty map for every shown case."""
    return [name for name in names
            if all(result_path(folder, case, "uncertainty").is_file() for s in sections
                   for method, folder in s.methods if method == name for case in case_ids)]


def _row_tiles(section: FigureSection, case_id: str, names: list[str], with_gt: bool,
               shape: tuple[int, int, int], read: ImageReader, uncertain: Sequence[str] = ()) -> list[np.ndarray]:
    first = section.methods[0][1]
    folders = dict(section.methods)
    tiles = [read(result_path(first, case_id, f"src{k}")) for k in (1, 2, 3)]
    tiles += [read(result_path(folders[n], case_id, "fused")) if n in folders
              else np.full(shape, MISSING_GREY, np.uint8) for n in names]
    tiles += [read(result_path(folders[n], case_id, "uncertainty")) if n in folders
              else np.full(shape, MISSING_GREY, np.uint8) for n in uncertain]
    if with_gt:
        tiles.append(read(result_path(first, case_id, "hr")))
    return tiles


def _enlarge(tile: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(tile).resize(size, resample=Image.Resampling.NEAREST)


def comparison_figure(sections: Sequence[FigureSection], case_ids: Sequence[str], out: Path,
                      read: ImageReader) -> Path:
    """Write the figure for ``case_ids`` (present in every method folder) to ``out`` (PNG); returns ``out``.

    ``read`` reads one image file of the results layout as an (H, W, 3) uint8 array.
    """
    if not sections or not case_ids:
        raise ValueError("the comparison figure needs at least one method folder and one case")
    names, with_gt = _columns(sections, case_ids)
    uncertain = _uncertainty_columns(sections, case_ids, names)
    first_tile = read(result_path(sections[0].methods[0][1], case_ids[0], "src1"))
    height, width = first_tile.shape[:2]
    factor = max(1, -(-MIN_TILE // min(height, width)))
    tile_w, tile_h = width * factor, height * factor
    labels = ["Input 1", "Input 2", "Input 3", *(_short_name(n) for n in names),
              *(f"{_short_name(n)} spread" for n in uncertain)] + (["Ground truth"] if with_gt else [])
    rows = [(s, case) for s in sections for case in case_ids]
    canvas = Image.new("RGB", (LABEL_WIDTH + len(labels) * (tile_w + GAP), HEADER + len(rows) * (tile_h + GAP)),
                       "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for col, label in enumerate(labels):
        draw.text((LABEL_WIDTH + col * (tile_w + GAP) + 4, 8), label, fill="black", font=font)
    for r, (section, case_id) in enumerate(rows):
        top = HEADER + r * (tile_h + GAP)
        row_label = f"{section.scale} {case_id}".strip()
        draw.text((4, top + tile_h // 2 - 6), row_label, fill="black", font=font)
        for col, tile in enumerate(_row_tiles(section, case_id, names, with_gt, first_tile.shape, read, uncertain)):
            canvas.paste(_enlarge(tile, (tile_w, tile_h)), (LABEL_WIDTH + col * (tile_w + GAP), top))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
