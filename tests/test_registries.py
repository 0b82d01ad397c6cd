"""The contract of every extension point (core/registry.py): each registered entry is run, and the names the config
and the command lines accept are exactly the registry's. A new sampler, loss, fusion method, task or input layout is
covered here as soon as it is registered (an input layout also needs a tiny example in LAYOUT_EXAMPLES below)."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import infer
from core.cli import add_sampler_args
from core.config import ConfigError, LossConfig, SamplerConfig, parse_config
from core.registry import FUSION_METHODS, LOSSES, SAMPLERS, TASKS, WEIGHT_FREE_FUSION, Names, Registry
from data import prepare_data
from data.colour_maps import render_activity
from data.fusion_dataset import create_dataloader
from data.fusion_rules import FUSION_RULES, fuse
from data.layout import SOURCES
from model.diffusion import GaussianDiffusion, TrainingTerms
from model.losses import build_loss
from model.fuser import Fuser
from model.model import TFSDiffModel
from model.samplers import build_sampler, sample_loop
from model.sr3 import SR3_PREFIX, sequential_names

ROOT = Path(__file__).resolve().parents[1]
T = 10


def _choices(parser: argparse.ArgumentParser, dest: str) -> tuple[str, ...]:
    (action,) = [a for a in parser._actions if a.dest == dest]
    return tuple(action.choices)


def _accepted(make_tiny_config: Callable[..., dict], dotted: str) -> tuple[str, ...]:
    """The names the config accepts at ``dotted``, read from its error message for an unknown one."""
    with pytest.raises(ConfigError) as err:
        parse_config(make_tiny_config(changes={dotted: "no-such-name"}))
    assert err.value.key == dotted
    listed = err.value.reason.removeprefix("expected one of ").removesuffix(", got 'no-such-name'")
    return tuple(name.strip("'") for name in listed.split(", "))


# ------------------------------------------------------------------------------------------------ the mechanism


def test_registry_names_once_in_order_and_loads_its_providers() -> None:
    reg: Registry[Any] = Registry("widget", lambda obj, size=1: (obj, size))
    reg.register("b", size=2)(len)
    reg.add("a", (min, 1))
    assert reg.names() == ("b", "a") and reg.get("b") == (len, 2) and "a" in reg and "c" not in reg
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.add("a", (max, 1))
    with pytest.raises(ValueError, match="unknown widget 'c'; expected one of 'b', 'a'"):
        reg.get("c")
    assert Names(reg, lambda spec: spec[1] == 1).names() == ("a",)


def test_entries_keep_their_providers_order_whichever_module_was_imported_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A test or a user that imports one provider before the first lookup does not reorder the names (the tables,
    the CLI choices and the error messages list them)."""
    for module in ("widgets_a", "widgets_b"):
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    reg: Registry[Any] = Registry("widget", lambda obj: obj, ("widgets_a", "widgets_b"))

    def register(name: str, module: str) -> None:
        def widget() -> None:
            return None
        widget.__module__ = module
        reg.register(name)(widget)

    register("b1", "widgets_b")  # widgets_b imported first
    reg.add("elsewhere", print)
    register("a1", "widgets_a")
    register("b2", "widgets_b")
    assert reg.names() == ("a1", "b1", "b2", "elsewhere")
    assert [name for name, _ in reg.items()] == list(reg.names())
    with pytest.raises(ValueError, match="expected one of 'a1', 'b1', 'b2', 'elsewhere'"):
        reg.get("c")


def test_importing_the_config_loads_no_provider() -> None:
    """core/ never imports upward: the providers are loaded by a lookup, never by importing core.config or core.cli."""
    code = ("import sys, core.config, core.cli; from core.registry import SAMPLERS, LOSSES, FUSION_METHODS, TASKS; "
            "mods = [m for r in (SAMPLERS, LOSSES, FUSION_METHODS, TASKS) for m in r.providers]; "
            "assert not [m for m in mods if m in sys.modules], mods; "
            "core.config.load_config('config/demo.json'); assert all(m in sys.modules for m in mods[:2])")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("registry", [SAMPLERS, LOSSES, FUSION_METHODS, TASKS], ids=lambda r: r.kind)
