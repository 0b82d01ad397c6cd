"""Tests for core/config.py and core/typed_json.py: comment stripping, typed parsing, validation messages and round trips."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.config import (
    ConfigError,
    TFSDiffConfig,
    config_to_dict,
    load_config,
    parse_config,
)
from core.typed_json import read_json_with_base, strip_json_comments


def valid_dict() -> dict[str, Any]:
    """A small, valid config dict (image size 32, 3 U-Net levels)."""
    split = {"dataroot": "data/x", "l_resolution": 8, "r_resolution": 32}
    schedule = {"schedule": "linear", "n_timestep": 10}
    return {
        "name": "tiny",
        "datasets": {"train": dict(split, batch_size=2), "val": dict(split)},
        "model": {
            "unet": {"inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2, 2], "attn_res": [8]},
            "beta_schedule": {"train": dict(schedule), "val": dict(schedule)},
            "diffusion": {"image_size": 32},
        },
        "train": {"n_iter": 100, "val_freq": 10, "save_checkpoint_freq": 50, "print_freq": 5},
    }


def with_roots(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` with its relative dataroots resolved against ``folder``, as `load_config` resolves those of a file in
    ``folder`` (outside any folder marked with `.tfsdiff-root`)."""
    data = copy.deepcopy(data)
    for split in data["datasets"].values():
        split["dataroot"] = str(folder / split["dataroot"])
    return data


def with_value(path: str, value: Any) -> dict[str, Any]:
    """valid_dict() with the dotted key ``path`` set to ``value``."""
    data = valid_dict()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="cfg.json")
    return str(info.value)


# ------------------------------------------------------------------------------------------ comments


def test_strip_comment_after_value_and_full_line() -> None:
    text = '{\n  // full line\n  "a": 1, // trailing\n  "b": 2\n}'
    stripped = strip_json_comments(text)
    assert json.loads(stripped) == {"a": 1, "b": 2}
    assert stripped.count("\n") == text.count("\n")


def test_strip_keeps_slashes_inside_strings() -> None:
    text = '{"url": "http://x", "root": "C://data"} // gone'
    assert json.loads(strip_json_comments(text)) == {"url": "http://x", "root": "C://data"}


def test_strip_handles_escaped_quote_before_slashes() -> None:
    text = '{"a": "say \\"hi\\" // not a comment", "b": "\\\\"} // comment'
    assert json.loads(strip_json_comments(text)) == {"a": 'say "hi" // not a comment', "b": "\\"}


# ------------------------------------------------------------------------------------------ parsing


def test_valid_dict_parses_with_defaults_and_tuples() -> None:
    cfg = parse_config(valid_dict())
    assert isinstance(cfg, TFSDiffConfig)
    assert cfg.gpu_ids == () and cfg.path.resume_state is None and cfg.datasets.test is None
    assert cfg.model.unet.channel_multiplier == (1, 2, 2)
    assert cfg.model.loss.type == "psf" and cfg.train.optimizer.lr == 1e-4
    hash(cfg)


def test_round_trip() -> None:
    data = valid_dict()
    data["gpu_ids"] = [0, 1]
    data["path"] = {"resume_state": "experiments/x/I100"}
    data["datasets"]["embedded"] = {"root": "emb", "r_resolution": 32, "scales": [2, 4]}
    data["datasets"]["test"] = dict(data["datasets"]["val"])
    cfg = parse_config(data)
    plain = config_to_dict(cfg)
    json.dumps(plain)
    assert parse_config(plain) == cfg
    assert plain["gpu_ids"] == [0, 1]


@pytest.mark.parametrize(("path", "expected"), [
    ({}, None),
    ({"pretrained": "pretrained/w.pth"}, "pretrained/w.pth"),
    ({"pretrained": "pretrained/w.pth", "resume_state": "experiments/x/I100"}, "experiments/x/I100"),
])
def test_sampling_checkpoint_prefers_resume_state_over_released_weights(path: dict, expected: str | None) -> None:
    data = valid_dict()
    data["path"] = path
    assert parse_config(data).path.sampling_checkpoint() == expected


