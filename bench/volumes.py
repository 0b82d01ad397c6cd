"""Volume fusion: wall time and peak memory of the shipped x4 model on an MNI152 T1 / T2-like / PET-like triplet.

    python -m bench.volumes [--device cpu] [--threads N] [--cases x4 grid large]

The triplet: 99 x 117 x 95 voxels of 2 mm (RAS+), built from nilearn's MNI152 templates at resolution 2 (shipped
inside the nilearn wheel; nothing is downloaded), as the embedded dataset builds its 1 mm slices
(``data/builders/embedded.py``; the same constants):

* **T1**: the T1 template (``load_mni152_template``), as it is.
* **T2-like**: ``CSF = clip(mask - GM - WM, 0, 1)``, ``1.0 CSF + 0.5 GM + 0.28 WM`` inside the brain mask, smoothed by
  a Gaussian of sigma 0.6 mm (CSF bright, white matter dark), from the grey- and white-matter probability maps and
  the brain mask.
* **PET-like**: perfusion ``1.0 GM + 0.2 WM`` inside the mask, smoothed by a Gaussian of FWHM 8 mm: a grey volume,
  rendered in the Harvard PET colour map when fused (``--colour-map harvard_pet``, on the third input).

They are written as float32 NIfTI files to a temporary folder and fused as ``infer.py -c config/demo_x4_64_256.json
--inputs t1.nii.gz t2.nii.gz pet.nii.gz --out fused.nii.gz --colour-map harvard_pet`` fuses them, through the same
functions (``data.volume_io``: read, window, slice axially, colour; ``model.volume_fusion.fuse_slices`` with the
default slices per batch of the device; the RGB24 NIfTI bytes), with the config's sampler (2 respaced steps):

* ``x4``: at the model's scale, 468 x 396 slices (H x W) in-plane, 396 x 468 x 95 voxels of 0.5 x 0.5 x 2 mm;
* ``grid``: on the input grid (``--out-size 117 99``), 99 x 117 x 95 voxels;
* ``large``: one 2048 x 2048 triplet (the middle axial slices, windowed, zero-padded to a square and enlarged
  bicubically) fused on its own grid in tiles of 512 overlapping by 64 (``model.tiling``; what ``infer.py`` chooses
  when the whole image does not fit in free memory, as in 4 GB), as ``infer.py --inputs ... --out-size 2048 2048``.

``--bf16`` turns on the per-step speed switches ``channels_last`` and bf16 ``autocast`` (``performance`` in a config,
docs/speed.md), which change the fused values slightly.

Time: wall clock from reading the files to the NIfTI bytes (the large case: of ``Fuser.fuse``), model loading
excluded and printed apart, and the CPU time of the process in that span (all its threads: on a machine shared with
other jobs, the CPU time of a one-thread run is about what the run takes alone). Memory:
``bench.measure.peak_memory`` (growth of the resident set during the call) and the process's peak resident set
during the call (the model, the inputs and Python included). It writes no file.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from bench.measure import machine_info, peak_memory
from core.cli import EXIT_OK, UsageError, add_debug_arg, checkpoint_to_load, run_command
from core.config import load_config
from data.builders.embedded import PERFUSION_WEIGHTS, SPECT_FWHM_MM, T2_SMOOTH_SIGMA_MM, T2_WEIGHTS
from data.fusion_dataset import FusionBatch
from data.images import pad_to_square, to_tensor
from data.resample import resize_bicubic
from data.volume_io import SlicedVolumes, fused_nifti, nifti_bytes, on_one_grid, read_volume, slice_volumes
from model.fuser import Fuser
from model.tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIDE, Tiling
from model.volume_fusion import default_batch_slices, fuse_slices

CONFIG = "config/demo_x4_64_256.json"
COLOUR_MAP = "harvard_pet"
LARGE_SIDE = 2048
CASES = ("x4", "grid", "large")
TARGETS_S = {"x4": 180.0, "grid": 60.0}  # issue 23: x4 in at most 3 min, the input grid in at most 1 min (2-core CPU)
MEMORY_TARGET_BYTES = 4 * 2**30


def mni_triplet(folder: Path) -> list[Path]:
    """Write the T1, T2-like and PET-like volumes (module docstring) as float32 NIfTI files into `folder`."""
    import nibabel as nib
    from nilearn import datasets

    loaders = {"t1": datasets.load_mni152_template, "gm": datasets.load_mni152_gm_template,
               "wm": datasets.load_mni152_wm_template, "mask": datasets.load_mni152_brain_mask}
    images = {key: load(resolution=2) for key, load in loaders.items()}
    raw = {key: np.asarray(img.get_fdata(), dtype=np.float32) for key, img in images.items()}
    mask = raw["mask"] > 0.5
    voxel = float(nib.affines.voxel_sizes(images["t1"].affine)[0])
    csf = np.clip(mask - raw["gm"] - raw["wm"], 0.0, 1.0)
    t2 = T2_WEIGHTS["csf"] * csf + T2_WEIGHTS["gm"] * raw["gm"] + T2_WEIGHTS["wm"] * raw["wm"]
    t2 = ndimage.gaussian_filter(t2 * mask, T2_SMOOTH_SIGMA_MM / voxel)
    pet = PERFUSION_WEIGHTS["gm"] * raw["gm"] + PERFUSION_WEIGHTS["wm"] * raw["wm"]
    pet = ndimage.gaussian_filter(pet * mask, SPECT_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel)
    paths = []
    for name, data in (("t1", raw["t1"]), ("t2", t2), ("pet", pet)):
        paths.append(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), images["t1"].affine), str(paths[-1]))
    return paths


@dataclass(frozen=True)
class Measured:
    """One call: its result, wall and CPU seconds, memory growth during it and the process's peak resident set."""

    result: Any
    seconds: float
    cpu_seconds: float
    growth: int | None
    peak_rss: int


