"""Build the embedded default tri-modal (MR-T1, MR-T2, SPECT) brain dataset offline from nilearn's MNI152 templates.

Source: the MNI152 ICBM 2009a 1 mm templates shipped inside the nilearn wheel (T1, grey-matter and white-matter
probability maps, brain mask); nothing is downloaded. Every usable axial slice is one case ``mni_zNNN``.

Per slice (volumes in display orientation: anterior up, subject's left on the left):

* **MR-T1**: the T1 template scaled so the 99.5th percentile of brain voxels maps to 255, clipped, 8-bit grey.
* **MR-T2** (synthetic): ``CSF = clip(mask - GM - WM, 0, 1)``,
  ``T2 = 1.0 CSF + 0.5 GM + 0.28 WM`` smoothed by a 3-D Gaussian (sigma 0.6 mm), times 255, clipped, 8-bit grey.
* **SPECT** (synthetic perfusion): ``P = 1.0 GM + 0.2 WM`` (CSF 0) blurred by a 3-D Gaussian of FWHM 8 mm,
  scaled so its brain 99.5th percentile is 0.9; per case 1-3 lesions ``P *= 1 + a exp(-d^2 / (2 s^2))`` with sign,
  centre (a brain pixel), ``s`` in 5..12 mm and ``|a|`` (hypo 0.5..0.9, hyper 0.3..0.6) drawn from
  ``numpy.random.default_rng([seed, slice_index])``; clipped to 0..1, rendered with ``cv2.COLORMAP_JET`` faded to
  black below 0.12 (black background, as the Harvard atlas shows SPECT).
* Slices are cropped/padded to one fixed square around the brain (6 mm margin), then resized to ``r_resolution``
  with ``data.resample.resize_bicubic``; slices with < 15 % brain pixels in that square are skipped.
* Ground truth ``hr = fuse("laplacian_ycbcr", [t1, t2, spect])`` on the HR sources; ``(lr, sr)`` per scale from
  ``data.resample.degrade``. Grey modalities are stored as 3-channel grey (R=G=B).

Splits (by slice): the usable slices ordered by z are cut into contiguous slabs
``train | gap | test (16) | gap | val (8) | gap | train`` with the test+val block centred and gaps of 5 slices.
The dataset is written into a temporary sibling folder, marked as the project's (``.tfsdiff-output``,
``core.outputs``) and renamed to ``root`` at the end, so an interrupted build never leaves a half-built ``root``.
Same seed -> byte-identical PNGs.

What may be written (issue 22): ``root`` is built only when it is absent or empty; an existing dataset (one holding
``manifest.json``, marked or built before the marker existed) is checked and reused, and any other non-empty folder
or file is refused, never replaced or deleted. The marker is a hidden file at ``root``; the splits below it are
unchanged and hidden files are ignored when the dataset is read.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

if __package__ in (None, ""):  # run as a script (python data/builders/embedded.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from core.cli import add_debug_arg, run_and_report
from core.outputs import mark_folder
from data.fusion_dataset import DatasetError
from data.fusion_rules import fuse
from data.layout import SPLITS, write_case
from data.resample import resize_bicubic

__all__ = ["FORMAT_VERSION", "MODALITIES", "FUSION_RULE", "build_embedded_dataset", "ensure_embedded_dataset",
           "train_cases", "main"]

FORMAT_VERSION = 1
MODALITIES = ("MR-T1", "MR-T2", "SPECT")
FUSION_RULE = "laplacian_ycbcr"
MANIFEST = "manifest.json"
COMMAND = "data/builders/embedded.py"
MAX_SEED = 2**32 - 1

N_VAL, N_TEST, GAP_SLICES = 8, 16, 5
MIN_BRAIN_FRACTION = 0.15
CROP_MARGIN_MM = 6
T2_WEIGHTS = {"csf": 1.0, "gm": 0.5, "wm": 0.28}
T2_SMOOTH_SIGMA_MM = 0.6
PERFUSION_WEIGHTS = {"gm": 1.0, "wm": 0.2}
SPECT_FWHM_MM = 8.0
SPECT_FADE_BELOW = 0.12
SPECT_PEAK = 0.9


@dataclass(frozen=True)
class _Volumes:
    """Prepared template volumes, (Z, S, S) display orientation, cropped to the brain square."""

    t1: np.ndarray          # uint8 0..255
    t2: np.ndarray          # uint8 0..255
    perfusion: np.ndarray   # float32, ~0..1 (0.9 = brain 99.5th percentile)
    mask: np.ndarray        # bool brain mask


def _to_display(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS voxel array -> (Z, Y, X) with anterior at row 0."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, :])


def _square_crop(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop/zero-pad (Z, H, W) ``volume`` to the square around the brain ``mask`` (+ margin), -> (Z, S, S)."""
    rows, cols = np.nonzero(mask.any(axis=0))
    side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 + 2 * CROP_MARGIN_MM
    r0 = (rows.min() + rows.max() + 1 - side) // 2
    c0 = (cols.min() + cols.max() + 1 - side) // 2
    pad = side
    padded = np.pad(volume, ((0, 0), (pad, pad), (pad, pad)))
    return np.ascontiguousarray(padded[:, r0 + pad:r0 + pad + side, c0 + pad:c0 + pad + side])


