"""The TFS-Diff config schema: JSON configs (with ``//`` comments) as validated, frozen, typed dataclasses.

Parsing (`core.typed_json`) has no side effects: no folders are created and no environment variables are set.
Every error is a :class:`ConfigError` whose message names the source file and the full key path.

Paths in a config file (`load_config`; docs/config.md, "Paths"): the paths a config reads from (`path.pretrained`,
`path.resume_state`, `path.init_weights`, `datasets.<split>.dataroot`, `datasets.embedded.root`) are resolved when
the file is loaded, so a config means the same files whatever the current directory. A relative path (``~`` is the
home folder) resolves against the *project root* of the file that wrote it (the config itself or one of its base
configs): the nearest folder, from the file's own folder upwards, that holds a `.tfsdiff-root` marker file. The
repository root holds one, so a committed config's ``pretrained/...`` or ``datasets/...`` means the repository's
folder; a config outside any marked folder resolves against its own folder. The loaded config holds absolute paths.
`path.experiments_root`, where runs are written, is an output folder: like every output of the commands it stays
relative to the current directory. `parse_config` (a dict, no file) takes every path as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from core.registry import LOSSES, SAMPLERS, TASKS, WEIGHT_FREE_FUSION, Registry
from core.typed_json import SR3_ALIAS as _SR3_ALIAS
from core.typed_json import ConfigError, parse_dataclass, parse_json_file, to_plain


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(key, reason)


def _check_min(value: int, minimum: int, key: str) -> None:
    _check(value >= minimum, key, f"expected an integer >= {minimum}, got {value}")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds alike
MAX_SAMPLES = 1000  # model.sampler.samples: beyond this the mean no longer changes, only the run time grows


def _check_seed(value: int, key: str) -> None:
    _check(0 <= value <= MAX_SEED, key, f"expected an integer from 0 to {MAX_SEED}, got {value}")


def _spec(registry: Registry[Any], name: str, key: str) -> Any:
    """The registry's spec of ``name`` (core.registry); ConfigError at ``key`` for an unknown name."""
    names = registry.names()
    _check(name in names, key, f"expected one of {', '.join(map(repr, names))}, got {name!r}")
    return registry.get(name)


def _types_where(registry: Registry[Any], has: str) -> str:
    """The registry's names whose spec has the true attribute ``has``, as "'a' or 'b'"."""
    return " or ".join(repr(name) for name, spec in registry.items() if getattr(spec, has))


# ----------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True, kw_only=True)
class PathConfig:
    """Where experiment outputs go, which training state to resume from, and which weights sample by default."""

    experiments_root: str = "runs"
    resume_state: str | None = field(default=None, metadata={_SR3_ALIAS: ("", None)})  # "" means None (SR3 writes "")
    pretrained: str | None = None  # released weights (model/release.py) for sampling when no checkpoint is given
    # training: start a new run (step 0, fresh optimiser) from these weights, a release or a training checkpoint
    # (its weights and its EMA); resume_state instead continues a run
    init_weights: str | None = field(default=None, metadata={_SR3_ALIAS: ("", None)})

    def __post_init__(self) -> None:
        _check(self.init_weights is None or self.resume_state is None, "init_weights",
               f"{self.init_weights} starts a new run from its weights, but resume_state {self.resume_state} "
               "continues a run: set one of them to null")

    def sampling_checkpoint(self) -> str | None:
        """The checkpoint `sr.py -p val` and `infer.py` sample with when none is passed on the command line."""
        return self.resume_state or self.pretrained


