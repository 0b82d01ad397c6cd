"""Fuse with a trained TFS-Diff model (or a classical rule) over a data split or one case; write images by case id.

    python infer.py -c CONFIG [--checkpoint PATH] [--split test|val] [--out DIR] [--process]
    python infer.py -c CONFIG [--checkpoint PATH] --sampler ddim --steps 50   # a fast sampler instead of model.sampler
    python infer.py -c CONFIG --method average|maximum|laplacian_ycbcr|pca|dwt [--split test|val] [--out DIR]
    python infer.py -c CONFIG --checkpoint PATH --inputs T1.png T2.png SPECT.png --out fused.png [--process]

Split mode writes, per case id, `<id>_fused.png`, `<id>_src{1,2,3}.png` (the bicubic-upsampled inputs of the
dataset), `<id>_hr.png` (when the split has a ground truth) and, with --process, `<id>_process.png` (the
denoising-process strip) into `results/<config name>/<split>/<method>/` (method `tfsdiff` for the model). The model
runs through `core.evaluation.evaluate`, the path `sr.py` validation uses, with the config's val noise schedule,
its sampler (`model.sampler`), the model's sampling (EMA) weights and a generator seeded with the config's seed.
Without --checkpoint the weights are the config's `path.resume_state`, else its released weights `path.pretrained`
(for config/demo.json: the shipped demo model in pretrained/).
A `--method` rule from `data.fusion_rules` fuses the same bicubic-upsampled inputs, so the baselines are scored
on exactly the model's inputs.

Single-case mode (--inputs, three registered images of one size, any size, grey or colour): each image is
converted to RGB, padded with black to a centred square of side max(H, W), and resized with
`data.resample.resize_bicubic` to `model.diffusion.image_size`; the fused output is resized back to the padded side
with the same routine and the padding is cropped away. With --method the rule fuses the RGB inputs at their own
size instead. With --process the strip is written next to the output as `<out stem>_process.png`.

Exit status: 0 success; 2 for a usage or input error (config, missing checkpoint, missing or unreadable image);
1 for a failure while running.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import ConfigError, TFSDiffConfig, load_config
from core.evaluation import Evaluation, evaluate
from core.logger import setup_logger
from core.metrics import tensor2img
from core.results_layout import write_case
from data.embedded import ensure_embedded_dataset
from data.fusion_dataset import DatasetError, FusionBatch, FusionDataset, create_dataloader
from data.images import IMAGE_EXTENSIONS
from data.fusion_rules import FUSION_RULES, fuse
from data.resample import resize_bicubic
from model.model import CheckpointError, TFSDiffModel, select_device
from model.samplers import add_sampler_args, sampler_from_args

MODEL_METHOD = "tfsdiff"
log = logging.getLogger("tfsdiff")


class InputError(ValueError):
    """A user-supplied file, option or config entry is missing or unusable (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="JSON config file (// comments allowed)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the config's path.resume_state, else its "
                                             "released weights path.pretrained)")
    parser.add_argument("--method", default=MODEL_METHOD, choices=(MODEL_METHOD, *sorted(FUSION_RULES)),
                        help="the model (default) or a classical fusion rule applied to the bicubic inputs")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="data split of the config")
    parser.add_argument("--inputs", nargs=3, metavar=("SRC1", "SRC2", "SRC3"),
                        help="fuse one case from three image files instead of a split (needs --out FILE)")
    parser.add_argument("--out", help="output folder (split mode) or output image file (single-case mode)")
    parser.add_argument("--process", action="store_true", help="also write the denoising-process strip")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_sampler_args(parser)
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    if args.process and args.method != MODEL_METHOD:
        raise InputError(f"--process needs the model; method {args.method!r} has no denoising process")
    if args.inputs and not args.out:
        raise InputError("--inputs needs --out FILE (the fused image to write)")
    if args.inputs and Path(args.out).suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"--out {args.out}: expected an image file name ending in one of "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}")


def load_model(cfg: TFSDiffConfig, checkpoint: str | None) -> TFSDiffModel:
    """The model of `cfg` with `checkpoint`'s weights, switched to the val noise schedule, in eval mode."""
    if not checkpoint:
        raise InputError("no checkpoint: pass --checkpoint PATH or set path.resume_state or path.pretrained in the "
                         "config")
    device, device_ids, where = select_device(cfg.gpu_ids)
    log.info("%s", where)
    model = TFSDiffModel(cfg, device, device_ids)
    model.load(checkpoint, weights_only=True)
    model.diffusion.set_new_noise_schedule(cfg.model.beta_schedule.val)
    model.diffusion.eval()
    log.info("loaded the weights of checkpoint %s", checkpoint)
    return model


def sample(model: TFSDiffModel, loader, out_dir: Path, save_process: bool, progress: bool) -> Evaluation:
    """`core.evaluation.evaluate` with the config's seed and sampler and the model's sampling (EMA) weights."""
    return evaluate(model.diffusion, loader, model.device, out_dir, seed=model.cfg.seed, save_process=save_process,
                    progress=progress, sampler=model.cfg.model.sampler, net=model.sampling_net)


