"""Train TFS-Diff (`-p train`) or sample and score the validation set with a checkpoint (`-p val`); a config with
`model.task: "sr3"` trains and validates the single-image SR3 model of the sequential baselines the same way.

    python sr.py -p train -c config/demo.json
    python sr.py -p val -c config/demo.json --checkpoint runs/<run>/checkpoint/latest-or-file
    python sr.py -p train -c config/finetune_x4_own_data.json   # fine-tune: a new run from path.init_weights
    python sr.py -p val -c config/demo.json --checkpoint <...> --sampler ddim --steps 50   # fast sampling
    torchrun --nproc_per_node 4 sr.py -p train -c config/tfsdiff_x4_64_256.json   # DistributedDataParallel
    python sr.py -p train -c config/sr3_x4_64_256.json   # SR3 x4 (docs/comparison_methods.md)

--checkpoint takes a checkpoint file, a checkpoint folder or a run folder: a folder stands for the file its `latest`
names, else its newest complete checkpoint, else the checkpoint its run resumed from (`resumed_from`, written when a
resumed run starts), so a run killed at any moment can be resumed by passing its folder.

--init-weights (or the config's path.init_weights) starts a new training run from the weights of a release or a
checkpoint: its network weights and EMA, a fresh optimiser, step 0 (docs/own_data.md, "Fine-tuning the shipped
model on your data"). Resuming (--checkpoint, path.resume_state) continues a run: the two do not go together.

Exit status (`core.cli.run_command`): 0 success; 2 for a usage or input error (config, dataset, checkpoint, an
unusable path); 1 for a failure while running (a NaN loss, disk full, anything unexpected). --debug shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from tensorboardX import SummaryWriter
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.cli import UsageError, add_debug_arg, add_sampler_args, apply_sampler_args, checkpoint_to_load, \
    run_command
from core.config import TFSDiffConfig, config_to_dict, load_config
from core.device import select_device
from core.distributed import DistInfo, barrier, init_distributed, mean_over_ranks, shutdown_distributed
from core.logger import RunDirs, make_run_dirs, setup_logger
from data.loader import dataset_from_config, ensure_config_data
from model.evaluation import Evaluation, evaluate_model
from model.checkpoint_io import (RESUMED_FROM, checkpoint_folder, remove_stale_temporaries, resolve_checkpoint,
                                 resume_records)
from model.fuser import Fuser
from model.model import NonFiniteLossError, TFSDiffModel

log = logging.getLogger("tfsdiff")
RUN_CONFIG = "config.json"  # in the run folder: the resolved config of the run (setup_run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="JSON config file (// comments allowed)")
    parser.add_argument("-p", "--phase", choices=("train", "val"), default="train")
    parser.add_argument("--checkpoint", help="checkpoint to start from (default: path.resume_state; -p val also falls "
                        "back to path.pretrained): our .pth file, a checkpoint folder (its 'latest'), or an official "
                        "I{iter}_E{epoch} prefix")
    parser.add_argument("--init-weights", metavar="PATH",
                        help="-p train: start a new run (step 0, fresh optimiser) from the weights of a release or a "
                        "checkpoint (its EMA too); overrides path.init_weights, 'none' drops it (e.g. to resume a "
                        "fine-tuning run with --checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-ema", action="store_true",
                        help="-p val: sample with the trained weights even if the checkpoint has EMA weights")
    parser.add_argument("--cases", type=int, metavar="N",
                        help="-p val: score the first N cases of the validation split, -1 for all of them (default: "
                        "datasets.val.data_len), e.g. to choose a checkpoint on the whole split when periodic "
                        "validation uses a few cases")
    add_sampler_args(parser)
    add_debug_arg(parser)
    return parser.parse_args(argv)


def prepare_data(cfg: TFSDiffConfig, info: DistInfo, progress: bool) -> None:
    """Build the embedded dataset on first use when the config asks for it (rank 0 builds, the others wait)."""
    if info.is_main:
        ensure_config_data(cfg.datasets, progress)
    barrier(info)


def log_validation(result: Evaluation, step: int, writer: SummaryWriter | None) -> None:
    log.info("validation at step %d: %s", step, result.describe())
    if writer is None:
        return
    for name, value in result.summary().items():
        writer.add_scalar(f"val/{name}", value, step)
    if result.preview is not None:
        writer.add_image("val/src1_src2_src3_fused_gt", result.preview, step, dataformats="HWC")


def train(cfg: TFSDiffConfig, model: TFSDiffModel, dirs: RunDirs | None, progress: bool) -> int:
    """The training loop; `dirs` is None on the ranks other than 0, which write nothing."""
    tcfg, bs, info = cfg.train, cfg.datasets.train.batch_size, model.dist
    task = cfg.model.task
    train_set, sampler, loader = dataset_from_config(cfg.datasets.train, seed=cfg.seed, train=True, dist=info,
                                                    base_rule=cfg.model.diffusion.residual_base, task=task)
    _, _, val_loader = dataset_from_config(cfg.datasets.val, seed=cfg.seed, train=False, dist=info, task=task)
    writer = SummaryWriter(str(dirs.tb_logger)) if dirs is not None else None
    log.info("training on %d cases, validating on %d; %d parameters; from step %d to %d", len(train_set),
             len(val_loader.dataset), model.num_parameters, model.step, tcfg.n_iter)
    batches_per_epoch = math.ceil(len(train_set) / bs)
    bar = tqdm(total=tcfg.n_iter, initial=model.step, desc="training", disable=not progress or dirs is None,
               dynamic_ncols=True)
    start, first_step = time.perf_counter(), model.step
    try:
        while model.step < tcfg.n_iter:
            sampler.set_epoch(model.epoch, start=model.batch_in_epoch * bs)
            for batch in loader:
                batch = batch.to(model.device)
                losses = model.train_step(batch.target, batch.condition, batch.base,
                                          batches_per_epoch=batches_per_epoch)  # advances step, epoch, batch
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4g}")
                after_step(model, dirs, writer, val_loader, losses, (time.perf_counter() - start) /
                           (model.step - first_step), progress)
                if model.step >= tcfg.n_iter:
                    break
    except NonFiniteLossError as err:
        log.error("%s. Training stopped; the last good checkpoint is intact.", err)
        return 1
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if model.step % tcfg.save_checkpoint_freq != 0:
        save_checkpoint(model, dirs)
    log.info("training finished at step %d in %.1f s", model.step, time.perf_counter() - start)
    return 0


def save_checkpoint(model: TFSDiffModel, dirs: RunDirs | None) -> None:
    """Every rank takes part (RNG states are gathered); rank 0 writes."""
    path = model.save(dirs.checkpoint if dirs is not None else None)
    if path is not None:
        log.info("saved checkpoint %s", path)
    barrier(model.dist)


def after_step(model: TFSDiffModel, dirs: RunDirs | None, writer: SummaryWriter | None, val_loader: DataLoader,
               losses: dict[str, float], seconds_per_step: float, progress: bool) -> None:
    """Logging (losses averaged over processes), validation (rank 0) and checkpointing at their frequencies."""
    tcfg, step = model.cfg.train, model.step
    if step % tcfg.print_freq == 0:
        losses = mean_over_ranks(losses, model.dist, model.device)
        parts = ", ".join(f"{k} {v:.5g}" for k, v in losses.items())
        log.info("step %d (epoch %d, %.2f s/step): %s", step, model.epoch, seconds_per_step, parts)
        for name, value in losses.items():
            if writer is not None:
                writer.add_scalar(f"train/{name}", value, step)
    if step % tcfg.val_freq == 0:
        if dirs is not None:
            result = evaluate_model(Fuser.from_model(model), val_loader, dirs.results / f"step_{step}",
                                    progress=progress)
            log_validation(result, step, writer)
        barrier(model.dist)
    if step % tcfg.save_checkpoint_freq == 0:
        save_checkpoint(model, dirs)


def validate(cfg: TFSDiffConfig, fuser: Fuser, info: DistInfo, dirs: RunDirs, progress: bool) -> int:
    _, _, loader = dataset_from_config(cfg.datasets.val, seed=cfg.seed, train=False, dist=info, task=cfg.model.task)
    log.info("sampling with %s", fuser.sampler)
    result = evaluate_model(fuser, loader, dirs.results, progress=progress)
    log_validation(result, fuser.step, None)
    for case in result.cases:
        log.info("%s: %s", case.case_id, case.describe())
    log.info("images written to %s", dirs.results)
    return 0


def setup_run(cfg: TFSDiffConfig, phase: str, info: DistInfo,
              resumed_from: str | None) -> tuple[RunDirs | None, torch.device, list[int]]:
    """Run folder and log file (rank 0 only), the device, and the DataParallel ids. A training run that resumes
    from `resumed_from` records it in its checkpoint folder from the start (`model.checkpoint_io.resume_records`).
    The run folder records the config the run uses as `config.json`: resolved (its base configs merged in, command
    line overrides such as --sampler or --cases applied), plain JSON that `core.config.load_config` reads back."""
    records = resume_records(resumed_from) if resumed_from else None
    resolved = {RUN_CONFIG: json.dumps(config_to_dict(cfg), indent=4) + "\n"}
    dirs = make_run_dirs(cfg.path.experiments_root, cfg.name, phase, records, resolved) if info.is_main else None
    setup_logger(dirs.logs / f"{phase}.log" if dirs is not None else None,
                 logging.INFO if info.is_main else logging.WARNING)
    if info.enabled:
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
        device_ids: list[int] = []
        where = f"DistributedDataParallel, rank {info.rank} of world size {info.world_size} on {device}"
    else:
        device, device_ids, where = select_device(cfg.gpu_ids)
    log.info("run folder %s; %s", dirs.root if dirs is not None else "-", where)
    if records is not None and dirs is not None:
        log.info("resuming from %s (recorded in %s)", records[RESUMED_FROM].strip(), dirs.checkpoint / RESUMED_FROM)
        for stale in remove_stale_temporaries(checkpoint_folder(resumed_from)):
            log.info("removed %s, left by a save that was killed", stale)
    return dirs, device, device_ids


def init_weights_to_load(args: argparse.Namespace, cfg: TFSDiffConfig, training: bool) -> str | None:
    """The weights a new training run starts from: --init-weights ('none': no weights), else path.init_weights;
    --init-weights is a usage error with -p val (which samples with --checkpoint or the config's weights)."""
    if args.init_weights and not training:
        raise UsageError("--init-weights is for -p train (a new run from those weights); -p val samples with "
                         "--checkpoint")
    if args.init_weights:
        return None if args.init_weights.lower() == "none" else args.init_weights
    return cfg.path.init_weights if training else None


def run(args: argparse.Namespace) -> int:
    """Train or validate as `args` say; returns the exit code (errors propagate to `core.cli.run_command`)."""
    cfg = apply_sampler_args(args, load_config(args.config))
    training = args.phase == "train"
    if args.cases is not None:
        if training:
            raise UsageError("--cases is for -p val; training validates on datasets.val.data_len cases")
        if args.cases == 0 or args.cases < -1:
            raise UsageError(f"--cases must be -1 (all) or a positive number of cases, got {args.cases}")
        cfg = replace(cfg, datasets=replace(cfg.datasets, val=replace(cfg.datasets.val, data_len=args.cases)))
    init_weights = init_weights_to_load(args, cfg, training)
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=training)
    if init_weights and checkpoint:
        given = "--checkpoint" if args.checkpoint else "path.resume_state"
        raise UsageError(f"{'--init-weights' if args.init_weights else 'path.init_weights'} {init_weights} starts a "
                         f"new run from its weights, but {given} {checkpoint} continues a run: give one of them (to "
                         "resume a fine-tuning run, add --init-weights none)")
    if init_weights:  # a missing file fails now, before a run folder is made; the run's config.json records it
        resolve_checkpoint(init_weights)
        init_weights = os.path.abspath(init_weights)
    if training:
        cfg = replace(cfg, path=replace(cfg.path, init_weights=init_weights))
    if not training and not checkpoint:
        raise UsageError("-p val needs a checkpoint: pass --checkpoint or set path.resume_state or path.pretrained")
    info = init_distributed()
    try:
        dirs, device, device_ids = setup_run(cfg, args.phase, info, checkpoint if training else None)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        prepare_data(cfg, info, not args.no_progress)
        if not training:  # sampling only: the weights without optimiser, scaler or loss
            fuser = Fuser.from_checkpoint(cfg, checkpoint, device=device, use_ema=not args.no_ema)
            log.info("loaded checkpoint %s (step %d, epoch %d)", checkpoint, fuser.step, fuser.epoch)
            return validate(cfg, fuser, info, dirs, not args.no_progress) if dirs is not None else 0
        model = TFSDiffModel(cfg, device, device_ids, info)
        if checkpoint:
            model.load(checkpoint)
            log.info("loaded checkpoint %s (step %d, epoch %d)", checkpoint, model.step, model.epoch)
        elif init_weights:
            source = model.init_from(init_weights)
            log.info("new run from the weights of %s (step 0, fresh optimiser)", source)
        return train(cfg, model, dirs, not args.no_progress)
    finally:
        shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    return run_command(lambda: run(args), args.debug, log)


if __name__ == "__main__":
    sys.exit(main())
