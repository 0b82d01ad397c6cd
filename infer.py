"""Fuse with a trained TFS-Diff model (or a classical rule) over a data split or one case; write images by case id.

    python infer.py -c CONFIG [--checkpoint PATH] [--split test|val] [--out DIR] [--process] [--overwrite]
    python infer.py -c CONFIG [--checkpoint PATH] --sampler ddim --steps 50   # a fast sampler instead of model.sampler
    python infer.py -c CONFIG --method average|maximum|laplacian_ycbcr|pca|dwt [--split test|val] [--out DIR]
    python infer.py -c CONFIG --method ifcnn|prrgan|matr|mufusion --peer-dir DIR ...   # a published method
    python infer.py -c CONFIG --method sr3+NAME [--sr3-checkpoint PATH] [--sr3-config FILE] ...   # SR3, then NAME
    python infer.py -c CONFIG --checkpoint PATH --inputs T1.png T2.png SPECT.png --out fused.png [--process]
    python infer.py -c CONFIG --input-dir SCANS --out OUT [--method M] [--out-size H W]   # every case of a folder
    python infer.py -c CONFIG --inputs ... --out fused.png --samples 4 --uncertainty [U.png]   # + uncertainty map
    python infer.py -c CONFIG --inputs ... --out fused.png --tile 512 [--tile-overlap 64]   # sample tile by tile
    python infer.py -c CONFIG --inputs T1.png T2.png PET.png --out fused.png --colour-map harvard_pet   # grey PET
    python infer.py -c CONFIG --inputs T1.nii.gz T2.nii.gz PET.nii.gz --out fused.nii.gz [--method M]   # volumes
        [--slice-axis axial|coronal|sagittal] [--out-size H W] [--resample-to first] [--grey]
        [--colour-map harvard_pet] [--samples 4 --uncertainty U.nii.gz] [--batch-slices N]   (DICOM: a folder each)
    add --debug to any of them for the traceback of an error

Split mode writes, per case id, `<id>_fused.png`, `<id>_src{1,2,3}.png` (the bicubic-upsampled inputs of the
dataset), `<id>_hr.png` (when the split has a ground truth) and, with --process, `<id>_process.png` (the
denoising-process strip) into `results/<config name>/<split>/<method>/`, or `DIR/<method>/` with `--out DIR` (method
`tfsdiff` for the model), so that every method keeps its own folder for `eval.py`. The model is a
`model.fuser.Fuser` (weights only: no optimiser) and runs through `model.evaluation.evaluate_model`, the path `sr.py`
validation uses, with the config's val noise schedule, its sampler (`model.sampler`), the sampling (EMA) weights and
a generator seeded with the config's seed; single-case mode calls the same `Fuser.fuse`.
Without --checkpoint the weights are the config's `path.resume_state`, else its released weights `path.pretrained`
(for config/demo.json: the shipped demo model in pretrained/).
A `--method` rule from `data.fusion_rules` fuses the same bicubic-upsampled inputs, so the baselines are scored
on exactly the model's inputs; so does a published method of `model.peers` (IFCNN, PRRGAN, MATR, MUFusion, ...),
with its authors' weights from `--peer-dir` (a clone of their repository; size and SHA-256 are checked).
`--method sr3+NAME` is the paper's sequential baseline (`model.sr3`): an SR3 model (`--sr3-config`, default
config/sr3_x{s}_{l}_{r}.json of the config's scale; weights `--sr3-checkpoint`, default that config's
pretrained/sr3_x{s}_{l}_{r}.pth) super-resolves the three bicubic inputs of each case, seeded, then NAME fuses them;
`<id>_src{1,2,3}.png` stay the bicubic inputs, the reference every row shares.

Single-case mode (--inputs, three registered images of one size, any size and aspect ratio, grey or colour): the
three images are the low-resolution sources. Each is converted to RGB and upsampled with
`data.resample.resize_bicubic` to the output size, which is the inputs' size times the model's scale
(`datasets.train.r_resolution / l_resolution`: 64x64 in gives 256x256 out for a x4 model), or `--out-size H W`.
Every size infer.py prints is HxW (height x width), the order of `--out-size`. An `--out-size` whose aspect ratio
(width / height) differs from the inputs' by more than 1 % stretches the sources; infer.py warns, naming both ratios.
The model then fuses at that size (fully convolutional; sizes that are not a multiple of the U-Net's downsampling
factor are padded by reflection and cropped back, never distorted). With `--out-size` equal to the inputs' size,
sources that are already high-resolution are fused without super-resolution, but the model still treats them as
bicubic-upsampled inputs and adds the detail it learned to restore, which sharpens them beyond the originals.
With --method the rule fuses the same upsampled sources (bicubic-then-fuse). With --process the strip is written
next to the output as `<out stem>_process.png`. Single-case mode writes only those images, which `eval.py` cannot
score (it needs the sources beside the fused image): to score your own cases, use folder mode.

Folder mode (--input-dir DIR --out OUT): every case of DIR, its files named `<case>_<k>_<anything>.<ext>` with
k = 1, 2, 3 (e.g. `case01_1_CT.png`, `case01_2_MR-T2.png`, `case01_3_SPECT-Tc.png`; the last `_1`/`_2`/`_3` that is
followed by `_` or ends the name splits case and k; hidden files are ignored, other files skipped with a warning),
is fused as single-case mode fuses it (same sizes and --out-size, same seed, so the same image), with the model
loaded once and a progress bar over the cases. A case without exactly one file for each k is an error naming the
case and its files, before anything is read or written. OUT gets the results layout (`core.results_layout`):
`OUT/<case>_{src1,src2,src3,fused}.png` (the sources as the method saw them, upsampled), `<case>_process.png` with
--process, `<case>_uncertainty.png` with --uncertainty, so that `python eval.py OUT --reference sources` scores
them. The log gives the seconds per case after loading.

Colour maps (--colour-map NAME, a Harvard map of `data.colour_maps`): the --colour-source'th input (default the
third, the functional one), which must be grey, is rendered in that pseudo-colour map (grey level g -> the map's
colour of activity g / 255), as the model saw functional scans in training; --inputs images, --input-dir and volumes.

Volume mode (--inputs of three registered NIfTI volumes, .nii or .nii.gz, or folders each holding one DICOM series;
--out X.nii.gz or X.nii): the volumes must share one voxel grid (shape and affine within
`data.builders.volumes.AFFINE_ATOL`; --resample-to first resamples the second and third onto the first's), are each
windowed to uint8 (0.5 / 99.5 percentiles of the non-zero voxels, as `prepare_data.py volumes`), reoriented to the
closest RAS+ orientation and cut along --slice-axis (default axial) into slices shown anterior / superior up. Every
slice is fused as single-case mode fuses an image (the model in batches of --batch-slices slices with one seeded
generator for the volume, or --method slice by slice; --out-size H W is the fused in-plane size, default the slices'
size times the scale; --tile and the memory check as for an image); slices whose three sources are all zero are not
fused and stay 0. The output is one NIfTI volume over the first input's field of view, in its original orientation:
RGB24, or uint8 luminance with --grey; `X.json` beside it records the windows, the slice axis, the method, the config
and the sampler; --uncertainty [U.nii.gz] writes the spread as float32 grey levels on the same grid. `data.volume_io`,
`data.dicom`, `model.volume_fusion`; docs/usage.md, "Volumes".

Uncertainty (--samples K --uncertainty, K >= 2, the model only): the fused image stays the mean of the K samples,
exactly as without --uncertainty; the map is, per pixel, the standard deviation over the K samples (root of the
mean squared deviation) of the luminance 0.299 R + 0.587 G + 0.114 B, in grey levels 0..255, of each sample's own
fused image (base + sample / scale, clipped, as a one-sample run gives it), saved as a grey 8-bit PNG with value =
min(255, round(16 * std)): value / 16 is the spread in grey levels, 255 means 15.94 or more
(`core.results_layout.uncertainty_image`). It is written to `--uncertainty FILE.png`, by default
`<out stem>_uncertainty.png`, in folder mode to `OUT/<case>_uncertainty.png`. How well it ranks the errors:
`python -m paper.uncertainty` (docs/usage.md, "Uncertainty").

Memory: before loading, infer.py estimates the memory a case needs (`needed_bytes`). A model image that does not
fit in free memory is sampled tile by tile (`model.tiling`: tiles of 512 overlapping by 64, their eps predictions
blended at every step, the seeded noise drawn for the whole image) when the tiles fit, and refused when even they do
not; `--tile SIDE [--tile-overlap PX]` tiles always (also in split mode). An image that fits is sampled whole, bit for
bit as before.

Results are written under a temporary name and renamed into place when complete, so a failed run leaves no partial
output (single-case mode publishes its images together or none, `core.outputs.publish_files`). No output is an
input, lies in an input folder (--input-dir, a split's dataroot) or contains one. An existing result (a non-empty
method or --out folder, or a single-case output file) is replaced only with --overwrite, and only when the project
wrote it (`core.outputs`: a folder with the `.tfsdiff-output` marker, a file in the `.tfsdiff-written.json` ledger).

Exit status (`core.cli.run_command`): 0 success; 2 for a usage or input error (config, missing or unreadable
checkpoint, missing or unreadable image, images too small, an existing result without --overwrite, an unusable
path); 1 for a failure while running (disk full, anything unexpected). --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.cli import UsageError, add_debug_arg, add_sampler_args, apply_sampler_args, checkpoint_to_load, \
    naming_path, run_command
from core.config import TFSDiffConfig, load_config
from core.device import free_memory_bytes, select_device
from core.logger import setup_logger
from core.outputs import check_apart, check_file_target, check_folder_target, is_project_folder, publish_files, \
    publish_folder, resolved
from core.registry import FUSION_METHODS
from core.results_layout import UNCERTAINTY_SCALE, uncertainty_image, write_case
from data.builders.volumes import AXES, NIFTI_EXTENSIONS
from data.colour_maps import COLOUR_MAPS, colourise
from data.fusion_dataset import FusionBatch
from data.images import IMAGE_EXTENSIONS, read_image, to_tensor
from data.loader import dataset_from_config, ensure_config_data
from data.resample import resize_bicubic
from data.volume_io import beside, fused_nifti, is_nifti_name, is_volume_input, nifti_bytes, on_one_grid, \
    read_volume, sidecar_path, sidecar_record, slice_volumes, spread_nifti
from model.evaluation import evaluate_model, fuse_with_rule, method_fuser
from model.fuser import FusedBatch, Fuser
from model.sr3 import fusion_method_of, load_sequential, sequential_names
from model.tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIDE, Tiling
from model.volume_fusion import default_batch_slices, fuse_slices, slices_per_batch, volume_bytes

MODEL_METHOD = "tfsdiff"
MIN_OUTPUT_SIDE = 8  # the fusion rules' smallest side (data.fusion_rules), and at least one U-Net block
BYTES_PER_PIXEL_RULE = 400  # float64 RGB images, YCbCr planes and pyramids of three sources
BYTES_PER_PIXEL_PER_CHANNEL = 128  # network activations per output pixel and inner channel (3.0 KB measured at 32)
BYTES_PER_PIXEL_TILED = 256  # what stays whole-image when tiled: condition, x, eps, noise, base, bounds, result
HXW = "height x width"  # every size in a message is HxW, the order of --out-size H W
ASPECT_TOLERANCE = 0.01  # --out-size changing width/height by more than this fraction draws a warning
# a case file of --input-dir: <case>_<k>[_<anything>].<ext>; the last _1/_2/_3 followed by _ or the end splits it
CASE_FILE = re.compile(r"(?P<case>.+)_(?P<k>[123])(?:_.*)?")
log = logging.getLogger("tfsdiff")


class InputError(UsageError):
    """A user-supplied file, option or config entry is missing or unusable (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="JSON config file (// comments allowed)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the config's path.resume_state, else its "
                                             "released weights path.pretrained)")
    parser.add_argument("--method", default=MODEL_METHOD,
                        choices=(MODEL_METHOD, *sorted(FUSION_METHODS.names()), *sorted(sequential_names())),
                        help="the model (default), a classical fusion rule or a published method (ifcnn, prrgan, "
                             "matr, mufusion, ...; needs --peer-dir) applied to the bicubic inputs; sr3+NAME: SR3 "
                             "super-resolves the three inputs, then NAME fuses them")
    parser.add_argument("--sr3-checkpoint", metavar="PATH", help="--method sr3+NAME: the SR3 weights (default: the "
                        "SR3 config's path.pretrained, pretrained/sr3_x<s>_<l>_<r>.pth)")
    parser.add_argument("--sr3-config", metavar="FILE", help="--method sr3+NAME: the SR3 config, its network, "
                        "sampler and seed (default: config/sr3_x<s>_<l>_<r>.json of the config's scale)")
    parser.add_argument("--peer-dir", help="a published method's weights: a clone of its authors' repository, or a "
                                           "folder holding the weight file at the same relative path")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="data split of the config")
    parser.add_argument("--inputs", nargs=3, metavar=("SRC1", "SRC2", "SRC3"),
                        help="fuse one case from three image files instead of a split (needs --out FILE); three "
                             "NIfTI volumes or DICOM series folders: volume mode (--out X.nii.gz)")
    parser.add_argument("--input-dir", metavar="DIR",
                        help="fuse every case of DIR, its files named <case>_<k>_<anything>.<ext> with k = 1, 2, 3 "
                             "(needs --out FOLDER, which gets the results layout)")
    parser.add_argument("--out", help="output folder (split and folder mode), output image file (single-case mode) "
                                      "or NIfTI file (volume mode)")
    parser.add_argument("--out-size", nargs=2, type=int, metavar=("H", "W"),
                        help="--inputs/--input-dir: height and width of the fused image (default: the inputs' size "
                             "times the scale; volumes: of the fused slices); a changed aspect ratio is warned about")
    parser.add_argument("--process", action="store_true", help="also write the denoising-process strip")
    parser.add_argument("--uncertainty", nargs="?", const="", metavar="FILE.png",
                        help="with --samples K (K >= 2): also write the uncertainty map, a grey PNG whose value per "
                             "pixel is min(255, round(%d * s)), s the standard deviation over the K samples "
                             "(root of the mean squared deviation) of the luminance 0.299 R + 0.587 G + 0.114 B of "
                             "each sample's fused image in grey levels 0..255 (so value / %d = s; 255 = s >= %.2f). "
                             "--inputs: to FILE.png (default "
                             "<out stem>_uncertainty.png); --input-dir: to OUT/<case>_uncertainty.png; volumes: "
                             "the spread s itself as float32 NIfTI, to FILE.nii.gz (default "
                             "<out stem>_uncertainty.nii.gz)"
                             % (UNCERTAINTY_SCALE, UNCERTAINTY_SCALE, 255 / UNCERTAINTY_SCALE))
    parser.add_argument("--tile", type=int, metavar="SIDE",
                        help="sample the model tile by tile, SIDE x SIDE pixels (blended per step, model.tiling); "
                             f"default: whole images, or tiles of {DEFAULT_TILE_SIDE} when an image does not fit "
                             "in free memory but a tile does")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, metavar="PX",
                        help=f"overlap of neighbouring tiles in pixels (default {DEFAULT_TILE_OVERLAP})")
    parser.add_argument("--colour-map", choices=sorted(COLOUR_MAPS),
                        help="render a grey functional input (the --colour-source'th, default the third) in this "
                             "Harvard pseudo-colour map, as the model saw such scans in training (images and volumes)")
    parser.add_argument("--colour-source", type=int, choices=(1, 2, 3),
                        help="--colour-map: which input (1, 2 or 3) to render (default 3)")
    volumes = parser.add_argument_group("volumes (--inputs of three NIfTI files or DICOM series folders, --out "
                                        "X.nii.gz; see Volume mode above)")
    volumes.add_argument("--slice-axis", choices=sorted(AXES, key=AXES.get, reverse=True),
                         help="fuse slice by slice along this axis of the closest RAS+ orientation (default axial)")
    volumes.add_argument("--resample-to", choices=("first",),
                         help="resample the second and third volumes onto the first's voxel grid (cubic spline) "
                              "when the grids differ (default: an error)")
    volumes.add_argument("--grey", action="store_true",
                         help="write the fused volume as uint8 luminance 0.299 R + 0.587 G + 0.114 B instead of RGB24")
    volumes.add_argument("--batch-slices", type=int, metavar="N",
                         help="the model: slices per network batch (default 1 on a CPU, 8 on a GPU; fewer when N do "
                              "not fit in free memory)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing result (method folder or output file) once the new one is done")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_sampler_args(parser)
    add_debug_arg(parser)
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    fusion = fusion_method_of(args.method) or args.method
    if args.peer_dir and (args.method == MODEL_METHOD or not FUSION_METHODS.get(fusion).needs_weights):
        raise InputError(f"--peer-dir is for a published method with weights; {args.method!r} has none")
    if (args.sr3_checkpoint or args.sr3_config) and fusion == args.method:
        raise InputError(f"--sr3-checkpoint and --sr3-config are for --method sr3+NAME, not {args.method!r}")
    if args.process and args.method != MODEL_METHOD:
        raise InputError(f"--process needs the model; method {args.method!r} has no denoising process")
    if args.inputs and args.input_dir:
        raise InputError("--inputs fuses one case and --input-dir a folder of cases: give one of them")
    if args.out_size and not (args.inputs or args.input_dir):
        raise InputError("--out-size needs --inputs or --input-dir (split mode runs at the dataset's r_resolution)")
    if args.inputs and not args.out:
        raise InputError("--inputs needs --out FILE (the fused image to write)")
    if args.input_dir and not args.out:
        raise InputError("--input-dir needs --out FOLDER (the results folder to write)")
    if args.colour_source is not None and args.colour_map is None:
        raise InputError("--colour-source picks the input that --colour-map renders: pass --colour-map NAME")
    volumes = bool(args.inputs) and volume_mode(args.inputs)
    if volumes:
        _check_volume_args(args)
    else:
        _check_image_args(args)
    if args.inputs and not volumes and Path(args.out).suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"--out {args.out}: expected an image file name ending in one of "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    if args.tile is not None:
        if args.method != MODEL_METHOD:
            raise InputError(f"--tile is for the model; method {args.method!r} does not sample")
        if not 0 <= args.tile_overlap < args.tile:
            raise InputError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: the overlap must be at least 0 "
                             "and less than the tile side")
    if args.uncertainty is not None:
        if args.method != MODEL_METHOD:
            raise InputError(f"--uncertainty needs the model's samples; method {args.method!r} is deterministic")
        if not (args.inputs or args.input_dir):
            raise InputError("--uncertainty needs --inputs or --input-dir")
        if args.input_dir and args.uncertainty:
            raise InputError("--input-dir writes the maps as OUT/<case>_uncertainty.png: pass --uncertainty without "
                             "a file name")
        if args.uncertainty and not volumes and Path(args.uncertainty).suffix.lower() != ".png":
            raise InputError(f"--uncertainty {args.uncertainty}: expected a .png file name (the map is a grey PNG)")


