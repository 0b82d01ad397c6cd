"""SR3 super-resolution, then fusion: the sequential pipelines of the paper's Table 1 (`infer.py --method sr3+NAME`).

The paper compares TFS-Diff with sequential methods: SR3 super-resolves each low-resolution source, then a fusion
method fuses the three super-resolved images. Here SR3 is a model of this code base with `model.task: "sr3"` (the
U-Net of model/unet.py conditioned on one bicubic-upsampled RGB image, plain SR3: no TMFA, no residual base, MSE on the
noise; config/sr3_x{2,4,8}_*.json, trained by `sr.py` on `prepare_data.py sr3` data), sampled by the same
`model.fuser.Fuser`; NAME is any registered fusion method (`core.registry.FUSION_METHODS`: a classical rule of
data.fusion_rules, or a published method of model.peers with its authors' weights).

A pipeline (`SequentialMethod`) takes the three bicubic-upsampled sources of a case, the inputs every other method
gets, super-resolves them as one batch of three with a generator seeded with the SR3 config's seed (a fresh one per
case, so a case gives the same images alone, in a folder or in a split) and the SR3 config's sampler
(`model.sampler`), and fuses the three SR3 images with NAME.

Which SR3 model (`load_sr3`): the SR3 config is the one given (`--sr3-config`), else the repository's
`config/sr3_x{s}_{l}_{r}.json` for the scale s = r / l and the sizes of the fusion config's training data; its weights
are the checkpoint given (`--sr3-checkpoint`), else the config's `path.resume_state`, else its `path.pretrained`
(`pretrained/sr3_x{s}_{l}_{r}.pth`, which `python -m model.release` writes from a training run). A missing config or
weights file, a config of another task or another scale is an `SR3Error` (exit 2) that says how to make it.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from core.config import DatasetConfig, TFSDiffConfig, load_config
from core.errors import UsageError
from core.registry import FUSION_METHODS
from data.images import to_tensor
from data.sr_dataset import SRBatch
from model.checkpoint_io import CheckpointError, resolve_checkpoint
from model.evaluation import method_fuser
from model.fuser import Fuser

__all__ = ["SR3_PREFIX", "SR3Error", "sequential_names", "fusion_method_of", "default_sr3_config", "load_sr3",
           "SuperResolver", "SequentialMethod", "load_sequential"]

SR3_PREFIX = "sr3+"
REPOSITORY = Path(__file__).resolve().parents[1]
GUIDE = "docs/comparison_methods.md, \"SR3, then fusion (the paper's protocol)\""
log = logging.getLogger("tfsdiff")

RGB = np.ndarray  # an (H, W, 3) uint8 RGB image


class SR3Error(UsageError):
    """The SR3 model of a sequential method cannot be used: its config or weights are missing or do not fit."""


def sequential_names() -> tuple[str, ...]:
    """`sr3+NAME` for every registered fusion method NAME, in registry order."""
    return tuple(SR3_PREFIX + name for name in FUSION_METHODS.names())


def fusion_method_of(method: str) -> str | None:
    """NAME of a sequential method `sr3+NAME` (SR3Error when NAME is no registered fusion method); None for any
    other method name."""
    if not method.startswith(SR3_PREFIX):
        return None
    name = method.removeprefix(SR3_PREFIX)
    if name not in FUSION_METHODS.names():
        raise SR3Error(f"method {method}: {name!r} is not a fusion method; expected {SR3_PREFIX} followed by one of "
                       f"{', '.join(FUSION_METHODS.names())}")
    return name


def _scale(split: DatasetConfig) -> int:
    return split.r_resolution // split.l_resolution


def default_sr3_config(split: DatasetConfig) -> Path:
    """The repository's SR3 config for the scale and sizes of `split`: `config/sr3_x{s}_{l}_{r}.json`."""
    return REPOSITORY / "config" / f"sr3_x{_scale(split)}_{split.l_resolution}_{split.r_resolution}.json"


