"""Fuse with a trained TFS-Diff model (or a classical rule) over a data split or one case; write images by case id.

    python infer.py -c CONFIG [--checkpoint PATH] [--split test|val] [--out DIR] [--process] [--overwrite]
    python infer.py -c CONFIG [--checkpoint PATH] --sampler ddim --steps 50   # a fast sampler instead of model.sampler
    python infer.py -c CONFIG --method average|maximum|laplacian_ycbcr|pca|dwt [--split test|val] [--out DIR]
    python infer.py -c CONFIG --method ifcnn|prrgan|matr|mufusion --peer-dir DIR ...   # a published method
    python infer.py -c CONFIG --checkpoint PATH --inputs T1.png T2.png SPECT.png --out fused.png [--process]
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

Single-case mode (--inputs, three registered images of one size, any size and aspect ratio, grey or colour): the
three images are the low-resolution sources. Each is converted to RGB and upsampled with
`data.resample.resize_bicubic` to the output size, which is the inputs' size times the model's scale
(`datasets.train.r_resolution / l_resolution`: 64x64 in gives 256x256 out for a x4 model), or `--out-size H W`.
The model then fuses at that size (fully convolutional; sizes that are not a multiple of the U-Net's downsampling
factor are padded by reflection and cropped back, never distorted). With `--out-size` equal to the inputs' size,
sources that are already high-resolution are fused without super-resolution, but the model still treats them as
bicubic-upsampled inputs and adds the detail it learned to restore, which sharpens them beyond the originals.
With --method the rule fuses the same upsampled sources (bicubic-then-fuse). With --process the strip is written
next to the output as `<out stem>_process.png`.

Results are written under a temporary name and renamed into place when complete, so a failed run leaves no partial
output. An existing result (a non-empty method folder, or the single-case output file) is replaced only with
--overwrite.

Exit status (`core.cli.run_command`): 0 success; 2 for a usage or input error (config, missing or unreadable
checkpoint, missing or unreadable image, images too small, an existing result without --overwrite, an unusable
path); 1 for a failure while running (disk full, anything unexpected). --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from core.cli import UsageError, add_debug_arg, add_sampler_args, apply_sampler_args, checkpoint_to_load, \
    naming_path, run_command
from core.config import ConfigError, TFSDiffConfig, load_config
from core.device import free_memory_bytes, select_device
from core.logger import setup_logger
from core.outputs import check_apart, check_file_target, check_folder_target, is_project_folder, publish_folder, \
    record_files
from core.registry import FUSION_METHODS
from data.fusion_dataset import DatasetError, FusionBatch
from data.images import IMAGE_EXTENSIONS, ImageReadError, read_image, to_tensor
from data.loader import dataset_from_config, ensure_config_data
from data.resample import resize_bicubic
from model.checkpoint_io import CheckpointError
from model.evaluation import evaluate_model, fuse_with_rule, method_fuser
from model.fuser import Fuser

MODEL_METHOD = "tfsdiff"
MIN_OUTPUT_SIDE = 8  # the fusion rules' smallest side (data.fusion_rules), and at least one U-Net block
BYTES_PER_PIXEL_RULE = 400  # float64 RGB images, YCbCr planes and pyramids of three sources
BYTES_PER_PIXEL_PER_CHANNEL = 128  # network activations per output pixel and inner channel (3.0 KB measured at 32)
log = logging.getLogger("tfsdiff")


class InputError(UsageError):
    """A user-supplied file, option or config entry is missing or unusable (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="JSON config file (// comments allowed)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the config's path.resume_state, else its "
                                             "released weights path.pretrained)")
    parser.add_argument("--method", default=MODEL_METHOD, choices=(MODEL_METHOD, *sorted(FUSION_METHODS.names())),
                        help="the model (default), a classical fusion rule or a published method (ifcnn, prrgan, "
                             "matr, mufusion, ...; needs --peer-dir) applied to the bicubic inputs")
    parser.add_argument("--peer-dir", help="a published method's weights: a clone of its authors' repository, or a "
                                           "folder holding the weight file at the same relative path")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="data split of the config")
    parser.add_argument("--inputs", nargs=3, metavar=("SRC1", "SRC2", "SRC3"),
                        help="fuse one case from three image files instead of a split (needs --out FILE)")
    parser.add_argument("--out", help="output folder (split mode) or output image file (single-case mode)")
    parser.add_argument("--out-size", nargs=2, type=int, metavar=("H", "W"),
                        help="single-case mode: size of the fused image (default: the inputs' size times the scale)")
    parser.add_argument("--process", action="store_true", help="also write the denoising-process strip")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing result (method folder or output file) once the new one is done")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_sampler_args(parser)
    add_debug_arg(parser)
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    if args.peer_dir and (args.method == MODEL_METHOD or not FUSION_METHODS.get(args.method).needs_weights):
        raise InputError(f"--peer-dir is for a published method with weights; {args.method!r} has none")
    if args.process and args.method != MODEL_METHOD:
        raise InputError(f"--process needs the model; method {args.method!r} has no denoising process")
    if args.out_size and not args.inputs:
        raise InputError("--out-size needs --inputs (split mode runs at the dataset's r_resolution)")
    if args.inputs and not args.out:
        raise InputError("--inputs needs --out FILE (the fused image to write)")
    if args.inputs and Path(args.out).suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"--out {args.out}: expected an image file name ending in one of "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}")


