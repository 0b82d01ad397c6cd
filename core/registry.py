"""Extension points: one named registry per kind of plug-in, so that each name is defined once, beside its code.

A registry maps a name to a *spec*: the implementation and what the rest of the project needs to know about it.
The implementing module registers its entries itself, next to the functions::

    @SAMPLERS.register("ddim", help="DDIM", uses_eta=True)
    def _ddim(schedule, cfg, clip_denoised): ...

The config (`core.config`) validates names against the registries and reads the specs (which sampler takes `steps`
and `eta`, which keys a loss reads) while it parses, yet the core layer never imports `model/` or `data/`: each
registry here names the modules that fill it (`providers`, as strings) and imports them on its first lookup, the way
a plug-in system loads its entry points. Importing `core.config` therefore loads nothing; parsing a config loads the
providers of the names it checks.

The registries, their providers and what a spec holds:

- `SAMPLERS` (`model.samplers`): `SamplerSpec`, `model.sampler.type` and `--sampler`;
- `LOSSES` (`model.losses`): `LossSpec`, `model.loss.type`;
- `FUSION_METHODS` (`data.fusion_rules`): `FusionMethodSpec`, `model.diffusion.residual_base`, `infer.py --method`,
  `prepare_data.py --gt-fusion` (methods without weights) and the baseline rows of the tables;
- `TASKS` (`data.fusion_dataset`, `data.sr_dataset`): `TaskSpec`, `model.task`: what the network learns (tri-modal
  fusion, or SR3 single-image super-resolution), how many images condition it and which dataset reads its data.

The input layouts of `data/prepare_data.py` are a registry of the same kind, declared in that module (nothing in
the config names them).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "Names", "SamplerSpec", "LossSpec", "FusionMethodSpec", "TaskSpec", "SAMPLERS", "LOSSES",
           "FUSION_METHODS", "WEIGHT_FREE_FUSION", "PUBLISHED_FUSION", "TASKS"]

S = TypeVar("S")
F = TypeVar("F")


class Names:
    """The names of a registry's entries that satisfy ``keep`` (all by default), looked up when asked: the marker
    of a config field that takes one of them (``Annotated[str, Names(...)]``, see `core.typed_json`)."""

    def __init__(self, registry: Registry[Any], keep: Callable[[Any], bool] | None = None) -> None:
        self.registry = registry
        self.keep = keep

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, spec in self.registry.items() if self.keep is None or self.keep(spec))


class Registry(Generic[S]):
    """Named entries of one extension point, in the order of their ``providers``, then of registration.

    ``make_spec(obj, **meta)`` turns what `register` decorates into the stored spec; ``providers`` are the modules
    that register the entries, imported on the first lookup. An entry registered by a provider keeps that provider's
    place whichever module was imported first; entries from elsewhere (``add``) follow them.
    """

    def __init__(self, kind: str, make_spec: Callable[..., S], providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._make_spec = make_spec
        self.providers = providers
        self._loaded = not providers
        self._specs: dict[str, S] = {}
        self._origin: dict[str, str] = {}  # name -> the module that registered it with `register`

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator: register the decorated object under ``name`` (with ``meta`` for its spec); returns it as is."""
        def add(obj: F) -> F:
            self.add(name, self._make_spec(obj, **meta))
            self._origin[name] = obj.__module__
            return obj
        return add

    def add(self, name: str, spec: S) -> None:
        """Register a ready-made spec under ``name``; a name is registered once."""
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._specs[name] = spec

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: a provider that looks itself up while importing does not recurse
            try:
                for module in self.providers:
                    importlib.import_module(module)
            except BaseException:
                self._loaded = False  # a failed import is raised again by the next lookup, never an empty registry
                raise

    def _ordered(self) -> dict[str, S]:
        self._load()
        rank = {module: i for i, module in enumerate(self.providers)}
        return dict(sorted(self._specs.items(), key=lambda item: rank.get(self._origin.get(item[0], ""), len(rank))))

    def names(self) -> tuple[str, ...]:
        return tuple(self._ordered())

    def items(self) -> Iterator[tuple[str, S]]:
        return iter(tuple(self._ordered().items()))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> S:
        """The spec of ``name``; ValueError naming the known names when there is none."""
        self._load()
        if name not in self._specs:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(map(repr, self.names()))}")
        return self._specs[name]