def volume_mode(inputs: list[str]) -> bool:
    """Whether --inputs are volumes: NIfTI files, or folders of DICOM series with a NIfTI file or only folders (a
    folder among images is read, and refused, as an image); InputError when volumes and images are mixed."""
    if not any(is_nifti_name(path) for path in inputs) and not all(Path(path).is_dir() for path in inputs):
        return False
    kinds = [is_volume_input(path) for path in inputs]
    if not all(kinds):
        raise InputError("--inputs mixes volumes (NIfTI files, DICOM folders) and images: "
                         + ", ".join(f"{path} ({'volume' if kind else 'image'})" for path, kind in zip(inputs, kinds))
                         + "; give three of one kind")
    return True


def _check_volume_args(args: argparse.Namespace) -> None:
    if not is_nifti_name(args.out) or Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: volume mode writes one NIfTI volume; expected a file name ending in "
                         f"{' or '.join(NIFTI_EXTENSIONS)}")
    if args.uncertainty and not is_nifti_name(args.uncertainty):
        raise InputError(f"--uncertainty {args.uncertainty}: volume mode writes the spread as a NIfTI volume; "
                         f"expected a file name ending in {' or '.join(NIFTI_EXTENSIONS)}")
    if args.process:
        raise InputError("--process writes the denoising strip of an image; volume mode has none")
    if args.batch_slices is not None and (args.batch_slices < 1 or args.method != MODEL_METHOD):
        raise InputError(f"--batch-slices {args.batch_slices}: slices per batch of the model, at least 1"
                         + ("" if args.method == MODEL_METHOD else f"; method {args.method!r} fuses slice by slice"))