def _load_templates() -> dict[str, np.ndarray]:
    """Load the nilearn MNI152 1 mm templates as float32 (X, Y, Z) arrays (offline, shipped with nilearn)."""
    from nilearn import datasets

    loaders = {"t1": datasets.load_mni152_template, "gm": datasets.load_mni152_gm_template,
               "wm": datasets.load_mni152_wm_template, "mask": datasets.load_mni152_brain_mask}
    return {key: np.asarray(load(resolution=1).get_fdata(), dtype=np.float32) for key, load in loaders.items()}


@functools.cache
def _prepared_volumes() -> _Volumes:
    """Load the templates once per process and derive T1, synthetic T2, perfusion and mask (read-only)."""
    raw = _load_templates()
    mask = raw["mask"] > 0.5
    t1 = np.clip(raw["t1"] * (255.0 / np.percentile(raw["t1"][mask], 99.5)), 0, 255)
    csf = np.clip(mask - raw["gm"] - raw["wm"], 0.0, 1.0)
    t2 = T2_WEIGHTS["csf"] * csf + T2_WEIGHTS["gm"] * raw["gm"] + T2_WEIGHTS["wm"] * raw["wm"]
    t2 = np.clip(ndimage.gaussian_filter(t2 * mask, T2_SMOOTH_SIGMA_MM) * 255.0, 0, 255)
    perfusion = PERFUSION_WEIGHTS["gm"] * raw["gm"] + PERFUSION_WEIGHTS["wm"] * raw["wm"]
    perfusion = ndimage.gaussian_filter(perfusion * mask, SPECT_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0))))
    perfusion = perfusion * (SPECT_PEAK / np.percentile(perfusion[mask], 99.5))
    display_mask = _to_display(mask)
    volumes = {
        "t1": np.rint(t1).astype(np.uint8), "t2": np.rint(t2).astype(np.uint8),
        "perfusion": perfusion.astype(np.float32), "mask": mask,
    }
    cropped = {key: _square_crop(_to_display(value), display_mask) for key, value in volumes.items()}
    for array in cropped.values():
        array.setflags(write=False)
    return _Volumes(**cropped)


def _usable_slices(volumes: _Volumes) -> list[int]:
    """Slice indices whose brain fraction in the square is at least MIN_BRAIN_FRACTION, ascending."""
    fractions = volumes.mask.reshape(volumes.mask.shape[0], -1).mean(axis=1)
    return [int(z) for z in np.nonzero(fractions >= MIN_BRAIN_FRACTION)[0]]


def _split_slices(usable: Sequence[int]) -> dict[str, list[int]]:
    """Cut the ordered usable slices into train | gap | test | gap | val | gap | train slabs."""
    block = N_TEST + GAP_SLICES + N_VAL
    if len(usable) < block + 2 * GAP_SLICES + 2:
        raise DatasetError(f"only {len(usable)} usable slices, need at least {block + 2 * GAP_SLICES + 2}")
    start = (len(usable) - block) // 2
    test = list(usable[start:start + N_TEST])
    val = list(usable[start + N_TEST + GAP_SLICES:start + block])
    train = list(usable[:start - GAP_SLICES]) + list(usable[start + block + GAP_SLICES:])
    return {"train": train, "val": val, "test": test}