def split_dataset(cfg: TFSDiffConfig, split: str) -> tuple[FusionDataset, int]:
    """(dataset of `split`, its batch size); builds the embedded dataset first when the config has one."""
    ds_cfg = getattr(cfg.datasets, split)
    if ds_cfg is None:
        raise InputError(f"the config has no datasets.{split} section")
    emb = cfg.datasets.embedded
    if emb is not None:
        ensure_embedded_dataset(emb.root, emb.r_resolution, emb.scales, emb.seed)
    dataset = FusionDataset(ds_cfg.dataroot, ds_cfg.l_resolution, ds_cfg.r_resolution, data_len=ds_cfg.data_len,
                            require_target=False)
    return dataset, ds_cfg.batch_size


def run_rule_on_split(dataset: FusionDataset, rule: str, out_dir: Path) -> None:
    """Fuse every case's bicubic-upsampled inputs with `rule`; write the results layout the model run writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        item = dataset[index]
        sources = [tensor2img(item[f"src{k}"]) for k in (1, 2, 3)]
        target = tensor2img(item["target"]) if item["target"] is not None else None
        write_case(out_dir, item["case_id"], sources, fuse(rule, sources), target)


def run_split(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    dataset, batch_size = split_dataset(cfg, args.split)
    out_dir = Path(args.out) if args.out else Path("results") / cfg.name / args.split / args.method
    if args.method != MODEL_METHOD:
        run_rule_on_split(dataset, args.method, out_dir)
    else:
        model = load_model(cfg, args.checkpoint or cfg.path.sampling_checkpoint())
        loader = create_dataloader(dataset, batch_size, shuffle=False, flip=False, num_workers=0, seed=cfg.seed)
        result = sample(model, loader, out_dir, args.process, not args.no_progress)
        summary = result.summary()
        log.info("model: PSNR %.2f dB, SSIM %.4f; bicubic-then-fuse baseline: PSNR %.2f dB, SSIM %.4f "
                 "(NaN without ground truth)", summary["psnr"], summary["ssim"], summary["baseline_psnr"],
                 summary["baseline_ssim"])
    log.info("%d cases of split %r fused with %s into %s", len(dataset), args.split, args.method, out_dir)
    return out_dir


def read_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB; InputError naming the file when it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"cannot read input image {path}: {err}") from err


def read_inputs(paths: list[str]) -> list[Image.Image]:
    """The three inputs as RGB images of one size (they must be registered)."""
    images = [read_rgb(p) for p in paths]
    sizes = {p: img.size for p, img in zip(paths, images)}
    if len(set(sizes.values())) != 1:
        raise InputError("the three inputs must have one size (registered images), got "
                         + ", ".join(f"{p}: {w}x{h}" for p, (w, h) in sizes.items()))
    return images


def pad_square(img: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """Pad with black to a centred square of side max(W, H); returns (square, (left, top) offset of `img`)."""
    side = max(img.size)
    left, top = (side - img.width) // 2, (side - img.height) // 2
    square = Image.new("RGB", (side, side))
    square.paste(img, (left, top))
    return square, (left, top)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1], as FusionDataset maps images."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].to(torch.float32).div(255).mul(2).sub(1)


def fuse_single_with_model(model: TFSDiffModel, images: list[Image.Image], progress: bool,
                           process_out: Path | None) -> Image.Image:
    """Fuse three registered RGB images of any size with the model (see the module docstring for the sizes)."""
    size = model.cfg.model.diffusion.image_size
    squares = [pad_square(img) for img in images]
    side, (left, top) = squares[0][0].width, squares[0][1]
    srcs = [_to_tensor(resize_bicubic(sq, size)) for sq, _ in squares]
    batch = FusionBatch(src1=srcs[0], src2=srcs[1], src3=srcs[2], target=None, case_ids=("input",))
    with tempfile.TemporaryDirectory(prefix="tfsdiff_infer_") as tmp:
        sample(model, [batch], Path(tmp), process_out is not None, progress)
        with Image.open(Path(tmp) / "input_fused.png") as img:
            fused = img.convert("RGB")
        if process_out is not None:
            shutil.copyfile(Path(tmp) / "input_process.png", process_out)
    fused = resize_bicubic(fused, side)
    width, height = images[0].size
    return fused.crop((left, top, left + width, top + height))


def run_single(cfg: TFSDiffConfig, args: argparse.Namespace) -> Path:
    images = read_inputs(args.inputs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.method != MODEL_METHOD:
        fused = Image.fromarray(fuse(args.method, [np.asarray(img, dtype=np.uint8) for img in images]))
    else:
        model = load_model(cfg, args.checkpoint or cfg.path.sampling_checkpoint())
        process_out = out.with_name(f"{out.stem}_process.png") if args.process else None
        fused = fuse_single_with_model(model, images, not args.no_progress, process_out)
    fused.save(out)
    log.info("fused %s with %s into %s", ", ".join(args.inputs), args.method, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    try:
        _check_args(args)
        cfg = load_config(args.config)
        cfg = replace(cfg, model=replace(cfg.model, sampler=sampler_from_args(args, cfg)))
        torch.manual_seed(cfg.seed)
        if args.inputs:
            run_single(cfg, args)
        else:
            run_split(cfg, args)
    except (InputError, ConfigError, CheckpointError, DatasetError) as err:
        log.error("%s", err)
        return 2
    except (RuntimeError, ValueError, OSError) as err:
        log.error("inference failed: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