def _relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for the commands of a message), else as given."""
    try:
        return str(path.resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def _how_to_train(config: Path, weights: str) -> str:
    return (f"the SR3 models are not trained in this repository; make them with `python data/prepare_data.py sr3 "
            f"--input HARVARD_PAIRS --out datasets/sr3_harvard --size 256 --scales 2 4 8 --copies 5 --seed 0 "
            f"--embedded 79`, `python sr.py -p train -c {_relative(config)}` and `python -m model.release "
            f"--checkpoint runs/<run> --config {_relative(config)} --out {weights}` ({GUIDE}), or pass "
            "--sr3-checkpoint PATH")


def load_sr3(split: DatasetConfig, config: str | Path | None = None,
             checkpoint: str | Path | None = None) -> tuple[TFSDiffConfig, str]:
    """(the SR3 config, its weights) for fusing data at the scale of `split` (the fusion config's training split), as
    the module docstring says; SR3Error when either is missing, the config is not an SR3 config or its scale differs.
    """
    config_path = Path(config) if config is not None else default_sr3_config(split)
    if not config_path.is_file():
        given = "--sr3-config" if config is not None else f"the default SR3 config for x{_scale(split)}"
        raise SR3Error(f"{given} {config_path} does not exist: pass --sr3-config with an SR3 config "
                       f"(model.task \"sr3\") of scale x{_scale(split)}")
    cfg = load_config(config_path)
    if cfg.model.task != "sr3":
        raise SR3Error(f"--sr3-config {config_path} is a config of task {cfg.model.task!r}, not an SR3 config: set "
                       "model.task to \"sr3\" or pass config/sr3_x{2,4,8}_*.json")
    if _scale(cfg.datasets.train) != _scale(split):
        raise SR3Error(f"{config_path} is an SR3 model of scale x{_scale(cfg.datasets.train)}, but the fusion config's "
                       f"data are at x{_scale(split)}: pass the SR3 config (--sr3-config) of x{_scale(split)}")
    weights = checkpoint if checkpoint is not None else cfg.path.sampling_checkpoint()
    if not weights:
        raise SR3Error(f"{config_path} names no SR3 weights (path.resume_state and path.pretrained are null): "
                       + _how_to_train(config_path, "pretrained/<name>.pth"))
    try:
        resolve_checkpoint(weights)
    except CheckpointError as err:
        flag = "--sr3-checkpoint" if checkpoint is not None else f"the SR3 weights of {_relative(config_path)}"
        raise SR3Error(f"{flag}: {err}; " + _how_to_train(config_path, _relative(Path(weights)))) from None
    return cfg, str(weights)


class SuperResolver:
    """Super-resolves the bicubic-upsampled sources of a case with an SR3 `Fuser`, all of them in one batch, with a
    fresh generator seeded with the SR3 config's seed. With `cache`, the images of a case are kept (keyed by the
    sources' bytes), so several fusion methods of one benchmark share one SR3 pass."""

    def __init__(self, fuser: Fuser, *, progress: bool = False, cache: bool = False) -> None:
        if fuser.cfg.model.task != "sr3":
            raise SR3Error(f"a SuperResolver needs an SR3 model (model.task \"sr3\"), got task "
                           f"{fuser.cfg.model.task!r}")
        self.fuser = fuser
        self.progress = progress
        self._cache: dict[str, list[RGB]] | None = {} if cache else None

    @staticmethod
    def _key(sources: Sequence[RGB]) -> str:
        digest = hashlib.sha256()
        for image in sources:
            digest.update(repr(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def __call__(self, sources: Sequence[RGB]) -> list[RGB]:
        """The SR3 images (H, W, 3) uint8 of `sources` (each (H, W, 3) uint8, one size), in order."""
        key = self._key(sources) if self._cache is not None else ""
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        batch = SRBatch(src1=torch.stack([to_tensor(image) for image in sources]), target=None,
                        case_ids=tuple(f"source{k}" for k in range(1, len(sources) + 1)))
        result = self.fuser.fuse(batch, progress=self.progress)
        images = [result.image(i) for i in range(len(sources))]
        if self._cache is not None:
            self._cache[key] = images
        return images


class SequentialMethod:
    """`sr3+NAME`: a callable fusing three bicubic-upsampled uint8 sources as SR3 then NAME (module docstring)."""

    def __init__(self, name: str, resolver: SuperResolver, fuse: Callable[[list[RGB]], RGB]) -> None:
        self.name = name
        self.resolver = resolver
        self.fuse = fuse

    def __call__(self, sources: Sequence[RGB]) -> RGB:
        return self.fuse(self.resolver(sources))


def load_sequential(method: str, split: DatasetConfig, *, sr3_config: str | Path | None = None,
                    sr3_checkpoint: str | Path | None = None, peer_dir: str | Path | None = None,
                    resolver: SuperResolver | None = None, progress: bool = False) -> SequentialMethod:
    """The sequential method `method` (`sr3+NAME`) for data at the scale of `split`: NAME loaded by
    `model.evaluation.method_fuser` (with `peer_dir` for a published method) and the SR3 model of `load_sr3`, or
    `resolver` when given (to share one SR3 model, and its cache, between several methods)."""
    name = fusion_method_of(method)
    if name is None:
        raise SR3Error(f"method {method!r} is not a sequential method {SR3_PREFIX}NAME")
    fuse = method_fuser(name, peer_dir)
    if resolver is None:
        cfg, weights = load_sr3(split, sr3_config, sr3_checkpoint)
        resolver = SuperResolver(Fuser.from_checkpoint(cfg, weights), progress=progress)
        log.info("SR3 model %s (sampler %s), then %s", weights, cfg.model.sampler.type, name)
    return SequentialMethod(method, resolver, fuse)