@dataclass(frozen=True, kw_only=True)
class EmbeddedConfig:
    """The embedded dataset, built on first use into ``root``."""

    root: str
    r_resolution: int  # HR size, power of two >= 16
    scales: tuple[int, ...] = (2, 4, 8)  # each in {2, 4, 8}; so each divides r_resolution
    seed: int = 0

    def __post_init__(self) -> None:
        r = self.r_resolution
        _check(r >= 16 and r & (r - 1) == 0, "r_resolution", f"expected a power of two >= 16, got {r}")
        _check(len(self.scales) > 0, "scales", "expected at least one scale")
        for i, scale in enumerate(self.scales):
            _check(scale in (2, 4, 8), f"scales[{i}]", f"expected one of 2, 4, 8, got {scale}")
        _check_seed(self.seed, "seed")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """One split (train/val/test) of LR sources and HR targets."""

    dataroot: str
    l_resolution: int
    r_resolution: int  # must be a multiple of l_resolution, l < r
    batch_size: int = 1  # >= 1
    num_workers: int = 0  # >= 0
    use_shuffle: bool = True
    data_len: int = -1  # -1: all; else >= 1
    patch_size: int | None = None  # train only: side of aligned random HR crops, a multiple of r / l; None: whole
    cache_images: bool = False  # keep every decoded image in memory (per loader process) after its first read

    def __post_init__(self) -> None:
        low, high = self.l_resolution, self.r_resolution
        _check_min(low, 1, "l_resolution")
        _check(high > low and high % low == 0, "r_resolution",
               f"expected a multiple of l_resolution {low} larger than it, got {high}")
        _check_min(self.batch_size, 1, "batch_size")
        _check_min(self.num_workers, 0, "num_workers")
        _check(self.data_len == -1 or self.data_len >= 1, "data_len",
               f"expected -1 (all) or an integer >= 1, got {self.data_len}")
        scale, patch = high // low, self.patch_size
        _check(patch is None or 1 <= patch <= high and patch % scale == 0, "patch_size",
               f"expected null or a multiple of the scale r_resolution / l_resolution = {scale} from {scale} to "
               f"r_resolution {high}, got {patch}")


@dataclass(frozen=True, kw_only=True)
class DatasetsConfig:
    """All dataset splits, plus the optional embedded dataset to build."""

    embedded: EmbeddedConfig | None = None  # when given, the embedded dataset is built on first use into `root`
    train: DatasetConfig
    val: DatasetConfig
    test: DatasetConfig | None = None

    def __post_init__(self) -> None:
        for split in ("val", "test"):
            section = getattr(self, split)
            _check(section is None or section.patch_size is None, f"{split}.patch_size",
                   "only datasets.train crops patches (validation and test run on whole images); remove it")


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """The SR3 noise-prediction U-Net."""

    in_channel: int = 12  # must equal 3 * sources + out_channel (model.task "fusion": 9 + 3, "sr3": 3 + 3)
    out_channel: int = 3
    inner_channel: int = 64
    norm_groups: int = 32  # must divide inner_channel * m for every m in channel_multiplier
    channel_multiplier: tuple[int, ...] = (1, 2, 4, 8, 8)
    attn_res: tuple[int, ...] = (16,)  # each one of image_size / 2**k, k < len(channel_multiplier)
    res_blocks: int = 2  # >= 1
    dropout: float = 0.0  # in [0, 1)
    use_affine_level: bool = False  # FeatureWiseAffine: False = additive (official), True = scale and shift

    def __post_init__(self) -> None:
        _check_min(self.out_channel, 1, "out_channel")
        _check_min(self.inner_channel, 1, "inner_channel")
        _check_min(self.norm_groups, 1, "norm_groups")
        _check(len(self.channel_multiplier) > 0, "channel_multiplier", "expected at least one multiplier")
        for i, mult in enumerate(self.channel_multiplier):
            _check_min(mult, 1, f"channel_multiplier[{i}]")
            width = self.inner_channel * mult
            _check(width % self.norm_groups == 0, "norm_groups",
                   f"{self.norm_groups} does not divide inner_channel * channel_multiplier[{i}] = {width}")
        _check_min(self.res_blocks, 1, "res_blocks")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"expected a number in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class TMFAConfig:
    """The tri-modal fusion attention module."""

    placement: Literal["condition", "all_channels", "off"] = "condition"  # paper / official code / "w/o TMFA"
    reduction: int = 4  # >= 1

    def __post_init__(self) -> None:
        _check_min(self.reduction, 1, "reduction")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """One noise (beta) schedule."""

    schedule: Literal["linear", "quad", "cosine", "warmup10", "warmup50", "const", "jsd"]
    n_timestep: int  # >= 2
    linear_start: float = 1e-6  # > 0
    linear_end: float = 1e-2  # >= linear_start, < 1

    def __post_init__(self) -> None:
        _check_min(self.n_timestep, 2, "n_timestep")
        _check(self.linear_start > 0, "linear_start", f"expected a number > 0, got {self.linear_start}")
        _check(self.linear_start <= self.linear_end < 1, "linear_end",
               f"expected a number in [linear_start {self.linear_start}, 1), got {self.linear_end}")