def _limit_cases(slices: list[int], limit: int | None) -> list[int]:
    """At most ``limit`` slices, evenly spread over the split (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(slices):
        return slices
    picks = np.unique(np.linspace(0, len(slices) - 1, limit).round().astype(int))
    return [slices[i] for i in picks]


def _lesion_field(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative perfusion factor (S, S) float32 with 1-3 Gaussian hypo/hyper-perfused lesions."""
    rows, cols = np.nonzero(mask)
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float32)
    factor = np.ones(mask.shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = int(rng.integers(0, rows.size))
        sigma = rng.uniform(5.0, 12.0)
        amplitude = -rng.uniform(0.5, 0.9) if rng.random() < 0.5 else rng.uniform(0.3, 0.6)
        dist2 = (yy - rows[centre]) ** 2 + (xx - cols[centre]) ** 2
        factor *= 1.0 + amplitude * np.exp(-dist2 / (2.0 * sigma**2))
    return factor


def _render_spect(perfusion: np.ndarray) -> np.ndarray:
    """(S, S) perfusion in 0..1 -> (S, S, 3) uint8 RGB, JET colour map faded to black at low uptake."""
    value = np.clip(perfusion, 0.0, 1.0)
    bgr = cv2.applyColorMap(np.rint(value * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    fade = np.clip(value / SPECT_FADE_BELOW, 0.0, 1.0)[..., None]
    return np.rint(bgr[..., ::-1].astype(np.float32) * fade).astype(np.uint8)


def _hr_sources(volumes: _Volumes, z: int, r_resolution: int, seed: int) -> list[Image.Image]:
    """The three HR source images (RGB PIL, r x r) of slice ``z``: T1, T2, SPECT."""
    rng = np.random.default_rng([seed, z])
    perfusion = volumes.perfusion[z] * _lesion_field(volumes.mask[z], rng)
    grey = [Image.fromarray(volumes.t1[z]), Image.fromarray(volumes.t2[z])]
    sources = [resize_bicubic(img, r_resolution).convert("RGB") for img in grey]
    sources.append(resize_bicubic(Image.fromarray(_render_spect(perfusion)), r_resolution))
    return sources


def _case_id(z: int) -> str:
    """Case id of axial slice ``z``, e.g. ``mni_z083``."""
    return f"mni_z{z:03d}"


def train_cases(r_resolution: int, limit: int | None = None, seed: int = 0) -> Iterator[tuple[str, list[Image.Image]]]:
    """(case id, [MR-T1, MR-T2, SPECT] as r x r RGB PIL images) of the train split, at most ``limit`` evenly
    spread cases, exactly as ``build_embedded_dataset`` makes them (for mixing into other datasets)."""
    volumes = _prepared_volumes()
    for z in _limit_cases(_split_slices(_usable_slices(volumes))["train"], limit):
        yield _case_id(z), _hr_sources(volumes, z, r_resolution, seed)


def _l_resolutions(r_resolution: int, scales: Sequence[int]) -> list[int]:
    """LR sides ``r // s``; every scale must divide ``r_resolution`` and leave at least 1 px."""
    if r_resolution < 8:
        raise DatasetError(f"r_resolution must be at least 8, got {r_resolution}")
    for scale in scales:
        if scale < 1 or r_resolution % scale:
            raise DatasetError(f"scale {scale} does not divide r_resolution {r_resolution}")
    return [r_resolution // scale for scale in scales]


def _manifest(r_resolution: int, scales: Sequence[int], seed: int, limit: int | None,
              splits: dict[str, list[int]]) -> dict[str, object]:
    """The manifest.json content of a build."""
    import nilearn

    return {
        "format_version": FORMAT_VERSION,
        "name": "mni152_embedded",
        "source": "nilearn MNI152 ICBM 2009a templates (T1, GM, WM, brain mask), 1 mm",
        "nilearn_version": nilearn.__version__,
        "modalities": list(MODALITIES),
        "fusion_rule": FUSION_RULE,
        "r_resolution": r_resolution,
        "scales": list(scales),
        "l_resolutions": _l_resolutions(r_resolution, scales),
        "seed": seed,
        "limit": limit,
        "splits": {split: [_case_id(z) for z in splits[split]] for split in SPLITS},
    }


def _check_target(root: Path) -> None:
    """Refuse to build over an existing non-empty ``root``."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; refusing to overwrite it: choose another "
                              "root or remove it yourself")


def build_embedded_dataset(root: str | Path, r_resolution: int, scales: Sequence[int] = (2, 4, 8), seed: int = 0,
                           limit: int | None = None, progress: bool = True) -> Path:
    """Build the dataset at ``root`` (which must not exist or be empty); returns ``root``.

    Writes ``root/{train,val,test}/`` in the layout of ``data.layout`` for every scale plus ``root/manifest.json``.
    ``limit`` keeps at most that many evenly spread cases per split (for tests).
    """
    root = Path(root)
    scales = [int(s) for s in scales]
    l_resolutions = _l_resolutions(r_resolution, scales)
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be a positive integer or None, got {limit}")
    if not 0 <= seed <= MAX_SEED:
        raise DatasetError(f"seed must be 0..{MAX_SEED}, got {seed}")
    _check_target(root)
    volumes = _prepared_volumes()
    splits = {name: _limit_cases(zs, limit) for name, zs in _split_slices(_usable_slices(volumes)).items()}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        jobs = [(split, z) for split in SPLITS for z in splits[split]]
        for split, z in tqdm(jobs, desc=f"embedded dataset {r_resolution}px", disable=not progress):
            sources = _hr_sources(volumes, z, r_resolution, seed)
            target = Image.fromarray(fuse(FUSION_RULE, [np.asarray(img) for img in sources]))
            write_case(tmp / split, _case_id(z), sources, target, l_resolutions)
        manifest = _manifest(r_resolution, scales, seed, limit, splits)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        mark_folder(tmp, COMMAND)
        tmp.chmod(0o755)
        _check_target(root)
        if root.exists():
            root.rmdir()
        os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def _read_manifest(root: Path) -> dict[str, object]:
    """Parse ``root/manifest.json`` with an error naming the file."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}; delete {root} to rebuild it") from error


def ensure_embedded_dataset(root: str | Path, r_resolution: int, scales: Sequence[int] = (2, 4, 8), seed: int = 0,
                            progress: bool = True, limit: int | None = None) -> Path:
    """Return ``root``, building it first when ``root/manifest.json`` is missing.

    Raises DatasetError (an input error) naming ``root`` and the parameter when an existing dataset was built
    differently or its manifest is unreadable.
    """
    root = Path(root)
    if not (root / MANIFEST).is_file():
        try:
            return build_embedded_dataset(root, r_resolution, scales, seed, limit, progress)
        except FileExistsError:
            if not (root / MANIFEST).is_file():
                raise
    manifest = _read_manifest(root)
    wanted = {"format_version": FORMAT_VERSION, "fusion_rule": FUSION_RULE, "r_resolution": r_resolution,
              "scales": [int(s) for s in scales], "seed": seed, "limit": limit}
    for key, value in wanted.items():
        if manifest.get(key) != value:
            raise DatasetError(f"{root}: existing embedded dataset has {key}={manifest.get(key)!r} but {value!r} was "
                             f"requested; delete {root} or use another root")
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data.builders.embedded --root DIR --size 64 --scales 2 4 8 --seed 0 [--limit N]``."""
    parser = argparse.ArgumentParser(description="Build (or verify) the embedded MNI152 tri-modal dataset.")
    parser.add_argument("--root", required=True, help="output folder (created atomically, marked as the project's); "
                        "an existing dataset is checked and reused, any other non-empty folder is refused")
    parser.add_argument("--size", type=int, default=64, help="HR side r_resolution (default 64)")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4, 8], help="SR scales (default 2 4 8)")
    parser.add_argument("--seed", type=int, default=0, help=f"lesion seed, 0..{MAX_SEED} (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per split (tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be 0..{MAX_SEED}, got {args.seed}")
    return run_and_report(
        lambda: ensure_embedded_dataset(args.root, args.size, args.scales, args.seed, not args.quiet, args.limit),
        debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