@pytest.mark.parametrize(("loss", "kept"), [
    ({"type": "mse", "lambda_mse": 0.5}, {"type", "lambda_mse"}),
    ({"type": "official"}, {"type"}),
    ({"type": "psf", "lambda_ssim": 0.2, "ssim_window": 7}, {"type", "lambda_mse", "lambda_ssim", "ssim_window"}),
])
def test_round_trip_loss_types(loss: dict[str, Any], kept: set[str]) -> None:
    cfg = parse_config(with_value("model.loss", loss))
    plain = config_to_dict(cfg)
    assert set(plain["model"]["loss"]) == kept
    assert parse_config(plain) == cfg


def test_does_not_mutate_input() -> None:
    data = with_value("gpu_ids", None)
    before = copy.deepcopy(data)
    parse_config(data)
    assert data == before


def test_unknown_key_with_suggestion() -> None:
    message = error_of(with_value("datasets.train.batch_sise", 4))
    assert "cfg.json" in message
    assert "datasets.train.batch_sise: unknown key (did you mean 'batch_size'?)" in message


def test_unknown_key_without_close_match_lists_keys() -> None:
    assert "zzz: unknown key (expected one of: name, gpu_ids" in error_of(with_value("zzz", 1))


def test_missing_required_key() -> None:
    data = valid_dict()
    del data["datasets"]["val"]["dataroot"]
    assert "datasets.val.dataroot: missing required key" in error_of(data)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("seed", True, "seed: expected an integer, got True"),
    ("seed", "3", "seed: expected an integer, got '3'"),
    ("model.unet.dropout", "x", "model.unet.dropout: expected a number, got 'x'"),
    ("model.unet.dropout", False, "model.unet.dropout: expected a number, got False"),
    ("datasets.train.use_shuffle", 1, "datasets.train.use_shuffle: expected true or false, got 1"),
    ("name", 5, "name: expected a string, got 5"),
    ("model.unet.attn_res", 16, "model.unet.attn_res: expected a list, got 16"),
    ("gpu_ids", [0, "1"], "gpu_ids[1]: expected an integer, got '1'"),
    ("model.init", "xavier", "model.init: expected one of 'kaiming', 'orthogonal', got 'xavier'"),
    ("model.tmfa", [], "model.tmfa: expected an object, got []"),
    ("train.n_iter", 1.5, "train.n_iter: expected an integer, got 1.5"),
])
def test_wrong_types(path: str, value: Any, expected: str) -> None:
    assert expected in error_of(with_value(path, value))


def test_integral_float_accepted_for_int_and_int_for_float() -> None:
    cfg = parse_config(with_value("train.val_freq", 1e4))
    assert cfg.train.val_freq == 10000 and type(cfg.train.val_freq) is int
    cfg = parse_config(with_value("train.optimizer", {"lr": 1}))
    assert cfg.train.optimizer.lr == 1.0 and type(cfg.train.optimizer.lr) is float


def test_sr3_null_gpu_ids_and_empty_resume_state() -> None:
    data = with_value("gpu_ids", None)
    data["path"] = {"resume_state": ""}
    cfg = parse_config(data)
    assert cfg.gpu_ids == () and cfg.path.resume_state is None