@dataclass(frozen=True, kw_only=True)
class BetaScheduleConfig:
    """The training and validation noise schedules."""

    train: ScheduleConfig
    val: ScheduleConfig


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """The Gaussian diffusion process."""

    image_size: int  # must equal datasets.train.r_resolution and datasets.val.r_resolution
    channels: int = 3  # must equal model.unet.out_channel
    clip_denoised: bool = True
    timestep_sampling: Literal["per_sample", "per_batch"] = "per_sample"  # per_batch = SR3/official (one t)
    # None (paper, official): diffuse the fused image. A rule of data.fusion_rules: diffuse the residual between the
    # target and that rule applied to the bicubic-upsampled sources, and add the rule's image back after sampling
    residual_base: Annotated[str, WEIGHT_FREE_FUSION] | None = None
    # the residual is multiplied by this before it is diffused (and divided after sampling), so that its spread
    # matches the [-1, 1] range that the noise schedule and the clipping of x0 are made for
    residual_scale: float = 1.0
    # None (paper, official): training draws t from 1..T. A number S: from 1..S only, for a model that is only ever
    # sampled from step S down (model.sampler.start_step = S); it never learns the noisier levels
    train_max_step: int | None = None
    # 0: off. A fraction f of each training batch (needs train_max_step S): instead of noising x0 to step S, start
    # from a zero signal noised to it, exactly as a chain with model.sampler.start_step = S starts, and learn x0 there
    train_zero_start: float = 0.0

    def __post_init__(self) -> None:
        _check_min(self.image_size, 1, "image_size")
        if self.train_max_step is not None:
            _check_min(self.train_max_step, 1, "train_max_step")
        _check(0.0 <= self.train_zero_start < 1.0, "train_zero_start",
               f"expected 0 <= f < 1, got {self.train_zero_start}")
        _check(self.train_zero_start == 0.0 or self.train_max_step is not None, "train_zero_start",
               "needs train_max_step (the step the chain starts from)")
        _check(self.residual_scale > 0, "residual_scale", f"expected a number > 0, got {self.residual_scale}")
        _check(self.residual_scale == 1.0 or self.residual_base is not None, "residual_scale",
               "only used with residual_base; remove it or set residual_base")


def _loss_keys(loss_type: str) -> tuple[str, ...]:
    """The tunable loss keys a loss type reads (its `core.registry.LOSSES` spec); any other one is an error."""
    return _spec(LOSSES, loss_type, "type").keys