def load_model(cfg: TFSDiffConfig, checkpoint: str | None) -> Fuser:
    """`model.fuser.Fuser.from_checkpoint` on the device of `cfg.gpu_ids`, with an input error when no checkpoint is
    known."""
    if not checkpoint:
        raise InputError("no checkpoint: pass --checkpoint PATH or set path.resume_state or path.pretrained in the "
                         "config")
    fuser = Fuser.from_checkpoint(cfg, checkpoint)
    log.info("loaded the weights of checkpoint %s", checkpoint)
    return fuser


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
    fuser = load_model(cfg, checkpoint) if args.method == MODEL_METHOD else None
    method = method_fuser(args.method, args.peer_dir) if fuser is None else None
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


def read_inputs(paths: list[str]) -> list[np.ndarray]:
    """The three inputs as uint8 RGB arrays (H, W, 3) of one size (they must be registered), read by
    `data.images.read_image` with the loader's rules (16-bit by min-max, alpha composited on black, palette
    expanded, EXIF orientation applied)."""
    try:
        images = [read_image(p) for p in paths]
    except ImageReadError as err:
        raise InputError(str(err)) from err
    sizes = {p: img.shape[:2] for p, img in zip(paths, images)}
    if len(set(sizes.values())) != 1:
        raise InputError("the three inputs must have one size (registered images), got "
                         + ", ".join(f"{p}: {w}x{h}" for p, (h, w) in sizes.items()))
    return images


def model_scale(cfg: TFSDiffConfig) -> int:
    """The model's super-resolution factor: r_resolution / l_resolution of its training data."""
    train = cfg.datasets.train
    return train.r_resolution // train.l_resolution


def output_size(input_hw: tuple[int, int], scale: int, out_size: list[int] | None) -> tuple[int, int]:
    """(H, W) of the fused image: `--out-size H W` when given, else the inputs' size times the model's scale."""
    height, width = (out_size[0], out_size[1]) if out_size else (input_hw[0] * scale, input_hw[1] * scale)
    if height < MIN_OUTPUT_SIDE or width < MIN_OUTPUT_SIDE:
        raise InputError(f"the fused image would be {width}x{height}; both sides must be at least {MIN_OUTPUT_SIDE} "
                         "pixels (pass larger inputs or --out-size H W)")
    return height, width


def needed_bytes(cfg: TFSDiffConfig | None, size: tuple[int, int]) -> int:
    """A generous estimate of the memory that fusing one image of `size` (H, W) takes: the rules' float64 images
    and pyramids (`cfg` None), or the network's activations, which grow with the pixels and its width (measured by
    bench.measure.peak_memory: 0.72 GB for the 32-channel real-scan network at 512x512, 0.16 GB at 256x256)."""
    pixels = size[0] * size[1]
    per_pixel = BYTES_PER_PIXEL_RULE if cfg is None else BYTES_PER_PIXEL_PER_CHANNEL * cfg.model.unet.inner_channel
    return pixels * per_pixel