def _check_image_args(args: argparse.Namespace) -> None:
    only = [flag for flag, value in (("--slice-axis", args.slice_axis), ("--resample-to", args.resample_to),
                                     ("--grey", args.grey), ("--batch-slices", args.batch_slices)) if value]
    if only:
        raise InputError(f"{', '.join(only)}: for volumes only (--inputs of three NIfTI files or DICOM folders)")
    if args.colour_map and not (args.inputs or args.input_dir):
        raise InputError("--colour-map renders your own inputs: use it with --inputs or --input-dir (a split's "
                         "images are used as prepared)")


def check_uncertainty_samples(args: argparse.Namespace, cfg: TFSDiffConfig) -> None:
    """InputError when --uncertainty is asked for with fewer than 2 samples (one sample has no spread)."""
    samples = cfg.model.sampler.samples
    if args.uncertainty is not None and samples < 2:
        raise InputError(f"--uncertainty needs --samples K with K >= 2 (got {samples}): the spread of the samples is "
                         "the uncertainty, and one sample has none")


def load_model(cfg: TFSDiffConfig, checkpoint: str | None, tiling: Tiling | None = None) -> Fuser:
    """`model.fuser.Fuser.from_checkpoint` on the device of `cfg.gpu_ids`, sampling tile by tile with `tiling` when
    given, with an input error when no checkpoint is known."""
    if not checkpoint:
        raise InputError("no checkpoint: pass --checkpoint PATH or set path.resume_state or path.pretrained in the "
                         "config")
    fuser = Fuser.from_checkpoint(cfg, checkpoint)
    fuser.tiling = tiling
    log.info("loaded the weights of checkpoint %s", checkpoint)
    return fuser