def _unused_loss_reason(name: str, loss_type: str) -> str:
    users = " or ".join(repr(t) for t, spec in LOSSES.items() if name in spec.keys)
    return f"only used by type {users}; remove it for type {loss_type!r}"


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """The training loss (psf = lambda_mse * MSE + lambda_ssim * (1 - SSIM))."""

    type: Annotated[str, LOSSES] = "psf"  # a name of core.registry.LOSSES (model/losses.py)
    lambda_mse: float = 1.0  # in (0, 1]
    lambda_ssim: float = 0.1  # in (0, 1]; only for type "psf"
    ssim_window: int = 11  # odd, >= 3; only for type "psf"

    def __post_init__(self) -> None:
        for name in ("lambda_mse", "lambda_ssim"):
            value = getattr(self, name)
            _check(0 < value <= 1, name, f"expected a number in (0, 1], got {value}")
        _check(self.ssim_window >= 3 and self.ssim_window % 2 == 1, "ssim_window",
               f"expected an odd integer >= 3, got {self.ssim_window}")
        keys = _loss_keys(self.type)
        for f in dataclasses.fields(self):
            if f.name != "type" and f.name not in keys:
                _check(getattr(self, f.name) == f.default, f.name, _unused_loss_reason(f.name, self.type))

    def check_given_keys(self, keys: tuple[str, ...]) -> None:
        """A tunable key of another loss type is an error even when it has its default value."""
        for name in keys:
            _check(name == "type" or name in _loss_keys(self.type), name, _unused_loss_reason(name, self.type))

    def plain_keys(self) -> tuple[str, ...]:
        return ("type", *_loss_keys(self.type))


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How validation and inference sample: full-chain DDPM, respaced DDPM or DDIM over `steps` kept steps."""

    # a name of core.registry.SAMPLERS (model/samplers.py); ddpm = every step of the val schedule (the reference)
    type: Annotated[str, SAMPLERS] = "ddpm"
    steps: int | None = None  # number of kept steps, 1..n_timestep; required for respaced and ddim, null for ddpm
    eta: float = 0.0  # DDIM stochasticity in [0, 1] (0 = deterministic); only for type "ddim"
    # draw this many samples one after another and return their mean (before any clipping to the image range):
    # an estimate of the posterior mean, which trades sample detail for PSNR/SSIM at `samples` times the cost
    samples: int = 1
    # respaced and ddim only: start the chain at this step of the val schedule (1..n_timestep) from a zero clean
    # signal noised to its level, sqrt(1 - alpha_bar) eps, instead of from pure noise at the last step (SDEdit-style;
    # for a residual model a zero residual is the base image); null: the whole chain
    start_step: int | None = None
    # what each step's estimate of x0 is clipped to (with model.diffusion.clip_denoised): "x0" = [-1, 1], SR3's
    # clip_denoised; for a residual model that is the scaled residual, so the fused image can depart from the base by
    # at most 1 / residual_scale of the range. "image" = x0 such that the fused image base + x0 / residual_scale
    # lies in [-1, 1], so the correction can reach the whole range. Both are the same for a model without a base.
    clip: Literal["x0", "image"] = "x0"
    # with start_step, the clean signal the chain starts from: "zero" (above) or "condition", the conditioning image
    # noised to the start step's level, gamma_S * condition + sqrt(1 - gamma_S^2) eps (SDEdit from the bicubic image;
    # only for a task conditioned on one image of the output's channels, SR3)
    start_from: Literal["zero", "condition"] = "zero"

    def __post_init__(self) -> None:
        spec = _spec(SAMPLERS, self.type, "type")
        _check(self.start_from == "zero" or self.start_step is not None, "start_from",
               f"'{self.start_from}' sets what the chain starts from at start_step; set start_step too")
        _check(1 <= self.samples <= MAX_SAMPLES, "samples", f"expected an integer from 1 to {MAX_SAMPLES} (each "
               f"sample costs a whole sampling chain), got {self.samples}")
        if self.start_step is not None:
            _check(spec.uses_steps, "start_step", f"only for type {_types_where(SAMPLERS, 'uses_steps')}")
            _check(self.steps is None or self.steps <= self.start_step, "start_step",
                   f"must be at least steps ({self.steps}), got {self.start_step}")
        if not spec.uses_steps:
            spaced = next(name for name, other in SAMPLERS.items() if other.uses_steps)
            _check(self.steps is None, "steps", f"type {self.type!r} always runs the full chain; remove steps or use "
                   f"type {spaced!r} (got {self.steps})")
        else:
            _check(self.steps is not None, "steps", f"required for type {self.type!r}")
            _check_min(self.steps, 1, "steps")
        if spec.uses_eta:
            _check(0.0 <= self.eta <= 1.0, "eta", f"expected a number in [0, 1], got {self.eta}")
        else:
            _check(self.eta == 0.0, "eta",
                   f"only used by type {_types_where(SAMPLERS, 'uses_eta')}; remove it for type {self.type!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The task, the network, its initialisation, the diffusion process, the loss and the sampler."""

    # a name of core.registry.TASKS: "fusion" (TFS-Diff: three sources -> the fused image) or "sr3" (SR3: one
    # bicubic-upsampled image -> its high-resolution image, the first stage of the paper's sequential baselines)
    task: Annotated[str, TASKS] = "fusion"
    unet: UNetConfig
    tmfa: TMFAConfig = TMFAConfig()
    init: Literal["kaiming", "orthogonal"] = "kaiming"
    beta_schedule: BetaScheduleConfig
    diffusion: DiffusionConfig
    # factories: their defaults are checked against core.registry on first use, never while core.config is imported
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        self._check_task()
        steps, n_timestep = self.sampler.steps, self.beta_schedule.val.n_timestep
        _check(steps is None or steps <= n_timestep, "sampler.steps",
               f"{steps} exceeds beta_schedule.val.n_timestep {n_timestep}")
        start = self.sampler.start_step
        _check(start is None or start <= n_timestep, "sampler.start_step",
               f"{start} exceeds beta_schedule.val.n_timestep {n_timestep}")
        max_step, n_train = self.diffusion.train_max_step, self.beta_schedule.train.n_timestep
        _check(max_step is None or max_step <= n_train, "diffusion.train_max_step",
               f"{max_step} exceeds beta_schedule.train.n_timestep {n_train}")
        _check(max_step is None or start is not None and start <= max_step, "sampler.start_step",
               f"the chain must start at a step that training reaches: diffusion.train_max_step {max_step} trains "
               f"steps 1..{max_step} only, but the sampler starts at {start or 'the last step'}; set "
               f"sampler.start_step to at most {max_step}")

    def _check_task(self) -> None:
        """The network's input channels fit the task's sources; TMFA and a residual base only where it fuses."""
        task = _spec(TASKS, self.task, "task")
        unet = self.unet
        condition = 3 * task.sources
        what = "three 3-channel sources" if task.sources == 3 else f"{task.sources} 3-channel source(s)"
        _check(unet.in_channel == condition + unet.out_channel, "unet.in_channel",
               f"expected {condition} + out_channel = {condition + unet.out_channel} ({what} of task {self.task!r} "
               f"+ the noisy image), got {unet.in_channel}")
        _check(self.sampler.start_from == "zero" or condition == unet.out_channel, "sampler.start_from",
               f"'condition' starts the chain from the noised conditioning image, which needs one condition image of "
               f"the output's {unet.out_channel} channels (task 'sr3'); task {self.task!r} is conditioned on {what}")
        if not task.fuses:
            _check(self.tmfa.placement == "off", "tmfa.placement",
                   f"task {self.task!r} is conditioned on one image: it has no tri-modal attention; set "
                   f"model.tmfa.placement to 'off' (got {self.tmfa.placement!r})")
            _check(self.diffusion.residual_base is None, "diffusion.residual_base",
                   f"task {self.task!r} is conditioned on one image: a fusion rule of the sources is no base for it; "
                   f"set it to null (got {self.diffusion.residual_base!r})")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimiser."""

    type: Literal["adam"] = "adam"
    lr: float = 1e-4  # > 0
    lr_milestones: tuple[int, ...] = ()  # steps, increasing, >= 1; from each one on the rate is multiplied by lr_gamma
    lr_gamma: float = 0.1  # in (0, 1]

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"expected a number > 0, got {self.lr}")
        steps = self.lr_milestones
        _check(all(m >= 1 for m in steps) and all(a < b for a, b in zip(steps, steps[1:])), "lr_milestones",
               f"expected increasing steps >= 1, got {list(steps)}")
        _check(0 < self.lr_gamma <= 1, "lr_gamma", f"expected a number in (0, 1], got {self.lr_gamma}")

    def lr_at(self, step: int) -> float:
        """The rate of the optimisation step that follows ``step`` completed steps: ``lr * lr_gamma ** k`` with k the
        number of milestones <= ``step`` (PyTorch's MultiStepLR, as a pure function of the step, so a resumed run
        needs no scheduler state)."""
        return self.lr * self.lr_gamma ** sum(step >= m for m in self.lr_milestones)


@dataclass(frozen=True, kw_only=True)
class EMASchedulerConfig:
    """Exponential moving average of the weights (SR3 key names); sampling uses it when present."""

    step_start_ema: int = 0  # >= 0; up to this step the average copies the weights
    update_ema_every: int = 1  # >= 1; afterwards it is updated every this many steps
    ema_decay: float = 0.9999  # in [0, 1): ema = decay * ema + (1 - decay) * weights

    def __post_init__(self) -> None:
        _check_min(self.step_start_ema, 0, "step_start_ema")
        _check_min(self.update_ema_every, 1, "update_ema_every")
        _check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"expected a number in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training length, logging/validation/checkpoint frequencies, optimiser and optional weight EMA."""

    n_iter: int  # >= 1
    val_freq: int  # >= 1
    save_checkpoint_freq: int  # >= 1
    print_freq: int  # >= 1
    optimizer: OptimizerConfig = OptimizerConfig()
    ema_scheduler: EMASchedulerConfig | None = None  # null: no EMA

    def __post_init__(self) -> None:
        for name in ("n_iter", "val_freq", "save_checkpoint_freq", "print_freq"):
            _check_min(getattr(self, name), 1, name)


