"""The fuser: a trained network and everything sampling needs, apart from training.

A `Fuser` holds

- the network to sample with (the EMA weights when there are any), behind the performance switches (`NetRunner`),
- the table of the validation noise schedule (`model.beta_schedule.val`; the training schedule is never used),
- the sampler config (`model.sampler`, or the one passed to `fuse`) and the clipping of the diffusion,
- the residual parametrisation (`model.residual`: base rule and scale), and
- the device and the seed of its sampling generator.

It is built from a checkpoint or released weights (`Fuser.from_checkpoint`) without any optimiser, gradient scaler
or loss, or from a `TFSDiffModel` in training (`Fuser.from_model`, which shares its weights, for validation). Its
one call, `fuse`, turns a batch of sources into fused images: at the batch's own size (the U-Net is fully
convolutional: a size that is not a multiple of its downsampling factor is padded by reflection and the result cropped
back, never resized), with the network in eval mode (its mode is restored afterwards), the mean of `samples` samples,
optionally with the denoising-process strip. A residual model samples the scaled residual; it is divided by the scale,
the rule's image of the whole bicubic-upsampled sources is added (to every frame of the strip too) and the sum clipped
to [-1, 1] (`model.residual`).

With `tiling` set (`model.tiling.Tiling`: tile side and overlap), the network runs on overlapping tiles of the padded
condition and each step's eps is the tiles' blended prediction (`model.tiling.TiledNet`), so an image of any size
samples in the memory of one tile; the noise, the residual base and the clip bounds stay whole-image tensors, so the
seeded noise is the same as without tiles. Without tiling, or when one tile covers the image, nothing changes.

With `keep_samples`, `fuse` also keeps each of the `samples` fused images (each sample turned into an image on its
own, as a one-sample run would: base + sample / scale, clipped to [-1, 1]), and `FusedBatch.spread` gives their
per-pixel spread (the uncertainty map of `infer.py --uncertainty`). The mean image is the same, bit for bit, with or
without `keep_samples`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from core.config import SamplerConfig, TFSDiffConfig
from core.device import select_device
from data.fusion_dataset import FusionBatch
from data.fusion_rules import fuse as fuse_with
from data.images import to_tensor
from data.sr_dataset import SRBatch
from metrics.registry import tensor2img
from model.model import TFSDiffModel, build_diffusion, load_sampling_weights
from model.net_runner import NetRunner, prepare_net
from model.residual import Residual
from model.samplers import Sampler, build_sampler, sample_loop
from model.schedule import NoiseSchedule
from model.tiling import TiledNet, TileGrid, Tiling

log = logging.getLogger("tfsdiff")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right, by reflection (edge replication where the image is too small to
    reflect), to the next multiple of `multiple`; unchanged when H and W already are multiples."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def case_sources(batch: FusionBatch | SRBatch) -> list[list[np.ndarray]]:
    """Each case's sources (the bicubic-upsampled inputs: three for fusion, one for SR3) as (H, W, 3) uint8
    images."""
    return [[tensor2img(src[i]) for src in batch.sources] for i in range(len(batch))]


def residual_base(rule: str | None, sources: list[list[np.ndarray]], device: torch.device) -> torch.Tensor | None:
    """(B, 3, H, W) in [-1, 1]: `rule` applied to each case's three uint8 sources, as `FusionDataset` makes
    `FusionBatch.base` for training; None without a rule."""
    if rule is None:
        return None
    return torch.stack([to_tensor(fuse_with(rule, case)) for case in sources]).to(device)


LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B (the grey of core.grey.to_grey)


@dataclass(frozen=True)
class FusedBatch:
    """What `Fuser.fuse` returns: the fused images (B, 3, H, W) in [-1, 1] and, when asked for, the denoising process
    (K, B, 3, H, W): x_T, about ten intermediate states and the result last (as images for a residual model), and the
    individual fused images of the samples (S, B, 3, H, W) in [-1, 1] whose mean `images` is."""

    images: torch.Tensor
    process: torch.Tensor | None = None
    samples: torch.Tensor | None = None

    def image(self, index: int) -> np.ndarray:
        """The fused image of case `index` as (H, W, 3) uint8."""
        return tensor2img(self.images[index])

    def strip(self, index: int) -> np.ndarray:
        """The process strip of case `index`: its frames side by side, (H, K W, 3) uint8."""
        if self.process is None:
            raise ValueError("no denoising process: fuse with process=True")
        return np.concatenate([tensor2img(frame[index]) for frame in self.process], axis=1)

    def spread(self, index: int) -> np.ndarray:
        """The uncertainty map of case `index`, (H, W) float64 in grey levels: per pixel, the standard deviation (over
        the S samples, divided by S) of the luminance 0.299 R + 0.587 G + 0.114 B of each sample's fused image, its
        values 0..255 (unrounded). ValueError without the samples or with one sample (no spread)."""
        if self.samples is None:
            raise ValueError("no individual samples: fuse with keep_samples=True")
        if len(self.samples) < 2:
            raise ValueError("the spread needs at least 2 samples; one sample has none")
        images = (self.samples[:, index].detach().double().cpu() + 1.0) * 127.5  # (S, 3, H, W) in grey levels
        weights = torch.tensor(LUMINANCE, dtype=torch.float64)[:, None, None]
        luminance = (images * weights).sum(dim=1)  # (S, H, W)
        return luminance.std(dim=0, unbiased=False).numpy()


class Fuser:
    """A network that fuses, with its sampling setup (module docstring); no optimiser, scaler or loss."""

    def __init__(self, cfg: TFSDiffConfig, net: NetRunner, device: torch.device, *, step: int = 0,
                 epoch: int = 0) -> None:
        model = cfg.model
        self.cfg = cfg
        self.net = net
        self.device = device
        self.schedule = NoiseSchedule.from_spec(model.beta_schedule.val)
        self.sampler = model.sampler
        self.clip_denoised = model.diffusion.clip_denoised
        self.residual = Residual.from_config(model.diffusion)
        self.channels = model.diffusion.channels
        self.size_multiple = 2 ** (len(model.unet.channel_multiplier) - 1)  # 2 per U-Net downsampling level
        self.seed = cfg.seed
        self.step, self.epoch = step, epoch  # the training position of the weights, for the logs
        self._chains: dict[SamplerConfig, Sampler] = {}
        self.tiling: Tiling | None = None  # sample tile by tile (model.tiling) when set; None: the whole image at once

    @classmethod
    def from_checkpoint(cls, cfg: TFSDiffConfig, checkpoint: str | Path, *, device: torch.device | None = None,
                        use_ema: bool = True) -> Fuser:
        """The network of `cfg` with the sampling weights of `checkpoint` (ours, released or official; its EMA
        weights when it has them and `use_ema`), on `device` (default: the device of `cfg.gpu_ids`)."""
        if device is None:
            device, _, where = select_device(cfg.gpu_ids)
            log.info("%s", where)
        diffusion = build_diffusion(cfg.model).to(device)
        net = prepare_net(diffusion.denoise_fn, cfg.performance)
        loaded = load_sampling_weights(diffusion, cfg, checkpoint, use_ema)
        net.eval().requires_grad_(False)
        return cls(cfg, NetRunner(net, cfg.performance, device), device, step=loaded.step, epoch=loaded.epoch)

    @classmethod
    def from_model(cls, model: TFSDiffModel) -> Fuser:
        """The sampling network of a model in training (its EMA when it has one), shared, not copied."""
        return cls(model.cfg, model.sampling_net, model.device, step=model.step, epoch=model.epoch)

    def chain(self, sampler: SamplerConfig | None = None) -> tuple[SamplerConfig, Sampler]:
        """The sampler config (`sampler`, default the fuser's) and the sampler it builds on the val schedule."""
        settings = self.sampler if sampler is None else sampler
        if settings not in self._chains:
            self._chains[settings] = build_sampler(self.schedule, settings, self.clip_denoised)
        return settings, self._chains[settings]

    def generator(self) -> torch.Generator:
        """A generator on the fuser's device seeded with the config's seed (the global RNG is never used)."""
        return torch.Generator(device=self.device).manual_seed(self.seed)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        module = self.net.module
        was_training = module.training
        module.eval()
        try:
            yield
        finally:
            module.train(was_training)

    @torch.no_grad()
    def fuse(self, batch: FusionBatch | SRBatch, *, sampler: SamplerConfig | None = None,
             generator: torch.Generator | None = None, process: bool = False, progress: bool = True,
             keep_samples: bool = False) -> FusedBatch:
        """Fuse the sources of `batch` (its target is not used) as the module docstring says; for an SR3 model
        (`model.task: "sr3"`, an `SRBatch`) the "fused" images are the super-resolved images of its one source.

        `sampler` replaces the fuser's sampler config; `generator` (default: a fresh `generator()`) draws the noise,
        so one generator passed to successive calls samples a split as one sequence; `process` keeps the denoising
        process; `progress` shows the steps; `keep_samples` keeps each sample's fused image (`FusedBatch.samples`).
        """
        settings, chain = self.chain(sampler)
        generator = self.generator() if generator is None else generator
        batch = batch.to(self.device)
        base = None
        if self.residual.rule is not None:
            base = residual_base(self.residual.rule, case_sources(batch), batch.src1.device)
        kept: list[torch.Tensor] | None = [] if keep_samples else None
        with self._eval_mode():
            result = self._sample(batch.condition, base, chain, generator, process, progress, settings, kept)
        samples = torch.stack(kept) if kept is not None else None
        return FusedBatch(result[-1], result, samples) if process else FusedBatch(result, None, samples)

    def _sample(self, condition: torch.Tensor, base: torch.Tensor | None, chain: Sampler,
                generator: torch.Generator, process: bool, progress: bool, settings: SamplerConfig,
                kept: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Sample at the condition's own size: padded to the U-Net's size multiple, the result cropped back; the mean
        of `settings.samples` samples drawn one after another (frame by frame for the process), each chain started
        as `settings.start_from` says; for a residual model, the image of the residual, with each step's x0 clipped
        as `settings.clip` says. With `kept` (a list), each sample's own fused image (B, 3, H, W), clipped to
        [-1, 1], is appended to it."""
        h, w = condition.shape[-2:]
        padded = pad_to_multiple(condition, self.size_multiple)
        net = self.net
        if self.tiling is not None:
            grid = TileGrid.build(*padded.shape[-2:], self.tiling, self.size_multiple)
            if len(grid) > 1:  # one tile is the whole image: sampled without the wrapper, bit for bit as untiled
                net = TiledNet(self.net, grid, padded.device)
        bounds = None
        if base is not None and settings.clip == "image":
            bounds = self.residual.clip_bounds(pad_to_multiple(base, self.size_multiple))
        total: torch.Tensor | int = 0  # summed as sum() did, so the mean is bit for bit the same
        start = padded if settings.start_from == "condition" else None
        for _ in range(settings.samples):
            sample = sample_loop(net, chain, padded, generator, self.channels, continuous=process,
                                 progress=progress, bounds=bounds, start=start)
            total = total + sample
            if kept is not None:
                last = sample[-1] if process else sample
                kept.append(self.residual.to_image(last[..., :h, :w], base).clamp(-1.0, 1.0))
        return self.residual.to_image((total / settings.samples)[..., :h, :w], base)