# ------------------------------------------------------------------------------------------ value rules


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("model.unet.dropout", 1.0, "model.unet.dropout: expected a number in [0, 1), got 1.0"),
    ("model.unet.res_blocks", 0, "model.unet.res_blocks: expected an integer >= 1, got 0"),
    ("model.unet.in_channel", 6, "model.unet.in_channel: expected 9 + out_channel = 12"),
    ("model.unet.norm_groups", 3, "model.unet.norm_groups: 3 does not divide inner_channel * channel_multiplier[0]"),
    ("model.tmfa.reduction", 0, "model.tmfa.reduction: expected an integer >= 1, got 0"),
    ("datasets.train.r_resolution", 12, "datasets.train.r_resolution: expected a multiple of l_resolution 8"),
    ("datasets.val.r_resolution", 8, "datasets.val.r_resolution: expected a multiple of l_resolution 8"),
    ("datasets.train.batch_size", 0, "datasets.train.batch_size: expected an integer >= 1, got 0"),
    ("datasets.train.num_workers", -1, "datasets.train.num_workers: expected an integer >= 0, got -1"),
    ("datasets.train.data_len", 0, "datasets.train.data_len: expected -1 (all) or an integer >= 1, got 0"),
    ("datasets.train.patch_size", 0, "datasets.train.patch_size: expected null or a multiple of the scale "
                                     "r_resolution / l_resolution = 4 from 4 to r_resolution 32, got 0"),
    ("datasets.train.patch_size", 18, "datasets.train.patch_size: expected null or a multiple of the scale"),
    ("datasets.train.patch_size", 36, "datasets.train.patch_size: expected null or a multiple of the scale"),
    ("datasets.train.patch_size", True, "datasets.train.patch_size: expected an integer, got True"),
    ("datasets.val.patch_size", 16, "datasets.val.patch_size: only datasets.train crops patches"),
    ("datasets.train.cache_images", "yes", "datasets.train.cache_images: expected"),
    ("train.optimizer.lr_milestones", [5, 5],
     "train.optimizer.lr_milestones: expected increasing steps >= 1, got [5, 5]"),
    ("train.optimizer.lr_milestones", [0], "train.optimizer.lr_milestones: expected increasing steps >= 1, got [0]"),
    ("train.optimizer.lr_gamma", 0, "train.optimizer.lr_gamma: expected a number in (0, 1], got 0"),
    ("datasets.embedded", {"root": "e", "r_resolution": 24}, "datasets.embedded.r_resolution: expected a power"),
    ("datasets.embedded", {"root": "e", "r_resolution": 8}, "datasets.embedded.r_resolution: expected a power"),
    ("datasets.embedded", {"root": "e", "r_resolution": 32, "scales": [3]}, "datasets.embedded.scales[0]: expected"),
    ("model.beta_schedule.train.n_timestep", 1, "model.beta_schedule.train.n_timestep: expected an integer >= 2"),
    ("model.beta_schedule.val.linear_start", 0, "model.beta_schedule.val.linear_start: expected a number > 0"),
    ("model.beta_schedule.val.linear_end", 1e-7, "model.beta_schedule.val.linear_end: expected a number in"),
    ("model.beta_schedule.val.linear_end", 1, "model.beta_schedule.val.linear_end: expected a number in"),
    ("model.loss.lambda_mse", 0, "model.loss.lambda_mse: expected a number in (0, 1], got 0.0"),
    ("model.loss.lambda_ssim", 1.5, "model.loss.lambda_ssim: expected a number in (0, 1], got 1.5"),
    ("model.loss.ssim_window", 8, "model.loss.ssim_window: expected an odd integer >= 3, got 8"),
    ("model.loss.ssim_window", 1, "model.loss.ssim_window: expected an odd integer >= 3, got 1"),
    ("train.print_freq", 0, "train.print_freq: expected an integer >= 1, got 0"),
    ("train.optimizer.lr", 0, "train.optimizer.lr: expected a number > 0, got 0.0"),
])
def test_value_rules(path: str, value: Any, expected: str) -> None:
    message = error_of(with_value(path, value))
    assert expected in message and message.startswith("cfg.json: ")


@pytest.mark.parametrize(("loss", "expected"), [
    ({"type": "mse", "lambda_ssim": 0.1}, "model.loss.lambda_ssim: only used by type 'psf'; remove it for type 'mse'"),
    ({"type": "mse", "ssim_window": 7}, "model.loss.ssim_window: only used by type 'psf'"),
    ({"type": "official", "lambda_mse": 1.0}, "model.loss.lambda_mse: only used by type 'psf' or 'mse'"),
    ({"type": "official", "ssim_window": 11}, "model.loss.ssim_window: only used by type 'psf'"),
])
def test_loss_keys_unused_by_type_are_errors(loss: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_value("model.loss", loss))


# ------------------------------------------------------------------------------------------ cross-field rules


def test_image_size_must_match_train_and_val_r_resolution() -> None:
    assert "model.diffusion.image_size: 64 differs from datasets.train.r_resolution 32" in error_of(
        with_value("model.diffusion.image_size", 64))
    data = valid_dict()
    data["datasets"]["val"]["r_resolution"] = 64
    assert "model.diffusion.image_size: 32 differs from datasets.val.r_resolution 64" in error_of(data)


