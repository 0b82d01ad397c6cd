"""Fine-tuning (issue 23): a new training run from the weights of a release or a training checkpoint
(`TFSDiffModel.init_from`, `path.init_weights`, `sr.py --init-weights`): it starts at those weights and that EMA,
at step 0 with a fresh optimiser and fresh RNGs, and refuses a mismatched network and a resume at the same time."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import sr
from core.config import parse_config
from data.fusion_dataset import FusionBatch
from model.checkpoint_io import CheckpointError
from model.fuser import Fuser
from model.model import TFSDiffModel
from model.release import export_release

MakeModel = Callable[..., TFSDiffModel]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, make_tiny_model: MakeModel,
            make_batches: Callable[[int], Batches],
            train_steps: Callable[[TFSDiffModel, Batches], None]) -> dict[str, Path]:
    """A tiny model with EMA trained 3 steps: its training checkpoint and its release (the EMA weights)."""
    root = tmp_path_factory.mktemp("finetune")
    model = make_tiny_model(ema=True)
    train_steps(model, make_batches(3))
    checkpoint = model.save(root / "ckpt")
    assert checkpoint is not None
    release = root / "release" / "tiny.pth"
    export_release(checkpoint, "config/tiny.json", release)
    return {"checkpoint": checkpoint, "release": release}


def fresh(make_tiny_config: Callable[..., dict[str, Any]], **changes: Any) -> TFSDiffModel:
    """A new model of the tiny config with EMA, initialised from another seed than the trained one."""
    torch.manual_seed(1)
    return TFSDiffModel(parse_config(make_tiny_config(ema=True, changes=changes)), torch.device("cpu"))


def network(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's weights of a `GaussianDiffusion` state dict (the `denoise_fn.` entries)."""
    return {k.removeprefix("denoise_fn."): v for k, v in state.items() if k.startswith("denoise_fn.")}