def _measure(fn: Callable[[], object], device: torch.device) -> Measured:
    """Call `fn` once inside `bench.measure.peak_memory`, timed."""
    box: list[object] = []
    start, cpu = time.perf_counter(), time.process_time()
    reading = peak_memory(lambda: box.append(fn()), device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # reset with VmHWM by peak_memory
    return Measured(box[0], seconds, cpu_seconds, reading.peak_bytes, peak_rss)


def _fuse_volume(fuser: Fuser, paths: list[Path], on_grid: bool,
                 progress: bool) -> tuple[SlicedVolumes, tuple[int, int], bytes, int]:
    """Fuse the triplet as infer.py's volume mode does: (slices, fused in-plane size, NIfTI bytes, empty slices)."""
    volumes, _ = on_one_grid([read_volume(str(p)) for p in paths], None)
    sliced = slice_volumes(volumes, "axial", COLOUR_MAP, 3)
    height, width = sliced.geometry.slice_hw
    scale = fuser.cfg.datasets.train.r_resolution // fuser.cfg.datasets.train.l_resolution
    size = (height, width) if on_grid else (height * scale, width * scale)
    result = fuse_slices(sliced, size, fuser=fuser, batch=default_batch_slices(fuser.device), progress=progress)
    image = fused_nifti(sliced.geometry, result.images, False, volumes[0].header, "bench.volumes")
    return sliced, size, nifti_bytes(image, Path("fused.nii.gz")), len(result.empty)


def _large_sources(paths: list[Path]) -> list[np.ndarray]:
    """The middle axial slices of the triplet (windowed; PET in its colour map), padded square, enlarged to 2048."""
    sliced = slice_volumes([read_volume(str(p)) for p in paths], "axial", COLOUR_MAP, 3)
    sources = sliced.sources(len(sliced) // 2)
    return [np.asarray(resize_bicubic(Image.fromarray(pad_to_square(src)), LARGE_SIDE)) for src in sources]


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def measure(args: argparse.Namespace) -> int:
    """Print the setup, then one table row per case as soon as it is measured (a long run shows its progress)."""
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: expected at least 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(CONFIG)
    if args.bf16:
        cfg = dataclasses.replace(cfg, performance=dataclasses.replace(cfg.performance, channels_last=True,
                                                                       autocast="bf16"))
    start = time.perf_counter()
    fuser = Fuser.from_checkpoint(cfg, checkpoint_to_load(None, cfg, for_training=False), device=device)
    loading = time.perf_counter() - start
    info = machine_info(device)
    sampler = cfg.model.sampler
    for line in (f"machine: {info}",
                 f"model: {CONFIG} (shipped x4 weights), sampler {sampler.type} {sampler.steps} steps from step "
                 f"{sampler.start_step}, loaded in {loading:.1f} s; slices per batch {default_batch_slices(device)}; "
                 f"performance {dataclasses.asdict(cfg.performance)}",
                 "", "| case | fused size | slices (empty) | wall time | per fused slice | target | CPU time | peak "
                 "memory growth | process peak resident set |", "|---|---|---|---|---|---|---|---|---|"):
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="tfsdiff_bench_volumes_") as tmp:
        paths = mni_triplet(Path(tmp))
        for case in args.cases:
            if case == "large":
                sources = _large_sources(paths)
                fuser.tiling = Tiling(DEFAULT_TILE_SIDE, DEFAULT_TILE_OVERLAP)
                batch = FusionBatch(*(to_tensor(src)[None] for src in sources), target=None, case_ids=("large",))
                run = _measure(lambda: fuser.fuse(batch, progress=not args.no_progress), device)
                fuser.tiling = None
                size = f"{LARGE_SIDE}x{LARGE_SIDE} (tiles {DEFAULT_TILE_SIDE}/{DEFAULT_TILE_OVERLAP})"
                slices, per_slice = "1 (0)", run.seconds
            else:
                run = _measure(lambda: _fuse_volume(fuser, paths, case == "grid", not args.no_progress), device)
                sliced, fused_hw, data, empty = run.result
                size = f"{fused_hw[0]}x{fused_hw[1]} x {len(sliced)} slices ({len(data) / 2**20:.1f} MiB .nii.gz)"
                slices, per_slice = f"{len(sliced)} ({empty})", run.seconds / max(1, len(sliced) - empty)
            target = TARGETS_S.get(case)
            verdict = "" if target is None else f"<= {target:.0f} s: {'met' if run.seconds <= target else 'not met'}"
            memory = _mib(run.peak_rss) + ("" if run.peak_rss <= MEMORY_TARGET_BYTES else " (over 4 GiB)")
            print(f"| {case} | {size} | {slices} | {run.seconds:.1f} s | {per_slice:.2f} s | {verdict} | "
                  f"{run.cpu_seconds:.1f} s | {_mib(run.growth)} | {memory} |", flush=True)
    return EXIT_OK


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="what to measure (default all: x4, grid, large)")
    parser.add_argument("--bf16", action="store_true", help="the per-step speed switches channels_last and bf16 "
                        "autocast (performance in the config, docs/speed.md; results differ slightly)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_debug_arg(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: measure(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