def test_patch_size_is_optional_and_must_suit_the_unet() -> None:
    assert parse_config(valid_dict()).datasets.train.patch_size is None
    assert parse_config(with_value("datasets.train.patch_size", 16)).datasets.train.patch_size == 16
    data = with_value("datasets.train.patch_size", 6)
    data["datasets"]["train"]["l_resolution"] = 16
    assert "datasets.train.patch_size: 6 is not divisible by 2**2" in error_of(data)


def test_channels_must_match_out_channel() -> None:
    assert "model.diffusion.channels: 1 differs from model.unet.out_channel 3" in error_of(
        with_value("model.diffusion.channels", 1))


def test_attn_res_must_be_a_unet_resolution() -> None:
    message = error_of(with_value("model.unet.attn_res", [16, 4]))
    assert "model.unet.attn_res[1]: 4 is not a U-Net resolution (image_size / 2**k: 32, 16, 8)" in message


def test_image_size_must_be_divisible_by_downsampling() -> None:
    data = valid_dict()
    for split in ("train", "val"):
        data["datasets"][split].update(l_resolution=9, r_resolution=36)
    data["model"]["diffusion"]["image_size"] = 36
    data["model"]["unet"].update(channel_multiplier=[1, 1, 1, 1], attn_res=[])
    assert "model.diffusion.image_size: 36 is not divisible by 2**3" in error_of(data)


# ------------------------------------------------------------------------------------------ files


def test_load_config_with_comments(tmp_path: Path) -> None:
    text = "// experiment\n" + json.dumps(valid_dict(), indent=2).replace('"tiny",', '"tiny", // the name')
    path = tmp_path / "c.json"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == parse_config(with_roots(valid_dict(), tmp_path))


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(with_value("seed", "x")), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.json: seed: expected an integer"):
        load_config(str(path))


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: file not found"):
        load_config(tmp_path / "nope.json")


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x", // fine\n  "seed": 1,,\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json: invalid JSON at line 3, column 13"):
        load_config(path)


REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.rglob("*.json")), ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_every_committed_config_parses(path: Path) -> None:
    load_config(path)


# the real-scan residual recipe: scale -> (stage 1, stage 2); each stage 2's base is its stage 1, the x2 and x8
# stage 1's base is the x4 stage 1
STAGES = {f"x{scale}": (f"harvard_x{scale}_residual_{256 // scale}_256.json",
                        f"harvard_x{scale}_residual_start200_{256 // scale}_256.json") for scale in (2, 4, 8)}


