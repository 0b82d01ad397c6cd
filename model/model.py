"""The trainable TFS-Diff model: network + diffusion, optimiser, device placement, the train step, and checkpoints.

`TFSDiffModel.train_step` advances the model's own position (`step`, and with the loader's `batches_per_epoch`
`batch_in_epoch` and `epoch`), which checkpoints record for exact resumption. Sampling lives apart, in
`model.fuser.Fuser`, which loads the sampling weights with `load_sampling_weights` (below) and builds no optimiser,
scaler or loss; checkpoint files are read and written by `model.checkpoint_io`.

Checkpoint format (ours, version 2; version 1 still loads): one self-describing dict saved atomically as
`I{step}_E{epoch}.pth`: `{"format": "tfsdiff", "version", "step", "epoch", "batch_in_epoch", "model", "ema",
"optimizer", "scaler", "rng", "config"}`, where `model` is the state dict of `GaussianDiffusion` (the official
`*_gen.pth` layout: `denoise_fn.*` plus the schedule buffers), `ema` the state dict of the averaged network (None
without `train.ema_scheduler`), `scaler` the fp16 gradient scaler, and `rng` the torch RNG states that exact
resumption needs. A `latest` text file in the same folder names the newest complete checkpoint; it is replaced
atomically after the checkpoint is on disk. Sampling uses the EMA weights when a checkpoint has them.

`performance` switches (channels_last, autocast, compile) act through `model.net_runner.NetRunner`, which the
training step and the sampling loop call instead of the bare network; with all switches off it is the plain fp32
network.

Official checkpoints (`<prefix>_gen.pth`, optionally `<prefix>_opt.pth`) load strictly in the official-compatible
configuration (`model.tmfa.placement: "all_channels"`, official U-Net sizes).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import EMASchedulerConfig, ModelConfig, TFSDiffConfig, config_to_dict
from core.distributed import DistInfo, any_rank, gather_objects
from model.checkpoint_io import (CHECKPOINT_VERSION, CheckpointError, read_checkpoint, read_official_training_state,
                                 read_official_weights, resolve_checkpoint, sampling_weights, write_checkpoint)
from model.diffusion import GaussianDiffusion
from model.losses import build_loss
from model.net_runner import NetRunner, prepare_net
from model.residual import Residual
from model.schedule import NoiseSchedule
from model.unet import UNet, init_weights

log = logging.getLogger("tfsdiff")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def build_diffusion(cfg: ModelConfig) -> GaussianDiffusion:
    """The network of `cfg` (initialised as `cfg.init`) wrapped in the diffusion process of the train schedule."""
    u = cfg.unet
    net = UNet(in_channel=u.in_channel, out_channel=u.out_channel, inner_channel=u.inner_channel,
               norm_groups=u.norm_groups, channel_mults=u.channel_multiplier, attn_res=u.attn_res,
               res_blocks=u.res_blocks, dropout=u.dropout, image_size=cfg.diffusion.image_size,
               use_affine_level=u.use_affine_level, tmfa_placement=cfg.tmfa.placement,
               tmfa_reduction=cfg.tmfa.reduction)
    init_weights(net, cfg.init)
    return GaussianDiffusion(net, NoiseSchedule.from_spec(cfg.beta_schedule.train), channels=cfg.diffusion.channels,
                             clip_denoised=cfg.diffusion.clip_denoised,
                             timestep_sampling=cfg.diffusion.timestep_sampling,
                             max_step=cfg.diffusion.train_max_step, zero_start=cfg.diffusion.train_zero_start)


class WeightEMA:
    """Exponential moving average of a network's weights, driven by `train.ema_scheduler` (SR3 key names).

    After optimisation step s (1-based): while s <= step_start_ema the average copies the weights; afterwards,
    every `update_ema_every` steps, ema <- decay * ema + (1 - decay) * weights. Buffers are copied. The averaged
    network is always in eval mode and never requires gradients.
    """

    def __init__(self, net: nn.Module, cfg: EMASchedulerConfig) -> None:
        self.cfg = cfg
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        copy_all = step <= self.cfg.step_start_ema
        if not copy_all and step % self.cfg.update_ema_every != 0:
            return
        for avg, weight in zip(self.net.parameters(), net.parameters(), strict=True):
            if copy_all:
                avg.copy_(weight)
            else:
                avg.lerp_(weight, 1.0 - self.cfg.ema_decay)
        for avg, value in zip(self.net.buffers(), net.buffers(), strict=True):
            avg.copy_(value)

    @torch.no_grad()
    def copy_from(self, net: nn.Module) -> None:
        """Restart the average at the weights of `net`."""
        self.net.load_state_dict(net.state_dict())


class TFSDiffModel:
    """Network, diffusion, loss, Adam optimiser and optional weight EMA, with train step and checkpointing."""

    def __init__(self, cfg: TFSDiffConfig, device: torch.device, device_ids: list[int] | None = None,
                 dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.dist = dist_info or DistInfo()
        self.diffusion = build_diffusion(cfg.model).to(device)
        net = prepare_net(self.diffusion.denoise_fn, cfg.performance)
        self.parallel_net: nn.Module = net
        if self.dist.enabled:
            local = [device.index] if device.type == "cuda" else None
            self.parallel_net = nn.parallel.DistributedDataParallel(net, device_ids=local)
        elif device_ids:
            self.parallel_net = nn.DataParallel(net, device_ids=device_ids)
        self.train_runner = NetRunner(self.parallel_net, cfg.performance, device)
        ema_cfg = cfg.train.ema_scheduler
        self.ema = WeightEMA(net, ema_cfg) if ema_cfg is not None else None
        self._sampling_runner: NetRunner | None = None
        self.optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.optimizer.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.performance.autocast == "fp16")
        loss = cfg.model.loss
        self.loss_fn = build_loss(loss.type, loss.lambda_mse, loss.lambda_ssim, loss.ssim_window)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.residual = Residual.from_config(cfg.model.diffusion)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.diffusion.denoise_fn.parameters())

    @property
    def size_multiple(self) -> int:
        """Image sides the U-Net takes without padding are multiples of this (2 per downsampling level)."""
        return 2 ** (len(self.cfg.model.unet.channel_multiplier) - 1)

    @property
    def sampling_net(self) -> NetRunner:
        """What sampling calls: the EMA network when there is one, else the trained one, with the switches."""
        module = self.ema.net if self.ema is not None else self.diffusion.denoise_fn
        if self._sampling_runner is None or self._sampling_runner.module is not module:
            self._sampling_runner = NetRunner(module, self.cfg.performance, self.device)
        return self._sampling_runner

    def train_step(self, x0: torch.Tensor, condition: torch.Tensor, base: torch.Tensor | None = None, *,
                   batches_per_epoch: int | None = None) -> dict[str, float]:
        """Optimisation step `self.step + 1` on a batch, then the EMA update; then `step` counts it, and with
        `batches_per_epoch` (the loader's batches per epoch) so do `batch_in_epoch` and `epoch`, which a checkpoint
        records for exact resumption.

        With `model.diffusion.residual_base`, `base` is that rule's image of the batch (`FusionBatch.base`): the
        diffusion noises and denoises the residual s (x0 - base), s = `residual_scale`, and the loss compares
        base + x0_hat / s with x0 (`model.residual`), so the PSF loss's SSIM term still measures the fused image.
        Raises NonFiniteLossError before touching the weights (and the counters).
        """
        if (base is None) != (self.residual.rule is None):
            raise ValueError("train_step needs a base image exactly when model.diffusion.residual_base is set")
        self.diffusion.train()
        shard = None
        if self.dist.enabled:
            global_batch = self.cfg.datasets.train.batch_size
            shard = (global_batch, self.dist.shard(global_batch))
        diffused = self.residual.to_residual(x0, base)
        terms = self.diffusion.training_terms(diffused, condition, self.generator, self.train_runner, shard)
        if base is not None:
            terms = dataclasses.replace(terms, x0_hat=self.residual.from_residual(terms.x0_hat, base))
        losses = self.loss_fn(terms, x0)
        values = {name: float(v.detach()) for name, v in losses.items()}
        finite = all(math.isfinite(v) for v in values.values())
        if any_rank(not finite, self.dist, self.device):
            raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}: {values}"
                                     + (f" (rank {self.dist.rank})" if self.dist.enabled else ""))
        self._set_lr(self.cfg.train.optimizer.lr_at(self.step))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.diffusion.denoise_fn, self.step + 1)
        self.step += 1
        if batches_per_epoch is not None:
            self.batch_in_epoch += 1
            if self.batch_in_epoch == batches_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return values

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict. Under DDP every rank must call it (it gathers each rank's RNG state)."""
        rng = {"torch": torch.get_rng_state(), "train_generator": self.generator.get_state()}
        if self.dist.enabled:
            rng["torch_per_rank"] = gather_objects(torch.get_rng_state(), self.dist)
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": "tfsdiff", "version": CHECKPOINT_VERSION, "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "model": self.diffusion.state_dict(),
                "ema": None if self.ema is None else self.ema.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                "config": config_to_dict(self.cfg)}

    def save(self, folder: Path | None) -> Path | None:
        """Write `I{step}_E{epoch}.pth` atomically, then point `latest` at it; first remove the temporary files
        that killed saves left in `folder` (logged): `model.checkpoint_io.write_checkpoint`.

        Under DDP every rank calls it; only rank 0 (the one given a folder) writes.
        """
        state = self.checkpoint()
        return None if folder is None else write_checkpoint(state, folder)

    def load(self, path: str | Path, weights_only: bool = False, use_ema: bool = True) -> None:
        """Load ours or an official checkpoint.

        `weights_only` (validation/inference) skips optimiser, epoch position and RNG (step and epoch are kept for
        the logs) and loads the weights to sample with (`load_sampling_weights`): the checkpoint's EMA weights when
        it has them and `use_ema`, else its trained weights. A full load (resuming training) restores the EMA too; a
        checkpoint without one starts the EMA at its weights. (To sample only, `model.fuser.Fuser.from_checkpoint`
        builds no optimiser at all.)
        """
        if weights_only:
            loaded = load_sampling_weights(self.diffusion, self.cfg, path, use_ema)
            if loaded.official:
                self._restart_ema(f"{loaded.location} is an official checkpoint without EMA weights")
                return
            self.step, self.epoch = loaded.step, loaded.epoch
            self._restart_ema("")
            return
        kind, location = resolve_checkpoint(path)
        if kind == "official":
            self._load_official(location)
            self._restart_ema(f"{location} is an official checkpoint without EMA weights")
            return
        state = read_checkpoint(location)
        check_network_config(self.cfg, state.get("config", {}), location)
        ema_state = state.get("ema")
        load_diffusion_state(self.diffusion, state["model"], location)
        self.step, self.epoch = state["step"], state["epoch"]
        if state.get("release"):
            raise CheckpointError(f"{location} holds released weights only: it samples (infer.py, sr.py -p val) "
                                  "but cannot resume training, which needs a training checkpoint; to fine-tune it, "
                                  "start a new run from it with path.init_weights or sr.py --init-weights")
        missing = [key for key in ("optimizer", "batch_in_epoch", "rng") if key not in state]
        if missing:
            raise CheckpointError(f"{location} lacks the training state ({', '.join(missing)}) that resuming needs: "
                                  "pass a checkpoint written by sr.py -p train")
        if self.ema is not None and ema_state is not None:
            self.ema.net.load_state_dict(ema_state)
        elif self.ema is not None:
            self._restart_ema(f"{location} has no EMA weights")
        elif ema_state is not None:
            log.warning("%s has EMA weights but train.ema_scheduler is not set: training continues without EMA",
                        location)
        self._load_optimizer(state["optimizer"], location)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.batch_in_epoch = state["batch_in_epoch"]
        per_rank = state["rng"].get("torch_per_rank")
        own = per_rank[self.dist.rank] if per_rank and len(per_rank) == self.dist.world_size else None
        torch.set_rng_state(own if own is not None else state["rng"]["torch"])
        self.generator.set_state(state["rng"]["train_generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def init_from(self, path: str | Path) -> Path:
        """Start a new run from the network weights of `path` (`path.init_weights`, `sr.py --init-weights`): a
        release, a training checkpoint (ours, a file or a folder) or an official one. The network config must be the
        checkpoint's (`check_network_config`, `load_diffusion_state`: the errors of loading for sampling). A release
        holds its EMA weights as its model: the trained weights and the EMA both start at them. A training checkpoint
        gives its trained weights and its EMA (the EMA starts at the weights when it has none). Nothing else is
        read: the optimiser stays fresh, `step`, `epoch` and `batch_in_epoch` stay 0 and the RNGs stay seeded by
        the config. Returns the file (official: the prefix) the weights came from."""
        if self.step or self.epoch or self.batch_in_epoch:
            raise RuntimeError("init_from starts a new run: call it on a fresh model")
        kind, location = resolve_checkpoint(path)
        if kind == "official":
            gen, state = read_official_weights(location)
            load_diffusion_state(self.diffusion, state, gen)
            self._restart_ema("")
            return location
        state = read_checkpoint(location)
        check_network_config(self.cfg, state.get("config", {}), location)
        load_diffusion_state(self.diffusion, state["model"], location)
        ema_state = state.get("ema")
        if self.ema is not None and ema_state is not None:
            self.ema.net.load_state_dict(ema_state)
        else:
            self._restart_ema("")
            if self.ema is None and ema_state is not None:
                log.warning("%s has EMA weights but train.ema_scheduler is not set: training starts from its trained "
                            "weights without EMA", location)
        return location

    def _load_optimizer(self, state: dict, location: Path) -> None:
        """Adam's moments and step counts from `state` (call it once `self.step` is loaded); the learning rate stays
        the config's (`train.optimizer.lr_at(step)`), so a run resumed with a new rate or new milestones trains at
        it."""
        self.optimizer.load_state_dict(state)
        lr = self.cfg.train.optimizer.lr_at(self.step)
        saved = sorted({group["lr"] for group in self.optimizer.param_groups})
        if saved != [lr]:
            log.info("learning rate %s (train.optimizer at step %d) instead of the %s saved in %s",
                     lr, self.step, ", ".join(map(str, saved)), location)
        self._set_lr(lr)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _restart_ema(self, reason: str) -> None:
        """Make the EMA (if configured) equal to the loaded weights, so sampling uses exactly those."""
        if self.ema is None:
            return
        self.ema.copy_from(self.diffusion.denoise_fn)
        if reason:
            log.info("%s: the EMA starts at its weights", reason)

    def _load_official(self, prefix: Path) -> None:
        """The weights of an official checkpoint and, when it has its `_opt.pth`, Adam's state and its position."""
        gen, state = read_official_weights(prefix)
        load_diffusion_state(self.diffusion, state, gen)
        training = read_official_training_state(prefix)
        if training is None:
            return
        opt, opt_state = training
        self.step, self.epoch = int(opt_state["iter"]), int(opt_state["epoch"])
        self._load_optimizer(opt_state["optimizer"], opt)
        log.info("resumed official training state %s at iteration %d, epoch %d (RNG states are not in official "
                 "checkpoints, so the continuation is not bit-exact)", opt, self.step, self.epoch)


def check_network_config(cfg: TFSDiffConfig, saved: dict, location: Path) -> None:
    """CheckpointError unless the config `saved` in the checkpoint at `location` has the task (`model.task`; a
    checkpoint from before the key was a fusion model), the network (`model.unet`, `model.tmfa`) and the residual
    parametrisation of `cfg`."""
    saved_model = saved.get("model", {})
    current = config_to_dict(cfg)["model"]
    saved_task = saved_model.get("task", "fusion")
    if saved_task != current["task"]:
        raise CheckpointError(f"{location} is a model of task {saved_task!r}, but the config has model.task = "
                              f"{current['task']!r}")
    for key in ("unet", "tmfa"):
        if saved_model.get(key) != current[key]:
            raise CheckpointError(f"{location} was trained with model.{key} = {saved_model.get(key)}, "
                                  f"but the config has model.{key} = {current[key]}")
    for key, default in (("residual_base", None), ("residual_scale", 1.0)):
        saved_value = saved_model.get("diffusion", {}).get(key, default)
        if saved_value != current["diffusion"][key]:
            raise CheckpointError(f"{location} was trained with model.diffusion.{key} = {saved_value}, but the "
                                  f"config has {current['diffusion'][key]}")


def load_diffusion_state(diffusion: GaussianDiffusion, state: dict[str, torch.Tensor], location: Path) -> None:
    """Load `state` (the `GaussianDiffusion` layout) strictly into `diffusion`; CheckpointError naming `location`
    when its noise schedule or its network differs."""
    betas = state.get("betas")
    if not isinstance(betas, torch.Tensor) or betas.shape != diffusion.betas.shape or not torch.allclose(
            betas.to(diffusion.betas), diffusion.betas, rtol=1e-5, atol=1e-9):
        raise CheckpointError(f"{location}: its noise schedule differs from model.beta_schedule.train")
    try:
        diffusion.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{location} does not fit the configured network (official checkpoints need "
                              f"model.tmfa.placement 'all_channels' and the official U-Net sizes): {err}") from err


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """Where sampling weights came from: the checkpoint file (official: the prefix), and its training position (0, 0
    for an official checkpoint, whose position is in its `_opt.pth`)."""

    location: Path
    official: bool
    step: int = 0
    epoch: int = 0


def load_sampling_weights(diffusion: GaussianDiffusion, cfg: TFSDiffConfig, checkpoint: str | Path,
                          use_ema: bool = True) -> LoadedWeights:
    """Load into `diffusion` (built from `cfg`) the weights to sample with from ours or an official checkpoint: its
    EMA weights when it has them and `use_ema`, else its trained weights. Reads nothing of the training state."""
    kind, location = resolve_checkpoint(checkpoint)
    if kind == "official":
        gen, state = read_official_weights(location)
        load_diffusion_state(diffusion, state, gen)
        return LoadedWeights(location, official=True)
    saved = read_checkpoint(location)
    check_network_config(cfg, saved.get("config", {}), location)
    weights, ema = sampling_weights(saved, use_ema)
    load_diffusion_state(diffusion, weights, location)
    if ema:
        log.info("sampling with the EMA weights of %s", location)
    return LoadedWeights(location, official=False, step=saved["step"], epoch=saved["epoch"])