def load_method(cfg: TFSDiffConfig, args: argparse.Namespace) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The fusion function of --method (not the model): a rule or published method (`method_fuser`), or SR3 then
    NAME for sr3+NAME (`model.sr3.load_sequential`, the SR3 model of the config's scale)."""
    if fusion_method_of(args.method) is None:
        return method_fuser(args.method, args.peer_dir)
    return load_sequential(args.method, cfg.datasets.train, sr3_config=args.sr3_config,
                           sr3_checkpoint=args.sr3_checkpoint, peer_dir=args.peer_dir, progress=not args.no_progress)


def split_loader(cfg: TFSDiffConfig, split: str) -> DataLoader:
    """The loader of `split` (cases in order, unflipped); builds the embedded dataset first when the config has one."""
    ds_cfg = getattr(cfg.datasets, split)
    if ds_cfg is None:
        raise InputError(f"the config has no datasets.{split} section")
    ensure_config_data(cfg.datasets)
    return dataset_from_config(ds_cfg, seed=cfg.seed, train=False, require_target=False)[2]


def split_output(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    """The method folder of split mode: `DIR/<method>/` for `--out DIR`, else `results/<name>/<split>/<method>/`."""
    base = Path(args.out) if args.out else Path("results") / cfg.name / args.split
    return base / args.method


def check_replaceable(path: Path, overwrite: bool, folder: bool) -> None:
    """InputError unless `path` may be written: absent (or an empty folder), or, with `overwrite`, a result that
    infer.py wrote (`core.outputs`); a file where a folder is meant (or the reverse) is always an error."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() != folder:
        raise InputError(f"{path} is {'a file' if folder else 'a folder'}; it would be replaced by "
                         f"{'a folder of results' if folder else 'the fused image'}: choose another --out")
    if folder:
        check_folder_target(path, overwrite)
    else:
        check_file_target(path, overwrite)


def run_split(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    out_dir = split_output(cfg, args)
    split_cfg = getattr(cfg.datasets, args.split)
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False) if args.method == MODEL_METHOD else None
    check_apart(out_dir, (args.config, checkpoint, args.peer_dir, split_cfg.dataroot if split_cfg else None))
    # the default folder results/<name>/<split>/<method> is infer.py's own: its previous results are replaced
    check_replaceable(out_dir, args.overwrite or (args.out is None and is_project_folder(out_dir)), folder=True)
    tiling = Tiling(args.tile, args.tile_overlap) if args.tile is not None else None
    fuser = load_model(cfg, checkpoint, tiling) if args.method == MODEL_METHOD else None
    method = load_method(cfg, args) if fuser is None else None
    loader = split_loader(cfg, args.split)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    try:
        if fuser is None:
            fuse_with_rule(method, loader, staging)
        else:
            result = evaluate_model(fuser, loader, staging, save_process=args.process, progress=not args.no_progress)
            log.info("model: %s", result.describe())
        publish_folder(staging, out_dir, "infer.py")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%d cases of split %r fused with %s into %s", len(loader.dataset), args.split, args.method, out_dir)
    return out_dir


def read_inputs(paths: list[str], colour: tuple[str, int] | None = None) -> list[np.ndarray]:
    """The three inputs as uint8 RGB arrays (H, W, 3) of one size (they must be registered), read by
    `data.images.read_image` with the loader's rules (16-bit by min-max, alpha composited on black, palette
    expanded, EXIF orientation applied); with `colour` (--colour-map NAME, --colour-source k) input k, which must
    be grey, rendered in that colour map."""
    images = [read_image(p) for p in paths]  # an ImageReadError names the file
    sizes = {p: img.shape[:2] for p, img in zip(paths, images)}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the three inputs must have one size (registered images), got ({HXW}) "
                         + ", ".join(f"{p}: {hxw(size)}" for p, size in sizes.items()))
    if colour is not None:
        name, source = colour
        image = images[source - 1]
        if not (image == image[..., :1]).all():
            raise InputError(f"--colour-map {name}: {paths[source - 1]} (input {source}) is already in colour; the "
                             "map renders a grey image: give the grey scan, or leave out --colour-map")
        images[source - 1] = colourise(image[..., 0], name)
    return images


def colour_choice(args: argparse.Namespace) -> tuple[str, int] | None:
    """(--colour-map, --colour-source, default 3), or None without --colour-map."""
    return (args.colour_map, args.colour_source or 3) if args.colour_map else None


def hxw(size: tuple[int, int]) -> str:
    """`size` (H, W) as "HxW", the order of --out-size H W (every size infer.py prints)."""
    return f"{size[0]}x{size[1]}"


def model_scale(cfg: TFSDiffConfig) -> int:
    """The model's super-resolution factor: r_resolution / l_resolution of its training data."""
    train = cfg.datasets.train
    return train.r_resolution // train.l_resolution


def output_size(input_hw: tuple[int, int], scale: int, out_size: list[int] | None) -> tuple[int, int]:
    """(H, W) of the fused image: `--out-size H W` when given, else the inputs' size times the model's scale."""
    height, width = (out_size[0], out_size[1]) if out_size else (input_hw[0] * scale, input_hw[1] * scale)
    if height < MIN_OUTPUT_SIDE or width < MIN_OUTPUT_SIDE:
        raise InputError(f"the fused image would be {height}x{width} ({HXW}); both sides must be at least "
                         f"{MIN_OUTPUT_SIDE} pixels (pass larger inputs or --out-size H W)")
    return height, width


def aspect_warning(input_hw: tuple[int, int], size: tuple[int, int], what: str) -> str | None:
    """The warning when the fused size (H, W) changes the aspect ratio (width / height) of the inputs by more than
    `ASPECT_TOLERANCE` (the sources are then stretched, not cropped), else None; `what` names the inputs."""
    before, after = input_hw[1] / input_hw[0], size[1] / size[0]
    if abs(after - before) <= ASPECT_TOLERANCE * before:
        return None
    return (f"--out-size {hxw(size)} ({HXW}) has the aspect ratio (width / height) {after:.3f}, but {what} "
            f"{hxw(input_hw)} have {before:.3f}: the sources are stretched to it, not cropped")


def needed_bytes(cfg: TFSDiffConfig | None, size: tuple[int, int]) -> int:
    """A generous estimate of the memory that fusing one image of `size` (H, W) takes: the rules' float64 images
    and pyramids (`cfg` None), or the network's activations, which grow with the pixels and its width (measured by
    bench.measure.peak_memory: 0.72 GB for the 32-channel real-scan network at 512x512, 0.16 GB at 256x256)."""
    pixels = size[0] * size[1]
    per_pixel = BYTES_PER_PIXEL_RULE if cfg is None else BYTES_PER_PIXEL_PER_CHANNEL * cfg.model.unet.inner_channel
    return pixels * per_pixel


def tiled_bytes(cfg: TFSDiffConfig, size: tuple[int, int], tiling: Tiling) -> int:
    """A generous estimate of the memory that fusing one image of `size` (H, W) tile by tile takes: the network's
    activations for one tile and the whole-image tensors of the sampler (`BYTES_PER_PIXEL_TILED`)."""
    tile = (min(tiling.side, size[0]), min(tiling.side, size[1]))
    return needed_bytes(cfg, tile) + size[0] * size[1] * BYTES_PER_PIXEL_TILED


def check_memory(cfg: TFSDiffConfig | None, size: tuple[int, int], tile: int | None = None,
                 overlap: int = DEFAULT_TILE_OVERLAP) -> Tiling | None:
    """The tiling to fuse at `size` with (None: the whole image at once), or InputError when it would need more
    memory than the device has free (`core.device`). `cfg` None is a rule (never tiled). With `tile` (--tile) the
    model is tiled with that side; otherwise an image that does not fit is tiled with `DEFAULT_TILE_SIDE` when the
    tiles fit, and refused when even they do not."""
    device = select_device(cfg.gpu_ids)[0] if cfg is not None else torch.device("cpu")
    need, free = needed_bytes(cfg, size), free_memory_bytes(device)
    tiling = None
    if cfg is not None and (tile is not None or (free is not None and need > free)):
        tiling = Tiling(tile if tile is not None else DEFAULT_TILE_SIDE, min(overlap, (tile or DEFAULT_TILE_SIDE) - 1))
        whole = need
        need = tiled_bytes(cfg, size, tiling)
        if tile is None and (free is None or need <= free):
            log.info("fusing a %s image (%s) needs about %.1f GiB, more than the %.1f GiB free on %s: sampling it in "
                     "tiles of %d with overlap %d (about %.1f GiB)", hxw(size), HXW, whole / 2**30, free / 2**30,
                     device.type, tiling.side, tiling.overlap, need / 2**30)
    if free is not None and need > free:
        tiles = f" even in tiles of {tiling.side} (overlap {tiling.overlap})" if tiling is not None else ""
        raise InputError(f"fusing a {hxw(size)} image ({HXW}) needs about {need / 2**30:.1f} GiB{tiles}, but "
                         f"{device.type} has {free / 2**30:.1f} GiB free: pass smaller inputs or a smaller "
                         "--out-size H W" + (", or a smaller --tile SIDE" if cfg is not None else "")
                         + ", or fuse on a machine with more memory")
    return tiling


def upsample(images: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Each source resized with `data.resample.resize_bicubic` to (H, W) = `size` (the model's condition)."""
    height, width = size
    return [np.asarray(resize_bicubic(Image.fromarray(img), (width, height))) for img in images]


def fuse_case_with_model(fuser: Fuser, sources: list[np.ndarray], progress: bool, process: bool,
                         keep_samples: bool) -> FusedBatch:
    """Fuse three registered uint8 RGB sources of one size with `Fuser.fuse`, at that size, with a fresh generator
    seeded with the config's seed (so a case fuses the same alone or in a folder)."""
    srcs = [to_tensor(src)[None] for src in sources]
    batch = FusionBatch(src1=srcs[0], src2=srcs[1], src3=srcs[2], target=None, case_ids=("input",))
    return fuser.fuse(batch, process=process, progress=progress, keep_samples=keep_samples)


def fuse_with_method(method: Callable[[list[np.ndarray]], np.ndarray], sources: list[np.ndarray], name: str,
                     where: str) -> np.ndarray:
    """`method(sources)`, with a method's refusal (a published method that cannot take these sources, e.g. too
    small) as an InputError naming `where`."""
    try:
        return method(sources)
    except ValueError as err:
        raise InputError(f"--method {name}: {where}: {err}") from err


def encode_image(image: np.ndarray, path: Path) -> bytes:
    """A uint8 image encoded in the format of `path`'s extension (an OSError names `path`)."""
    buffer = io.BytesIO()
    try:
        Image.fromarray(image).save(buffer, format=Image.registered_extensions()[path.suffix.lower()])
    except OSError as err:
        raise naming_path(err, path) from err
    return buffer.getvalue()


def check_outputs(outputs: list[tuple[Path | None, str]], args: argparse.Namespace, checkpoint: str | None,
                  names: str) -> list[Path]:
    """The output files of one single-case or volume run (path or None, its flag), returned once checked: different
    files (``names`` says which in the error), apart from every input, replaceable only under the project's rule
    (--overwrite)."""
    written = [path for path, _ in outputs if path is not None]
    if len({resolved(path) for path in written}) != len(written):
        raise InputError(f"{names} must be different files: " + ", ".join(map(str, written)))
    for path, flag in outputs:
        if path is not None:
            check_apart(path, (*args.inputs, args.config, checkpoint, args.peer_dir), flag)
            check_replaceable(path, args.overwrite, folder=False)
    return written


def run_single(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    out = Path(args.out)
    process_out = out.with_name(f"{out.stem}_process.png") if args.process else None
    uncertainty_out = None
    if args.uncertainty is not None:
        uncertainty_out = Path(args.uncertainty) if args.uncertainty else out.with_name(f"{out.stem}_uncertainty.png")
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False) if args.method == MODEL_METHOD else None
    written = check_outputs([(out, "--out"), (process_out, "--process"), (uncertainty_out, "--uncertainty")], args,
                            checkpoint, "--out, the --process strip and --uncertainty")
    images = read_inputs(args.inputs, colour_choice(args))
    size = output_size(images[0].shape[:2], model_scale(cfg), args.out_size)
    warning = aspect_warning(images[0].shape[:2], size, "the inputs")
    if warning:
        log.warning("%s", warning)
    tiling = check_memory(cfg if args.method == MODEL_METHOD else None, size, args.tile, args.tile_overlap)
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
    fuser = load_model(cfg, checkpoint, tiling) if args.method == MODEL_METHOD else None
    method = load_method(cfg, args) if fuser is None else None
    sources = upsample(images, size)
    images_out: dict[Path, np.ndarray] = {}
    if method is not None:
        images_out[out] = fuse_with_method(method, sources, args.method, "the inputs")
    else:
        result = fuse_case_with_model(fuser, sources, not args.no_progress, process_out is not None,
                                      uncertainty_out is not None)
        images_out[out] = result.image(0)
        if process_out is not None:
            images_out[process_out] = result.strip(0)
        if uncertainty_out is not None:
            images_out[uncertainty_out] = uncertainty_image(result.spread(0))
    # all files or none (core.outputs.publish_files), each checked above
    publish_files({path: encode_image(image, path) for path, image in images_out.items()}, args.overwrite)
    log.info("fused %s (%s, %s) with %s into %s (%s)", ", ".join(args.inputs), hxw(images[0].shape[:2]), HXW,
             args.method, out, hxw(size))
    if uncertainty_out is not None:
        log.info("uncertainty map of %d samples in %s (value / %d = standard deviation in grey levels)",
                 cfg.model.sampler.samples, uncertainty_out, UNCERTAINTY_SCALE)
    return out


def find_cases(folder: Path) -> dict[str, list[Path]]:
    """The cases of an --input-dir folder, sorted by id: case id -> its files for k = 1, 2, 3, named
    `<case>_<k>_<anything>.<ext>` (or `<case>_<k>.<ext>`; the last `_1`, `_2` or `_3` followed by `_` or the end of
    the name splits it), ext an image extension. Hidden files are ignored; other files and folders are skipped with a
    warning. InputError, listing every case and its files, when a case lacks a file or has two for one k, or when
    there is no case at all."""
    if not folder.is_dir():
        raise InputError(f"--input-dir {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    found: dict[str, dict[int, list[Path]]] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = CASE_FILE.fullmatch(path.stem)
        if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS or match is None:
            skipped.append(path.name)
            continue
        found.setdefault(match["case"], {}).setdefault(int(match["k"]), []).append(path)
    if skipped:
        log.warning("--input-dir %s: skipped %d entr%s not named <case>_<k>_<anything>.<image extension> with k = 1, "
                    "2, 3: %s", folder, len(skipped), "y" if len(skipped) == 1 else "ies", ", ".join(skipped))
    problems = []
    for case, files in sorted(found.items()):
        names = ", ".join(p.name for k in sorted(files) for p in files[k])
        missing = [k for k in (1, 2, 3) if k not in files]
        doubled = [k for k in sorted(files) if len(files[k]) > 1]
        if missing:
            problems.append(f"case {case!r}: no file for k = {', '.join(map(str, missing))} (has {names})")
        if doubled:
            problems.append(f"case {case!r}: more than one file for k = {', '.join(map(str, doubled))} ({names})")
    if problems:
        raise InputError(f"--input-dir {folder}: every case needs exactly one file <case>_<k>_<anything>.<ext> for "
                         "each k = 1, 2, 3; nothing was written:\n  " + "\n  ".join(problems))
    if not found:
        raise InputError(f"--input-dir {folder}: no case files named <case>_<k>_<anything>.<ext> with k = 1, 2, 3 "
                         f"and ext one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return {case: [files[k][0] for k in (1, 2, 3)] for case, files in sorted(found.items())}


def run_folder(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    """Folder mode: every case of --input-dir fused as single-case mode fuses it (same sizes, same seed per case),
    with the model loaded once, into the results layout at --out (published when complete, `core.outputs`)."""
    in_dir, out = Path(args.input_dir), Path(args.out)
    cases = find_cases(in_dir)
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False) if args.method == MODEL_METHOD else None
    files = [path for paths in cases.values() for path in paths]
    check_apart(out, (in_dir, *files, args.config, checkpoint, args.peer_dir))
    check_replaceable(out, args.overwrite, folder=True)
    sizes: dict[str, tuple[int, int]] = {}
    stretched: dict[tuple[int, int], list[str]] = {}
    for case, paths in cases.items():  # every image read once before anything is loaded or written
        input_hw = read_inputs([str(p) for p in paths], colour_choice(args))[0].shape[:2]
        sizes[case] = output_size(input_hw, model_scale(cfg), args.out_size)
        if aspect_warning(input_hw, sizes[case], "the inputs"):
            stretched.setdefault(input_hw, []).append(case)
    for input_hw, names in stretched.items():
        log.warning("%s (%d case%s: %s)", aspect_warning(input_hw, sizes[names[0]], "the inputs"), len(names),
                    "" if len(names) == 1 else "s", ", ".join(names))
    tiling = check_memory(cfg if args.method == MODEL_METHOD else None,
                          max(sizes.values(), key=lambda hw: hw[0] * hw[1]), args.tile, args.tile_overlap)
    fuser = load_model(cfg, checkpoint, tiling) if args.method == MODEL_METHOD else None
    method = load_method(cfg, args) if fuser is None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp{os.getpid()}")
    start = time.perf_counter()
    try:
        staging.mkdir()
        for case, paths in tqdm(cases.items(), desc="cases", unit="case", disable=args.no_progress):
            sources = upsample(read_inputs([str(p) for p in paths], colour_choice(args)), sizes[case])
            process = uncertainty = None
            if method is not None:
                fused = fuse_with_method(method, sources, args.method, f"case {case!r}")
            else:
                result = fuse_case_with_model(fuser, sources, False, args.process, args.uncertainty is not None)
                fused = result.image(0)
                process = result.strip(0) if args.process else None
                uncertainty = uncertainty_image(result.spread(0)) if args.uncertainty is not None else None
            write_case(staging, case, sources, fused, process=process, uncertainty=uncertainty)
        seconds = time.perf_counter() - start
        publish_folder(staging, out, "infer.py")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%d case%s of %s fused with %s into %s in %.1f s (%.2f s per case after loading)", len(cases),
             "" if len(cases) == 1 else "s", in_dir, args.method, out, seconds, seconds / len(cases))
    return out


def run_volume(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    """Volume mode: three volumes fused slice by slice (`data.volume_io`, `model.volume_fusion`) into the NIfTI
    --out, its sidecar JSON and, with --uncertainty, the spread volume; all published together or none."""
    out = Path(args.out)
    uncertainty_out = None
    if args.uncertainty is not None:
        uncertainty_out = Path(args.uncertainty) if args.uncertainty else beside(out, "_uncertainty")
    model = args.method == MODEL_METHOD
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False) if model else None
    check_outputs([(out, "--out"), (sidecar_path(out), "--out (its sidecar JSON)"), (uncertainty_out, "--uncertainty")],
                  args, checkpoint, "--out, its sidecar JSON and --uncertainty")
    volumes, resampled = on_one_grid([read_volume(path) for path in args.inputs], args.resample_to)
    axis = args.slice_axis or "axial"
    sliced = slice_volumes(volumes, axis, args.colour_map, args.colour_source or 3)
    input_hw = sliced.geometry.slice_hw
    size = output_size(input_hw, model_scale(cfg), args.out_size)
    warning = aspect_warning(input_hw, size, f"the {axis} slices")
    if warning:
        log.warning("%s", warning)
    whole, free = volume_bytes(len(sliced), size, uncertainty_out is not None), free_memory_bytes(torch.device("cpu"))
    if free is not None and whole > free:
        raise InputError(f"the fused volume ({len(sliced)} {axis} slices of {hxw(size)}, {HXW}) needs about "
                         f"{whole / 2**30:.1f} GiB of memory to assemble and write, but {free / 2**30:.1f} GiB are "
                         "free: pass a smaller --out-size H W (e.g. the slices' own size), or fuse on a machine with "
                         "more memory")
    tiling = check_memory(cfg if model else None, size, args.tile, args.tile_overlap)
    fuser = load_model(cfg, checkpoint, tiling) if model else None
    method = load_method(cfg, args) if fuser is None else None
    batch = 1
    if fuser is not None:
        per_slice = needed_bytes(cfg, size) if tiling is None else tiled_bytes(cfg, size, tiling)
        batch = slices_per_batch(args.batch_slices or default_batch_slices(fuser.device), per_slice,
                                 free_memory_bytes(fuser.device))
    start = time.perf_counter()
    result = fuse_slices(sliced, size, fuser=fuser, method=method, batch=batch,
                         keep_samples=uncertainty_out is not None, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    description = f"TFS-Diff {args.method}, {axis} slices fused at {hxw(size)}; {sidecar_path(out).name}"
    image = fused_nifti(sliced.geometry, result.images, args.grey, volumes[0].header, description)
    run_info = {"method": args.method, "config": str(args.config), "checkpoint": str(checkpoint) if model else None,
                "sampler": dataclasses.asdict(cfg.model.sampler) if model else None,
                "seed": cfg.seed if model else None, "batch_slices": result.batch,
                "tiling": {"side": tiling.side, "overlap": tiling.overlap} if tiling is not None else None,
                "uncertainty": None if uncertainty_out is None else {
                    "path": str(uncertainty_out), "unit": "grey levels 0..255: per voxel, the standard deviation "
                    "over the samples of the luminance 0.299 R + 0.587 G + 0.114 B of each sample's fused image"}}
    record = sidecar_record(sliced, list(args.inputs), resampled, image, size, out, args.grey, result.empty,
                            run_info)
    files: dict[Path, str | bytes] = {out: nifti_bytes(image, out), sidecar_path(out): json.dumps(record, indent=1)
                                      + "\n"}
    if uncertainty_out is not None:
        files[uncertainty_out] = nifti_bytes(spread_nifti(sliced.geometry, result.spread, volumes[0].header,
                                                          f"spread of {cfg.model.sampler.samples} samples"),
                                             uncertainty_out)
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    publish_files(files, args.overwrite)
    log.info("fused %s (%d %s slices of %s, %d empty) with %s into %s (%s in-plane, %s) in %.1f s", ", ".join(
        args.inputs), len(sliced), axis, hxw(input_hw), len(result.empty), args.method, out, hxw(size),
        "grey" if args.grey else "RGB24", seconds)
    return out


def run(args: argparse.Namespace) -> int:
    """Fuse as `args` say; returns the exit code (errors propagate to `core.cli.run_command`)."""
    _check_args(args)
    cfg = apply_sampler_args(args, load_config(args.config))
    if cfg.model.task != "fusion":
        raise InputError(f"{args.config} is a config of task {cfg.model.task!r} (model.task): infer.py fuses with a "
                         "fusion config; use an SR3 model with --method sr3+NAME --sr3-config "
                         f"{args.config}, and sr.py -p val -c {args.config} to score it")
    check_uncertainty_samples(args, cfg)
    torch.manual_seed(cfg.seed)
    if args.inputs and volume_mode(args.inputs):
        run_volume(cfg, args)
    elif args.inputs:
        run_single(cfg, args)
    elif args.input_dir:
        run_folder(cfg, args)
    else:
        run_split(cfg, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    return run_command(lambda: run(args), args.debug, log)


if __name__ == "__main__":
    sys.exit(main())