@pytest.mark.parametrize("scale", sorted(STAGES))
def test_stage_2_of_the_real_scan_recipe_changes_only_what_it_says(scale: str) -> None:
    stage1, stage2 = (load_config(CONFIG_ROOT / name) for name in STAGES[scale])
    assert stage2.model.diffusion.train_max_step == stage2.model.sampler.start_step == 200
    assert stage2.model.diffusion.train_zero_start == 0.5
    assert stage2.train.n_iter > stage1.train.n_iter
    # the sampler was chosen on validation after stage 2; both start the chain at step 200
    assert stage1.model.sampler.start_step == 200 and stage2.model.sampler.steps == 2
    same_diffusion = replace(stage2.model.diffusion, train_max_step=None, train_zero_start=0.0)
    assert replace(stage2.model, diffusion=same_diffusion, sampler=stage1.model.sampler) == stage1.model
    # every scale has released weights, whose sampler clips with "image" (chosen on validation)
    released = {"x4": "pretrained/tfsdiff_x4_64_256.pth", "x2": "pretrained/tfsdiff_x2_128_256.pth",
                "x8": "pretrained/tfsdiff_x8_32_256.pth"}
    assert stage2.path.pretrained == str(REPO / released[scale])
    assert stage2.model.sampler.clip == "image"
    assert replace(stage2, name=stage1.name, model=stage1.model, path=stage1.path,
                   train=replace(stage2.train, n_iter=stage1.train.n_iter, val_freq=stage1.train.val_freq,
                                 optimizer=stage1.train.optimizer)) == stage1


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("scale", ["x2", "x8"])
def test_the_x2_and_x8_recipes_are_the_x4_recipe_at_their_scale(scale: str, stage: int) -> None:
    ours, x4 = (load_config(CONFIG_ROOT / STAGES[s][stage - 1]) for s in (scale, "x4"))
    splits = {split: replace(getattr(x4.datasets, split), dataroot=str(REPO / f"datasets/harvard_{scale}/{split}"),
                             l_resolution=256 // int(scale[1:])) for split in ("train", "val", "test")}
    expected = replace(x4, name=x4.name.replace("x4", scale), datasets=replace(x4.datasets, **splits))
    if scale == "x8":  # trained under bf16 autocast (on an AMX CPU), the one change beside the scale
        expected = replace(expected, performance=replace(x4.performance, autocast="bf16"))
    if stage == 2:  # its own release; the sampler chosen on its validation split is x4's
        expected = replace(expected, path=replace(x4.path, pretrained=str(REPO / f"pretrained/tfsdiff_{scale}_"
                                                                             f"{256 // int(scale[1:])}_256.pth")))
    assert ours == expected


# ------------------------------------------------------------------------------------------ base configs


def write_json(path: Path, data: dict[str, Any], header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + json.dumps(data, indent=2), encoding="utf-8")
    return path


def test_base_config_keys_override_objects_merge_and_lists_replace(tmp_path: Path) -> None:
    base = with_value("path", {"pretrained": "w.pth", "experiments_root": "runs"})
    write_json(tmp_path / "base.json", base, "// the base\n")
    child = write_json(tmp_path / "child.json", {
        "base": "base.json", "name": "child", "seed": 7,
        "path": {"pretrained": None},  # null replaces like any scalar
        "datasets": {"train": {"batch_size": 4}},
        "model": {"unet": {"channel_multiplier": [1, 2], "attn_res": [16]}},  # lists replace whole
    })
    expected = copy.deepcopy(base)
    expected.update(name="child", seed=7)
    expected["path"]["pretrained"] = None
    expected["datasets"]["train"]["batch_size"] = 4
    expected["model"]["unet"].update(channel_multiplier=[1, 2], attn_res=[16])
    assert read_json_with_base(child) == expected
    cfg = load_config(child)
    assert cfg == parse_config(with_roots(expected, tmp_path))
    assert (cfg.path.experiments_root, cfg.datasets.train.dataroot, cfg.model.unet.inner_channel) == \
        ("runs", str(tmp_path / "data/x"), 8)


def test_an_object_of_another_type_replaces_the_base_object_whole(tmp_path: Path) -> None:
    write_json(tmp_path / "base.json", with_value("model.loss", {"type": "psf", "lambda_mse": 0.5, "lambda_ssim": 0.2}))
    same = write_json(tmp_path / "same.json", {"base": "base.json", "model": {"loss": {"lambda_ssim": 0.3}}})
    other = write_json(tmp_path / "other.json", {"base": "base.json", "model": {"loss": {"type": "mse"}}})
    assert config_to_dict(load_config(same))["model"]["loss"] == {"type": "psf", "lambda_mse": 0.5, "lambda_ssim": 0.3,
                                                                 "ssim_window": 11}
    assert config_to_dict(load_config(other))["model"]["loss"] == {"type": "mse", "lambda_mse": 1.0}


def test_base_chains_resolve_relative_to_each_configs_folder(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_json(tmp_path / "root.json", valid_dict())
    mid = tmp_path / "sub" / "mid.json"  # a byte-order mark and comments, as in any config
    mid.parent.mkdir()
    mid.write_text('\ufeff// middle\n{"base": "../root.json", "seed": 5, // the seed\n "name": "mid"}',
                   encoding="utf-8")
    top = write_json(tmp_path / "top.json", {"base": "sub/mid.json", "name": "top"})
    monkeypatch.chdir(mid.parent)
    assert load_config(top) == parse_config({**with_roots(valid_dict(), tmp_path), "name": "top", "seed": 5})


def test_a_cycle_of_base_configs_is_an_error_naming_the_files(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"base": "b.json"})
    write_json(tmp_path / "b.json", {"base": "a.json"})
    write_json(tmp_path / "self.json", {"base": "self.json"})
    a, b, own = (str(tmp_path / name) for name in ("a.json", "b.json", "self.json"))
    with pytest.raises(ConfigError, match=f"^{re.escape(b)}: base: the base configs form a cycle: "
                       f"{re.escape(f'{a} -> {b} -> {a}')}$"):
        load_config(a)
    with pytest.raises(ConfigError, match=f"^{re.escape(own)}: base: the base configs form a cycle"):
        load_config(own)


def test_a_missing_or_malformed_base_is_an_error_naming_the_config(tmp_path: Path) -> None:
    child = write_json(tmp_path / "child.json", {"base": "nope.json", "name": "x"})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(child))}: base: base config "
                       f"{re.escape(str(tmp_path / 'nope.json'))} not found$"):
        load_config(child)
    write_json(child, {"base": ["a.json"]})
    with pytest.raises(ConfigError, match=r"child\.json: base: expected the file name of the base config"):
        load_config(child)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    write_json(child, {"base": "broken.json"})
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON"):
        load_config(child)