def test_entries_are_registered_by_a_provider(registry: Registry[Any]) -> None:
    """A config is checked in a process that has imported only the providers: every entry must come from one."""
    for name, spec in registry.items():
        implementation = (getattr(spec, "build", None) or getattr(spec, "fuse", None) or getattr(spec, "dataset", None)
                          or spec.load)
        assert implementation.__module__ in registry.providers, (name, implementation.__module__)


# ------------------------------------------------------------------------------------------------ samplers


def _sampler_config(name: str, **changes: Any) -> SamplerConfig:
    spec = SAMPLERS.get(name)
    return SamplerConfig(type=name, steps=4 if spec.uses_steps else None, eta=0.5 if spec.uses_eta else 0.0,
                         **changes)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_builds_steps_and_samples(name: str, make_tiny_diffusion: Callable[..., GaussianDiffusion]
                                                ) -> None:
    diffusion = make_tiny_diffusion(T)
    sampler = build_sampler(diffusion.schedule, _sampler_config(name))
    steps = sampler.timesteps
    assert all(isinstance(t, int) for t in steps) and list(steps) == sorted(set(steps), reverse=True)
    assert 0 <= steps[-1] and steps[0] < T and len(sampler.noise_levels) == len(steps)
    assert all(0.0 < g <= 1.0 for g in sampler.noise_levels) and sampler.start_noise == 1.0
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    x_prev, x0_hat = sampler.step(eps, 0, x, g)
    assert x_prev.shape == x0_hat.shape == x.shape and torch.isfinite(x_prev).all()
    assert x0_hat.abs().max() <= 1.0  # clipped
    condition = torch.rand(2, 9, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        out = sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(1), 3,
                          progress=False)
        again = sample_loop(diffusion.denoise_fn, sampler, condition, torch.Generator().manual_seed(1), 3,
                            progress=False)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all() and torch.equal(out, again)
    if SAMPLERS.get(name).uses_steps:  # a chain that starts lower, from a zero signal noised to its level
        late = build_sampler(diffusion.schedule, _sampler_config(name, start_step=6))
        assert late.timesteps[0] == 5 and 0.0 < late.start_noise < 1.0


def test_sampler_names_of_config_and_cli_are_the_registry(make_tiny_config: Callable[..., dict]) -> None:
    parser = argparse.ArgumentParser()
    add_sampler_args(parser)
    assert _choices(parser, "sampler") == SAMPLERS.names() == _accepted(make_tiny_config, "model.sampler.type")
    for name in SAMPLERS.names():
        assert parse_config(make_tiny_config(changes={"model.sampler": {"type": name, "steps": (
            3 if SAMPLERS.get(name).uses_steps else None)}})).model.sampler.type == name


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_a_finite_scalar_and_trains(name: str, make_tiny_model: Callable[..., Any],
                                                     make_batches: Callable[[int], list]) -> None:
    spec, cfg = LOSSES.get(name), LossConfig(type=name)
    assert cfg.plain_keys() == ("type", *spec.keys)
    loss = build_loss(name, cfg.lambda_mse, cfg.lambda_ssim, cfg.ssim_window)  # as model.model builds it
    g = torch.Generator().manual_seed(0)
    noise, x0 = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    eps_pred = (noise + 0.1 * torch.randn(2, 3, 16, 16, generator=g)).requires_grad_()
    terms = TrainingTerms(noise=noise, eps_pred=eps_pred, x0_hat=(x0 + 0.1 * eps_pred).clamp(-1, 1),
                          noise_level=torch.full((2,), 0.5))
    values = loss(terms, x0)
    assert "loss" in values and all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in values.values())
    assert not any(v.requires_grad for key, v in values.items() if key != "loss")  # logged, not differentiated
    values["loss"].backward()
    assert eps_pred.grad is not None and torch.isfinite(eps_pred.grad).all()
    model = make_tiny_model(changes={"model.loss": {"type": name}})  # the trainer's path, and what it logs
    x0, condition = make_batches(1)[0]
    logged = model.train_step(x0, condition)
    assert logged.keys() == values.keys() and all(math.isfinite(v) for v in logged.values())