@dataclass(frozen=True, kw_only=True)
class PerformanceConfig:
    """Speed switches for training and sampling; all off is the plain fp32 path."""

    channels_last: bool = False  # NHWC memory format for the network and its inputs
    autocast: Literal["none", "bf16", "fp16"] = "none"  # mixed precision; fp16 needs a GPU
    compile: bool = False  # torch.compile the network (slow to start: minutes on a small CPU)


@dataclass(frozen=True, kw_only=True)
class TFSDiffConfig:
    """A whole TFS-Diff experiment."""

    name: str
    gpu_ids: tuple[int, ...] = field(default=(), metadata={_SR3_ALIAS: (None, ())})  # () -> CPU; null means ()
    seed: int = 0
    path: PathConfig = PathConfig()
    datasets: DatasetsConfig
    model: ModelConfig
    train: TrainConfig
    performance: PerformanceConfig = PerformanceConfig()

    def __post_init__(self) -> None:
        _check_seed(self.seed, "seed")
        _check(self.performance.autocast != "fp16" or bool(self.gpu_ids), "performance.autocast",
               "'fp16' needs a GPU (gpu_ids is empty); use 'bf16' on a CPU")
        unet, diffusion = self.model.unet, self.model.diffusion
        size = diffusion.image_size
        for split in ("train", "val"):
            r_res = getattr(self.datasets, split).r_resolution
            _check(size == r_res, "model.diffusion.image_size",
                   f"{size} differs from datasets.{split}.r_resolution {r_res}")
        _check(diffusion.channels == unet.out_channel, "model.diffusion.channels",
               f"{diffusion.channels} differs from model.unet.out_channel {unet.out_channel}")
        levels = len(unet.channel_multiplier)
        _check(size % 2 ** (levels - 1) == 0, "model.diffusion.image_size",
               f"{size} is not divisible by 2**{levels - 1} (the U-Net downsamples len(channel_multiplier) - 1 times)")
        patch = self.datasets.train.patch_size
        _check(patch is None or patch % 2 ** (levels - 1) == 0, "datasets.train.patch_size",
               f"{patch} is not divisible by 2**{levels - 1} (the U-Net downsamples len(channel_multiplier) - 1 times)")
        loss = self.model.loss
        window = _spec(LOSSES, loss.type, "model.loss.type").window(loss.ssim_window)
        if window is not None:  # an SSIM term needs a window's side of image (core.registry.LossSpec.window)
            side = patch or self.datasets.train.r_resolution
            _check(side >= window, "datasets.train.patch_size" if patch else "datasets.train.r_resolution",
                   f"{side} pixels is smaller than the {window}-pixel SSIM window of the {loss.type!r} loss: "
                   f"train on at least {window}x{window} pixels")
        resolutions = [size // 2**k for k in range(levels)]
        for i, res in enumerate(unet.attn_res):
            _check(res in resolutions, f"model.unet.attn_res[{i}]",
                   f"{res} is not a U-Net resolution (image_size / 2**k: {', '.join(map(str, resolutions))})")


# ----------------------------------------------------------------------------------------------- reading


PROJECT_MARKER = ".tfsdiff-root"  # a file marking a project root, against which config paths resolve
# the config keys that name files or folders to read; relative ones resolve against the writing file's project root
INPUT_PATH_KEYS = ("path.pretrained", "path.resume_state", "path.init_weights", "datasets.train.dataroot",
                   "datasets.val.dataroot", "datasets.test.dataroot", "datasets.embedded.root")


def project_root(config_file: str | os.PathLike) -> str:
    """The folder relative paths in ``config_file`` resolve against: the nearest folder from the file's own folder
    upwards that holds a `PROJECT_MARKER` file (the repository root for the committed configs), else the file's own
    folder. Absolute."""
    folder = os.path.dirname(os.path.abspath(config_file))
    for candidate in (folder, *(str(parent) for parent in Path(folder).parents)):
        if os.path.isfile(os.path.join(candidate, PROJECT_MARKER)):
            return candidate
    return folder


def resolve_config_path(value: str, config_file: str | os.PathLike) -> str:
    """``value``, a path written in ``config_file``, as an absolute path: ``~`` expanded, a relative path joined to
    the file's `project_root`. "" (SR3's null) stays ""."""
    if not value:
        return value
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(project_root(config_file), value))