def test_errors_name_the_file_that_wrote_the_key(tmp_path: Path) -> None:
    base = write_json(tmp_path / "base.json", valid_dict())
    child = write_json(tmp_path / "child.json", {"base": "base.json", "model": {"unet": {"colour": 1}}})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(child))}: model\\.unet\\.colour: unknown key"):
        load_config(child)
    write_json(base, with_value("model.unet.colour", 1))
    write_json(child, {"base": "base.json", "seed": 2})
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{base} (a base of {child})')}: model\\.unet\\.colour: "):
        load_config(child)
    write_json(base, valid_dict())
    write_json(child, {"base": "base.json", "seed": "two"})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(child))}: seed: expected an integer"):
        load_config(child)


@pytest.mark.parametrize("row", ["wo_tmfa_x4", "wo_psf_x4", "official_x4"])
@pytest.mark.parametrize("stage", ["", "_start200"])
def test_recipe_ablation_rows_change_only_their_keys(row: str, stage: str) -> None:
    """Table 2 in the recipe (config/experiments/recipe/): each stage is the recipe's stage with the row's one change
    (the TMFA placement, the loss, or both for the official row); stage 2 carries no released weights."""
    recipe = "harvard_x4_residual_start200_64_256.json" if stage else "harvard_x4_residual_64_256.json"
    cfg = load_config(CONFIG_ROOT / "experiments" / "recipe" / f"{row}{stage}.json")
    base = load_config(CONFIG_ROOT / recipe)
    changed = {"wo_tmfa_x4": {"tmfa"}, "wo_psf_x4": {"loss"}, "official_x4": {"tmfa", "loss"}}[row]
    model = {f.name: getattr(base.model, f.name) for f in dataclasses.fields(base.model) if f.name not in changed}
    assert {k: getattr(cfg.model, k) for k in model} == model
    assert {k for k in changed if getattr(cfg.model, k) != getattr(base.model, k)} == changed
    assert cfg.path == (replace(base.path, pretrained=None) if stage else base.path)
    assert cfg == replace(base, name=cfg.name, model=cfg.model, path=cfg.path)
    assert cfg.name == f"recipe_{row}{stage}"


# ------------------------------------------------------------------------------------------ paths in config files


def test_a_committed_config_finds_its_files_from_any_current_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Input paths resolve against the repository root (it holds `.tfsdiff-root`), whatever the current directory;
    experiments_root, an output folder, stays relative to the current directory."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIG_ROOT / "harvard_x4_residual_start200_64_256.json")
    assert cfg.path.pretrained == str(REPO / "pretrained" / "tfsdiff_x4_64_256.pth")
    assert Path(cfg.path.pretrained).is_file()
    assert cfg.datasets.train.dataroot == str(REPO / "datasets" / "harvard_x4" / "train")
    assert cfg.path.experiments_root == "runs"
    monkeypatch.chdir(REPO / "docs")
    finetune = load_config("../config/finetune_x4_own_data.json")
    assert finetune.path.init_weights == cfg.path.pretrained and finetune.path.pretrained is None
    assert finetune.datasets.val.dataroot == str(REPO / "datasets" / "own_x4" / "val")
    demo = load_config(Path("..") / "config" / "demo.json")
    assert demo.datasets.embedded is not None and demo.datasets.embedded.root == str(REPO / ".cache/embedded_mni152_64")