def test_loss_names_of_config_are_the_registry(make_tiny_config: Callable[..., dict]) -> None:
    assert _accepted(make_tiny_config, "model.loss.type") == LOSSES.names()


# ------------------------------------------------------------------------------------------------ fusion methods


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_every_fusion_method_fuses_uint8_rgb(name: str, make_rgb: Callable[..., np.ndarray]) -> None:
    spec = FUSION_METHODS.get(name)
    assert spec.sources and set(spec.sources) <= set(SOURCES)
    if spec.needs_weights:  # weights are never in the repository: its loader is checked where they are given
        assert callable(spec.load) and name not in FUSION_RULES
        return
    for shape in ((16, 16), (13, 18)):
        sources = [make_rgb(10 * k, shape, grey=k == 1) for k in spec.sources]
        fused = spec.fuse(sources)
        assert fused.dtype == np.uint8 and fused.shape == (*shape, 3)
        assert np.array_equal(fused, fuse(name, sources)) and np.array_equal(fused, FUSION_RULES[name](sources))


def test_fusion_names_of_config_and_clis_are_the_registry(make_tiny_config: Callable[..., dict],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    weight_free = WEIGHT_FREE_FUSION.names()
    assert tuple(FUSION_RULES) == weight_free and set(weight_free) <= set(FUSION_METHODS.names())
    assert _accepted(make_tiny_config, "model.diffusion.residual_base") == weight_free
    slices = prepare_data._parser()._subparsers._group_actions[0].choices["slices"]
    assert _choices(slices, "gt_fusion") == tuple(sorted(weight_free))
    with pytest.raises(SystemExit):
        infer.parse_args(["-c", "unused.json", "--method", "no-such-method"])
    listed = capsys.readouterr().err.split("(choose from ")[1].split(")")[0]
    methods = {name.strip("'") for name in listed.split(", ")} - {infer.MODEL_METHOD}
    sequential = {name for name in methods if name.startswith(SR3_PREFIX)}  # SR3, then a method (model.sr3)
    assert sequential == set(sequential_names()) == {SR3_PREFIX + name for name in FUSION_METHODS.names()}
    assert set(weight_free) <= methods - sequential <= set(FUSION_METHODS.names())


# ------------------------------------------------------------------------------------------------ tasks


def test_task_names_of_the_config_are_the_registry(make_tiny_config: Callable[..., dict]) -> None:
    assert _accepted(make_tiny_config, "model.task") == TASKS.names()


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_trains_a_step_on_its_batches_and_samples(name: str, tmp_path: Path,
                                                           make_tiny_config: Callable[..., dict]) -> None:
    """A model of each task trains on the batches of its dataset (collated by the dataset) and samples them."""
    spec = TASKS.get(name)
    changes = {"model.task": name, "model.unet.in_channel": 3 * spec.sources + 3}
    if not spec.fuses:
        changes |= {"model.tmfa": {"placement": "off"}, "model.loss": {"type": "mse"}}
    cfg = parse_config(make_tiny_config(changes=changes))
    g = torch.Generator().manual_seed(0)
    items = [{**{f"src{k}": torch.rand(3, 16, 16, generator=g) * 2 - 1 for k in range(1, spec.sources + 1)},
              "target": torch.rand(3, 16, 16, generator=g) * 2 - 1, "base": None, "case_id": f"case{i}"}
             for i in range(2)]
    batch = spec.dataset.collate(items)
    assert len(batch.sources) == spec.sources and batch.condition.shape == (2, 3 * spec.sources, 16, 16)
    torch.manual_seed(0)
    model = TFSDiffModel(cfg, torch.device("cpu"))
    losses = model.train_step(batch.target, batch.condition, batch.base)
    assert math.isfinite(losses["loss"]) and model.step == 1
    fused = Fuser.from_model(model).fuse(batch, progress=False)
    assert fused.images.shape == (2, 3, 16, 16) and torch.isfinite(fused.images).all()


# ------------------------------------------------------------------------------------------------ input layouts

SIZE = 16


def _grey(seed: int) -> np.ndarray:
    img = np.zeros((SIZE, SIZE), np.uint8)
    img[2:-2, 2:-2] = np.random.default_rng(seed).integers(20, 255, (SIZE - 4, SIZE - 4))
    return img


def _slices_example(root: Path) -> list[str]:
    for k, name in enumerate(("T1", "T2", "SPECT")):
        (root / name).mkdir(parents=True)
        for case in range(3):
            Image.fromarray(_grey(10 * k + case)).save(root / name / f"case{case}.png")
    return ["--input", str(root), "--folders", "T1", "T2", "SPECT", "--split", "1:1:1"]


def _volumes_example(root: Path) -> list[str]:
    x, y, z = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 12), np.arange(16), indexing="ij")
    files = []
    for k in range(3):
        volume = np.where((x**2 + y**2 < 0.8) & (z >= 2) & (z < 14), 100.0 + 50.0 * np.random.default_rng(k).random(
            x.shape), 0.0).astype(np.float32)
        files.append(root / f"m{k}.nii.gz")
        root.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(files[-1]))
    return ["--files", *map(str, files), "--slab-gap", "1"]