def resolve_input_paths(data: Any, config_file: str | os.PathLike) -> Any:
    """A plain config dict (e.g. the config a checkpoint records) with its input paths resolved as `load_config`
    resolves those written in ``config_file``; for ``parse_config``."""
    return _resolve_input_paths(data, lambda key: os.fspath(config_file))


def _resolve_input_paths(data: Any, origin_of: Callable[[str], str]) -> Any:
    """``data`` (a merged config dict) with each string at `INPUT_PATH_KEYS` resolved against the project root of
    the file that wrote it (`resolve_config_path`); anything else is left for the parser to judge."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    for key in INPUT_PATH_KEYS:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = resolve_config_path(node[last], origin_of(key))
    return data


def load_config(path: str | os.PathLike) -> TFSDiffConfig:
    """Read the JSON-with-comments file at ``path``, merged onto the base config it names (``"base"``, a file name
    relative to its folder: `core.typed_json.parse_json_file`), resolve its input paths against the project root of
    the file that wrote each (module docstring, `resolve_config_path`), and parse it with :func:`parse_config`."""
    return parse_json_file(path, parse_config, _resolve_input_paths)


def parse_config(data: dict, source: str = "<dict>") -> TFSDiffConfig:
    """Validate a plain dict (as loaded from JSON) into a :class:`TFSDiffConfig`; ``source`` names it in errors."""
    return parse_dataclass(TFSDiffConfig, data, "", source)


def config_to_dict(cfg: TFSDiffConfig) -> dict:
    """Return ``cfg`` as a plain JSON-able dict; ``parse_config(config_to_dict(cfg)) == cfg``."""
    return to_plain(cfg)