def check_memory(cfg: TFSDiffConfig | None, size: tuple[int, int]) -> None:
    """InputError when fusing at `size` would need more memory than the device has free (`core.device`)."""
    device = select_device(cfg.gpu_ids)[0] if cfg is not None else torch.device("cpu")
    need, free = needed_bytes(cfg, size), free_memory_bytes(device)
    if free is not None and need > free:
        raise InputError(f"fusing a {size[1]}x{size[0]} image needs about {need / 2**30:.1f} GiB, but "
                         f"{device.type} has {free / 2**30:.1f} GiB free: pass smaller inputs or a smaller "
                         "--out-size H W, or fuse on a machine with more memory")


def upsample(images: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Each source resized with `data.resample.resize_bicubic` to (H, W) = `size` (the model's condition)."""
    height, width = size
    return [np.asarray(resize_bicubic(Image.fromarray(img), (width, height))) for img in images]


def fuse_single_with_model(fuser: Fuser, sources: list[np.ndarray], progress: bool,
                           process_out: Path | None) -> np.ndarray:
    """Fuse three registered uint8 RGB sources of one size with `Fuser.fuse`, at that size; with `process_out`, write
    the denoising-process strip there."""
    srcs = [to_tensor(src)[None] for src in sources]
    batch = FusionBatch(src1=srcs[0], src2=srcs[1], src3=srcs[2], target=None, case_ids=("input",))
    result = fuser.fuse(batch, process=process_out is not None, progress=progress)
    if process_out is not None:
        save_image_atomic(result.strip(0), process_out)
    return result.image(0)


def save_image_atomic(image: np.ndarray, path: Path) -> None:
    """Save a uint8 image to a temporary file next to `path` (same extension), then rename it over `path` and record
    it as the project's (`core.outputs`). An OSError names `path`."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        Image.fromarray(image).save(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise naming_path(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)
    record_files([path])


def run_single(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    out = Path(args.out)
    process_out = out.with_name(f"{out.stem}_process.png") if args.process else None
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False) if args.method == MODEL_METHOD else None
    for path, flag in ((out, "--out"), (process_out, "--process")):
        if path is not None:
            check_apart(path, (*args.inputs, args.config, checkpoint, args.peer_dir), flag)
            check_replaceable(path, args.overwrite, folder=False)
    images = read_inputs(args.inputs)
    size = output_size(images[0].shape[:2], model_scale(cfg), args.out_size)
    check_memory(cfg if args.method == MODEL_METHOD else None, size)
    fuser = load_model(cfg, checkpoint) if args.method == MODEL_METHOD else None
    method = method_fuser(args.method, args.peer_dir) if fuser is None else None
    sources = upsample(images, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    if method is not None:
        try:
            fused = method(sources)
        except ValueError as err:  # a published method that cannot take these sources, e.g. too small
            raise InputError(f"--method {args.method}: {err}") from err
    else:
        fused = fuse_single_with_model(fuser, sources, not args.no_progress, process_out)
    save_image_atomic(fused, out)
    log.info("fused %s (%dx%d) with %s into %s (%dx%d)", ", ".join(args.inputs), images[0].shape[1],
             images[0].shape[0], args.method, out, size[1], size[0])
    return out


def run(args: argparse.Namespace) -> int:
    """Fuse as `args` say; returns the exit code (errors propagate to `core.cli.run_command`)."""
    _check_args(args)
    cfg = apply_sampler_args(args, load_config(args.config))
    torch.manual_seed(cfg.seed)
    if args.inputs:
        run_single(cfg, args)
    else:
        run_split(cfg, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    return run_command(lambda: run(args), (ConfigError, CheckpointError, DatasetError), args.debug, log)


if __name__ == "__main__":
    sys.exit(main())