def assert_same(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def assert_new_run(model: TFSDiffModel) -> None:
    """Step 0, an optimiser that never stepped, and the training generator of the config's seed."""
    assert (model.step, model.epoch, model.batch_in_epoch) == (0, 0, 0)
    assert model.optimizer.state_dict()["state"] == {}
    assert model.optimizer.param_groups[0]["lr"] == model.cfg.train.optimizer.lr
    assert torch.equal(model.generator.get_state(), torch.Generator().manual_seed(model.cfg.seed).get_state())


def test_a_run_from_a_release_starts_at_its_weights(trained: dict[str, Path],
                                                    make_tiny_config: Callable[..., dict[str, Any]]) -> None:
    release = torch.load(trained["release"], weights_only=True)
    model = fresh(make_tiny_config)
    assert model.init_from(trained["release"]) == trained["release"]
    assert_new_run(model)
    assert_same(model.diffusion.denoise_fn.state_dict(), network(release["model"]))  # the trained weights ...
    assert model.ema is not None
    assert_same(model.ema.net.state_dict(), network(release["model"]))  # ... and the EMA: the release's weights
    # validation of the new run at step 0 samples exactly as the release does
    src = torch.rand(3, 1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    batch = FusionBatch(src[0], src[1], src[2], None, ("a",))
    from_release = Fuser.from_checkpoint(model.cfg, trained["release"]).fuse(batch, progress=False).images
    assert torch.equal(Fuser.from_model(model).fuse(batch, progress=False).images, from_release)


def test_a_run_from_a_training_checkpoint_takes_its_weights_and_its_ema(
        trained: dict[str, Path], make_tiny_config: Callable[..., dict[str, Any]]) -> None:
    saved = torch.load(trained["checkpoint"], weights_only=True)
    assert saved["step"] == 3
    model = fresh(make_tiny_config)
    model.init_from(trained["checkpoint"].parent)  # a checkpoint folder stands for its latest checkpoint
    assert_new_run(model)
    assert_same(model.diffusion.state_dict(), saved["model"])
    assert model.ema is not None
    assert_same(model.ema.net.state_dict(), saved["ema"])
    assert not all(torch.equal(saved["ema"][k], v) for k, v in network(saved["model"]).items())  # they differ


@pytest.mark.parametrize("source", ["release", "checkpoint"])
def test_a_mismatched_network_is_refused_as_when_sampling(trained: dict[str, Path], source: str,
                                                          make_tiny_config: Callable[..., dict[str, Any]]) -> None:
    model = fresh(make_tiny_config, **{"model.unet.inner_channel": 8, "model.unet.norm_groups": 4})
    with pytest.raises(CheckpointError) as sampling:
        Fuser.from_checkpoint(model.cfg, trained[source])
    with pytest.raises(CheckpointError, match="was trained with model.unet") as init:
        model.init_from(trained[source])
    assert str(init.value) == str(sampling.value)
    assert model.step == 0


def write_config(folder: Path, make_tiny_config: Callable[..., dict[str, Any]], **changes: Any) -> Path:
    data = make_tiny_config(ema=True, changes={"path.experiments_root": str(folder / "experiments"), **changes})
    path = folder / "tiny.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_init_weights_with_a_resume_is_a_usage_error(trained: dict[str, Path], tmp_path: Path,
                                                     make_tiny_config: Callable[..., dict[str, Any]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    release, checkpoint = str(trained["release"]), str(trained["checkpoint"])
    config = str(write_config(tmp_path, make_tiny_config, **{"path.init_weights": release}))
    assert sr.main(["-c", config, "--checkpoint", checkpoint, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"path.init_weights {release} starts a new run from its weights, but --checkpoint {checkpoint} " \
           "continues a run: give one of them (to resume a fine-tuning run, add --init-weights none)" in err
    plain = str(write_config(tmp_path, make_tiny_config, **{"path.resume_state": checkpoint}))
    assert sr.main(["-c", plain, "--init-weights", release, "--no-progress"]) == 2
    assert f"--init-weights {release} starts a new run from its weights, but path.resume_state" in \
        capsys.readouterr().err
    assert sr.main(["-p", "val", "-c", plain, "--init-weights", release, "--no-progress"]) == 2
    assert "--init-weights is for -p train" in capsys.readouterr().err
    bare = str(write_config(tmp_path, make_tiny_config))
    assert sr.main(["-c", bare, "--init-weights", str(tmp_path / "nothing.pth"), "--no-progress"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()  # every refusal comes before a run folder is made


def test_a_release_still_cannot_resume_and_says_how_to_fine_tune(
        trained: dict[str, Path], make_tiny_config: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(CheckpointError, match="cannot resume training.*start a new run from it with "
                       "path.init_weights or sr.py --init-weights"):
        fresh(make_tiny_config).load(trained["release"])


@pytest.mark.slow
def test_sr_trains_a_new_run_from_a_release(tmp_path: Path, make_tiny_model: MakeModel,
                                            make_run_config: Callable[[Path, str, Mapping[str, Any]], Path]) -> None:
    """sr.py --init-weights: the run counts from step 0 and records the weights in its config.json; a config's
    path.init_weights with --checkpoint needs --init-weights none, which resumes the run instead."""
    checkpoint = make_tiny_model(size=32, ema=True).save(tmp_path / "ckpt")  # the network of make_run_config
    release = tmp_path / "release" / "tiny.pth"
    export_release(checkpoint, "config/tiny.json", release)
    short = {"train.n_iter": 2, "train.val_freq": 2, "train.save_checkpoint_freq": 2,
             "train.ema_scheduler": {"step_start_ema": 1, "update_ema_every": 1, "ema_decay": 0.5}}
    config = make_run_config(tmp_path, "ft", short)
    assert sr.main(["-c", str(config), "--init-weights", str(release), "--no-progress"]) == 0
    (run,) = (tmp_path / "experiments").glob("ft_train_*")
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["I2_E1.pth", "latest"]
    assert json.loads((run / sr.RUN_CONFIG).read_text())["path"]["init_weights"] == str(release)
    log = (run / "logs" / "train.log").read_text()
    assert "new run from the weights of" in log and "from step 0 to 2" in log
    resumed = make_run_config(tmp_path, "ft2", {**short, "train.n_iter": 3, "path.init_weights": str(release)})
    assert sr.main(["-c", str(resumed), "--checkpoint", str(run), "--init-weights", "none", "--no-progress"]) == 0
    (run2,) = (tmp_path / "experiments").glob("ft2_train_*")
    assert "from step 2 to 3" in (run2 / "logs" / "train.log").read_text()
    assert json.loads((run2 / sr.RUN_CONFIG).read_text())["path"]["init_weights"] is None