# ----------------------------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: ``build(schedule, cfg, clip_denoised)`` -> an object of the `model.samplers.Sampler` contract,
    built from a `model.schedule.NoiseSchedule` and a `core.config.SamplerConfig`."""

    build: Callable[..., Any]
    help: str  # a few words for --sampler's help
    uses_steps: bool = True  # runs `steps` kept steps (required) and may start at `start_step`; else the full chain
    uses_eta: bool = False  # reads `eta` (else eta must stay 0)


SAMPLERS: Registry[SamplerSpec] = Registry("sampler", SamplerSpec, ("model.samplers",))


# ----------------------------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossSpec:
    """A training loss: ``build(**keys)`` -> ``loss(terms, x0) -> {"loss": scalar to minimise, other scalars to
    log}``. ``keys`` are the tunable `model.loss` keys it reads: the builder's parameters."""

    build: Callable[..., Callable[..., dict[str, Any]]]
    keys: tuple[str, ...]
    ssim_window: int | None = None  # side of the SSIM window it needs when not read from the `ssim_window` key

    def window(self, ssim_window: int) -> int | None:
        """The side of image (patch) training needs: the loss's SSIM window, or None without an SSIM term."""
        return ssim_window if "ssim_window" in self.keys else self.ssim_window


def _loss_spec(build: Callable[..., Any], ssim_window: int | None = None) -> LossSpec:
    return LossSpec(build, tuple(inspect.signature(build).parameters), ssim_window)


LOSSES: Registry[LossSpec] = Registry("loss", _loss_spec, ("model.losses",))


# ----------------------------------------------------------------------------------------------- fusion methods


@dataclass(frozen=True)
class FusionMethodSpec:
    """A fusion method of registered sources, each an (H, W, 3) uint8 RGB image, into one (H, W, 3) uint8 image.

    Without weights (the classical rules) ``fuse(sources)`` is the method itself. A method with weights (a published
    deep method) has ``load(weights_dir, device)`` instead, which returns an object with that ``fuse``.
    """

    fuse: Callable[..., Any] | None = None
    load: Callable[..., Any] | None = None
    sources: tuple[int, ...] = (1, 2, 3)  # the sources it takes, in order (numbers of data.layout.SOURCES)

    @property
    def needs_weights(self) -> bool:
        return self.load is not None


def _fusion_spec(obj: Callable[..., Any], needs_weights: bool = False,
                 sources: tuple[int, ...] = (1, 2, 3)) -> FusionMethodSpec:
    return FusionMethodSpec(load=obj, sources=sources) if needs_weights else FusionMethodSpec(fuse=obj,
                                                                                           sources=sources)


FUSION_METHODS: Registry[FusionMethodSpec] = Registry("fusion method", _fusion_spec, (
    "data.fusion_rules", "model.peers.ifcnn", "model.peers.prrgan", "model.peers.matr", "model.peers.mufusion",
    "model.peers.bitonicx", "model.peers.ctsr"))
# the methods a name in the config or on a command line may choose without weights: residual bases, ground truths
WEIGHT_FREE_FUSION = Names(FUSION_METHODS, lambda spec: not spec.needs_weights)
# the published methods, each loaded with its authors' weights: the comparison rows (paper.real_scans --peer)
PUBLISHED_FUSION = Names(FUSION_METHODS, lambda spec: spec.needs_weights)


# ----------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """What a model learns (`model.task`). ``dataset`` is the class that reads one split folder of the task's layout,
    called as `data.loader.dataset_from_config` calls it, whose `collate` makes the task's batches (each with
    `condition`, `sources`, `target`, `base` and `case_ids`); ``sources``: the number of 3-channel images that
    condition the network (its input has 3 * sources + out_channel channels). A task with one source fuses nothing:
    the TMFA block and a residual base (both made for several sources) do not apply to it."""

    dataset: Callable[..., Any]
    help: str
    sources: int

    @property
    def fuses(self) -> bool:
        return self.sources > 1


def _task_spec(dataset: Callable[..., Any], help: str, sources: int) -> TaskSpec:
    return TaskSpec(dataset, help, sources)


TASKS: Registry[TaskSpec] = Registry("task", _task_spec, ("data.fusion_dataset", "data.sr_dataset"))