def _pairs_example(root: Path) -> list[str]:
    """Harvard pair folders; CT-MRI and SPECT-MRI share the MRI of subject 21 (a real triplet, for test)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE / 2) - 1.0
    for kind, subjects in {"CT-MRI": ("11", "12", "21"), "SPECT-MRI": ("13", "14", "21"),
                           "PET-MRI": ("15", "16", "41")}.items():
        for subject in subjects:
            seed = int(subject) + (0 if kind == "CT-MRI" or subject == "21" else 7)
            activity = np.clip(0.3 + 0.5 * np.exp(-(yy**2 + xx**2) / (0.05 * (1 + seed % 3))), 0, 1)
            images = {"CT": _grey(seed + 1), "MRI": _grey(seed),
                      "PET": render_activity(activity, "harvard_pet"),
                      "SPECT": render_activity(activity, "harvard_spect_tc")}
            for modality in kind.split("-"):
                (root / kind / modality).mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[modality]).save(root / kind / modality / f"{subject}001.png")
    return ["--input", str(root), "--test-subjects", "21", "41"]


# a tiny input of each layout and the sub-command's arguments for it (a new layout adds its example here)
LAYOUT_EXAMPLES: dict[str, Callable[[Path], list[str]]] = {
    "slices": _slices_example, "volumes": _volumes_example, "pairs": _pairs_example, "sr3": _pairs_example}


def test_layout_names_of_the_cli_are_the_registry() -> None:
    parser = prepare_data._parser()
    assert tuple(parser._subparsers._group_actions[0].choices) == prepare_data.DATASET_LAYOUTS.names()
    assert tuple(LAYOUT_EXAMPLES) == prepare_data.DATASET_LAYOUTS.names()


@pytest.mark.parametrize("name", prepare_data.DATASET_LAYOUTS.names())
def test_every_layout_round_trips_a_tiny_dataset(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    """Each input layout becomes the data.layout folders, which the dataset of its task reads back case by case."""
    out = tmp_path / "out"
    args = [name, *LAYOUT_EXAMPLES[name](tmp_path / "in"), "--out", str(out), "--size", str(SIZE), "--scales", "2",
            "--quiet"]
    assert prepare_data.main(args) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_form"] == name and manifest["l_resolutions"] == [SIZE // 2]
    written = {split: cases for split, cases in manifest["splits"].items() if cases}
    assert written
    task = TASKS.get(prepare_data.DATASET_LAYOUTS.get(name).task)
    for split, cases in written.items():
        dataset = task.dataset(out / split, SIZE // 2, SIZE)
        assert sorted(dataset.case_ids) == sorted(cases)
        item = dataset[0]
        keys = (*(f"src{k}" for k in range(1, task.sources + 1)), "target")
        assert all(item[key].shape == (3, SIZE, SIZE) for key in keys)
        batch = next(iter(create_dataloader(dataset, 2, shuffle=False, flip=False, num_workers=0, seed=0)))
        assert len(batch.sources) == task.sources and batch.target.shape[1:] == (3, SIZE, SIZE)