def test_relative_paths_resolve_against_the_project_root_of_the_file_that_wrote_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, user = tmp_path / "project", tmp_path / "user"
    (project / "configs").mkdir(parents=True)
    (project / ".tfsdiff-root").write_text("", encoding="utf-8")
    base = with_value("path", {"pretrained": "weights/w.pth", "experiments_root": "runs"})
    write_json(project / "configs" / "base.json", base)
    child = write_json(user / "sub" / "child.json", {
        "base": "../../project/configs/base.json",
        "path": {"resume_state": "~/runs/r.pth"},
        "datasets": {"val": {"dataroot": "../scans/val"}, "test": {"dataroot": str(tmp_path / "abs"),
                                                                   "l_resolution": 8, "r_resolution": 32}},
    })
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "project")
    cfg = load_config(Path("..") / "user" / "sub" / "child.json")
    assert cfg.path.pretrained == str(project / "weights" / "w.pth")  # the base's folder has no marker: its root's
    assert cfg.datasets.train.dataroot == str(project / "data" / "x")
    assert cfg.datasets.val.dataroot == str(user / "scans" / "val")  # no marker above the child: its own folder
    assert cfg.datasets.test is not None and cfg.datasets.test.dataroot == str(tmp_path / "abs")
    assert cfg.path.resume_state == str(tmp_path / "home" / "runs" / "r.pth")
    assert cfg.path.experiments_root == "runs"  # an output folder: relative to the current directory
    write_json(child, {"base": "../../project/configs/base.json", "path": {"resume_state": ""}})
    assert load_config(child).path.resume_state is None  # SR3's "" is null, not the config's folder


def test_init_weights_and_resume_state_together_are_an_error() -> None:
    both = with_value("path", {"init_weights": "w.pth", "resume_state": "run/checkpoint"})
    assert re.search(r"cfg\.json: path\.init_weights: w\.pth starts a new run from its weights, but resume_state "
                     r"run/checkpoint continues a run: set one of them to null", error_of(both))
    assert parse_config(with_value("path", {"init_weights": ""})).path.init_weights is None


def _config_texts(path: Path) -> str:
    """The text of a committed config and of every config it names as its base (their headers hold the commands)."""
    text = path.read_text(encoding="utf-8")
    base = re.search(r'"base"\s*:\s*"([^"]+)"', text)
    return text + ("\n" + _config_texts((path.parent / base.group(1)).resolve()) if base else "")


def _produced_by_a_documented_command(folder: Path, texts: str) -> bool:
    """Whether a ``--out DIR`` (of a prepare_data.py or model.release command) in the config's headers writes
    ``folder`` or a folder above it."""
    outs = [REPO / out for out in re.findall(r"--out\s+(\S+)", re.sub(r"\\?\n//", " ", texts))]
    return any(folder == out or out in folder.parents for out in outs)


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.rglob("*.json")), ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_a_committed_config_names_no_issue_and_only_paths_that_exist_or_a_documented_command_writes(
        path: Path) -> None:
    """No config comment cites an issue number; released weights exist or a command in the header writes them
    (``model.release --out``); each dataroot exists, is built by the
    config's own embedded dataset, or is written by a command named in the config's (or its bases') headers."""
    text, texts = path.read_text(encoding="utf-8"), _config_texts(path)
    assert not re.search(r"\bissue\s*#?\d+", text, re.I), f"{path} cites an issue number"
    cfg = load_config(path)
    weights = cfg.path.pretrained
    assert weights is None or Path(weights).is_file() or _produced_by_a_documented_command(Path(weights), texts), \
        f"{path}: path.pretrained {weights} neither exists nor is written by a command in its header"
    embedded = Path(cfg.datasets.embedded.root) if cfg.datasets.embedded else None
    for split in (cfg.datasets.train, cfg.datasets.val, cfg.datasets.test):
        if split is None:
            continue
        folder = Path(split.dataroot)
        assert (folder.exists() or (embedded is not None and (folder == embedded or embedded in folder.parents))
                or _produced_by_a_documented_command(folder, texts)), \
            f"{path}: dataroot {folder} neither exists nor is written by a command in its header"
