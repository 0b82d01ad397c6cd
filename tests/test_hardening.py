"""Bad inputs over every command line, as a table (core.cli.run_command's policy): each case asserts the exit code
(2 usage or input error, 1 failure while running), one message naming the bad thing, no traceback, existing outputs
untouched and no partial output. Then the image rules of single-case inference (16-bit, RGBA), --out DIR/<method>
and --overwrite, --debug, and the policy itself (`core.cli.run_command`) exception by exception.

Every command's ``main()`` runs in-process. A read-only folder is a chmod 555 folder, or /sys when the tests run as
root (root ignores permission bits); the read-only cases skip when neither is available.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import infer
import sr
from bench import run as bench_run
from core.cli import UsageError, run_command
from core.config import load_config
from core.hashing import sha256_file
from core.outputs import FILE_LEDGER, FOLDER_MARKER
from data import prepare_data
from data.builders import embedded
from data.fusion_dataset import FusionDataset
from data.fusion_rules import fuse
from data.images import ImageReadError, read_image
from data.layout import hr_dir, sr_dir
from metrics.scoring import PAPER_METRICS, MethodScores
from model import release
from model.model import TFSDiffModel
from paper import experiments, false_colour, real_scans
from paper import records as exp_layout

CLIS: dict[str, Callable[[list[str]], int]] = {
    "sr": sr.main, "infer": infer.main, "eval": eval_cli.main, "prepare": prepare_data.main,
    "embedded": embedded.main, "release": release.main, "bench": bench_run.main, "real_scans": real_scans.main,
    "experiments": experiments.main, "false_colour": false_colour.main}
SIZE, LOW = 16, 8  # the infer config: a x2 model of 16x16 images


@dataclass(frozen=True)
class World:
    """One folder of inputs shared by the cases: configs, a dataset, checkpoints good and bad, images, results."""

    root: Path
    ro: Path | None  # a folder nobody may write into

    def __truediv__(self, relative: str) -> Path:
        return self.root / relative


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@contextmanager
def _read_only_folder(root: Path) -> Iterator[Path | None]:
    """A folder nobody may create files in (restored on exit), or None."""
    if os.geteuid() != 0:
        folder = root / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        (Path("/sys") / "tfsdiff_probe").mkdir()
    except PermissionError:
        yield Path("/sys")
        return
    except OSError:
        pass
    yield None


def _bad_checkpoints(folder: Path, good: Path) -> None:
    folder.mkdir()
    data = good.read_bytes()
    (folder / "random.pth").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (folder / "empty.pth").write_bytes(b"")
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "pickle.pth").write_bytes(pickle.dumps({"model": [1, 2, 3], "note": Exception("x")}))
    (folder / "lfs.pth").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    (folder / "text.pth").write_bytes(b"hello, I am not a checkpoint\n")
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(3)}}, buffer)
    (folder / "foreign.pth").write_bytes(buffer.getvalue())
    (folder / "folder.pth").mkdir()
    (folder / "bad_gen.pth").write_bytes(b"\x00" * 64)  # an official prefix "bad" whose _gen.pth is garbage


def _infer_config(root: Path, make_tiny_config: Callable[..., dict[str, Any]], make_rgb: Callable[..., np.ndarray],
                  ) -> None:
    data = root / "data"
    split = {"dataroot": str(data), "l_resolution": LOW, "r_resolution": SIZE, "batch_size": 2}
    cfg = make_tiny_config(SIZE, SIZE // LOW, steps=3, changes={
        "path.experiments_root": str(root / "experiments"), "datasets.train": split, "datasets.val": split,
        "datasets.test": split, "model.unet.inner_channel": 8, "model.unet.norm_groups": 4, "model.unet.attn_res": []})
    for i, case in enumerate(["p1", "p2"]):
        for k in (1, 2, 3):
            _save(sr_dir(data, k, LOW, SIZE) / f"{case}.png", make_rgb(10 * i + k))
        _save(hr_dir(data, SIZE) / f"{case}.png", make_rgb(50 + i))
    (root / "tiny.json").write_text(json.dumps(cfg), encoding="utf-8")
    del cfg["datasets"]["test"]
    (root / "no_test.json").write_text(json.dumps(cfg), encoding="utf-8")
    cfg["train"]["val_frq"] = 3
    (root / "bad_key.json").write_text(json.dumps(cfg), encoding="utf-8")


def _images(folder: Path, make_rgb: Callable[..., np.ndarray]) -> None:
    for k in (1, 2, 3):
        _save(folder / f"lr{k}.png", make_rgb(k, (LOW, LOW)))
        _save(folder / f"one{k}.png", make_rgb(k, (1, 1)))
    _save(folder / "other_size.png", make_rgb(4, (LOW + 2, LOW)))
    _save(folder / "fz_process.png", make_rgb(1, (LOW, LOW)))  # where `--out img/fz.png --process` writes its strip
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "text.png").write_text("not an image", encoding="utf-8")
    (folder / "folder.png").mkdir()


def _slices(folder: Path, make_rgb: Callable[..., np.ndarray]) -> None:
    for name in ("T1", "T2", "SPECT"):
        for case in range(3):
            _save(folder / name / f"c{case}.png", make_rgb(case, (32, 32)))


def _record(root: Path, method: str = "pca", psnr: float = 30.0) -> Path:
    """A saved experiments record of ``method`` at x4 (two cases; LPIPS unavailable), the first case's PSNR
    ``psnr`` (infinity is saved as null, as a fused image equal to its reference gives)."""
    cases = ("c1", "c2")
    values = {m: np.array([psnr if m == "PSNR" else 0.5, 0.6]) for m in PAPER_METRICS} | {"LPIPS": np.full(2, np.nan)}
    scores = {c: MethodScores(method, cases, values) for c in ("paper", "cddfuse")}
    return exp_layout.save_record(root, "x4", method, "baseline", scores, dict.fromkeys(cases), {})


def _never_replaced(root: Path, good: Path, make_rgb: Callable[..., np.ndarray],
                    make_results: Callable[..., None]) -> None:
    """Issue 22: files of the user's beside outputs, records with non-finite numbers, results of mixed sizes."""
    user = root / "user"
    user.mkdir()
    (user / "model.json").write_text('{"mine": true}\n', encoding="utf-8")  # beside --out user/model.pth
    (user / "manifest_folder.json").mkdir()  # where the manifest of user/manifest_folder.pth would go
    shutil.copy(good, user / "training.pth")  # a resumable training checkpoint
    _save(user / "fig.png", make_rgb(3))
    (root / "evalout").mkdir()
    (root / "evalout" / "m.tex").write_text("my own LaTeX\n", encoding="utf-8")
    make_results(root / "scored" / "m1", ["a", "b"], 200)
    (root / "scored" / "metrics_gt.csv").write_text("my own numbers\n", encoding="utf-8")
    _record(root / "exp_inf", psnr=float("inf"))
    path = _record(root / "exp_nan")
    path.write_text(path.read_text(encoding="utf-8").replace('"SSIM": 0.6', '"SSIM": NaN'), encoding="utf-8")
    _record(root / "exp_partial")
    (root / "exp_partial" / "tables.json").write_text('{"my": "notes"}\n', encoding="utf-8")
    for name, kind, size in (("fc_fused", "fused", (LOW, LOW)), ("fc_source", "src2", (LOW, SIZE))):
        make_results(root / name, ["a", "b"], 200)
        _save(root / name / f"b_{kind}.png", make_rgb(7, size))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, make_tiny_config: Callable[..., dict[str, Any]],
          make_rgb: Callable[..., np.ndarray], make_results: Callable[..., None],
          make_run_config: Callable[..., Path]) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    _infer_config(root, make_tiny_config, make_rgb)
    torch.manual_seed(0)
    good = TFSDiffModel(load_config(root / "tiny.json"), torch.device("cpu")).save(root / "ckpt")
    release.export_release(good, "tiny.json", root / "release" / "r.pth", use_ema=False)
    _bad_checkpoints(root / "bad", good)
    (root / "empty_run" / "checkpoint").mkdir(parents=True)
    (root / "lost_run" / "checkpoint").mkdir(parents=True)
    (root / "lost_run" / "checkpoint" / "resumed_from").write_text(f"{root / 'gone.pth'}\n", encoding="utf-8")
    _images(root / "img", make_rgb)
    (root / "fake_peer" / "Code" / "snapshots").mkdir(parents=True)
    (root / "fake_peer" / "Code" / "snapshots" / "IFCNN-MAX.pth").write_bytes(b"not the weights")
    _save(root / "out" / "existing.png", make_rgb(9))
    _save(root / "out" / "split" / "tfsdiff" / "p1_fused.png", make_rgb(9, (SIZE, SIZE)))
    (root / "out" / "split_file").mkdir()
    (root / "out" / "split_file" / "average").write_text("a file where results would go", encoding="utf-8")
    (root / "out" / "folder.png").mkdir()
    (root / "afile").write_text("a file", encoding="utf-8")
    make_results(root / "results" / "tfsdiff", ["a", "b"], 200)
    make_results(root / "unpaired" / "m1", ["a", "b"], 200)
    make_results(root / "unpaired" / "m2", ["a"], 200)
    make_results(root / "corrupt" / "m", ["a", "b"], 200)
    (root / "corrupt" / "m" / "b_fused.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _slices(root / "slices", make_rgb)
    (root / "existing_dataset").mkdir()
    (root / "existing_dataset" / "keep.txt").write_text("keep", encoding="utf-8")
    _slices(root / "nest" / "scans", make_rgb)  # an input inside a folder: --out nest would contain it
    (root / "rs_user" / "data").mkdir(parents=True)  # a user's folder where paper.real_scans would write data/
    (root / "rs_user" / "data" / "notes.txt").write_text("the user's", encoding="utf-8")
    _never_replaced(root, good, make_rgb, make_results)
    one_step = {"train.n_iter": 1, "train.save_checkpoint_freq": 1, "train.val_freq": 1000}
    with _read_only_folder(root) as ro:
        for name, changes in {"run": one_step, "run_full": one_step,
                              "run_nodata": {"datasets.train.dataroot": "/nonexistent/tfsdiff/train"},
                              "run_ro": {"path.experiments_root": str((ro or root) / "exp")},
                              "run_under_file": {"path.experiments_root": str(root / "afile" / "exp")},
                              "run_inf_scale": {"model.diffusion.residual_scale": float("inf")},
                              "run_inf_lr": {"train.optimizer": {"type": "adam", "lr": float("inf")}},
                              "run_nan_lr": {"train.optimizer": {"type": "adam", "lr": float("nan")}},
                              "run_seed_negative": {"seed": -1},
                              "run_patch_below_ssim": {"datasets.train.patch_size": 4},
                              "run_chain_untrained": {"model.diffusion.train_max_step": 5,
                                                      "model.sampler": {"type": "respaced", "steps": 2,
                                                                        "start_step": 10}}}.items():
            make_run_config(root, name, changes)
        yield World(root, ro)


@dataclass(frozen=True)
class Case:
    """A command line that must fail with `code` and a message containing `names(world)`."""

    cli: str
    argv: Callable[[World], list[str]]
    code: int
    names: Callable[[World], str]
    absent: Callable[[World], Path] | None = None  # must not exist afterwards: no partial output
    read_only: bool = False  # the case uses world.ro
    setup: Callable[[pytest.MonkeyPatch], None] | None = None


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _infer_single(w: World, *extra: str, inputs: tuple[str, str, str] = ("lr1", "lr2", "lr3")) -> list[str]:
    return ["-c", str(w / "tiny.json"), "--inputs", *(str(w / "img" / f"{name}.png") for name in inputs), *extra]


def _rule(w: World, out: Path, *extra: str) -> list[str]:
    return _infer_single(w, "--method", "average", "--out", str(out), *extra)


def _with_ckpt(w: World, checkpoint: Path, out: str = "o.png") -> list[str]:
    return _infer_single(w, "--checkpoint", str(checkpoint), "--out", str(w.root / out), "--no-progress")


def _release(w: World, out: Path, checkpoint: Path | None = None) -> list[str]:
    return ["--checkpoint", str(checkpoint or w / "ckpt"), "--config", "tiny.json", "--out", str(out), "--no-ema"]


def _ckpt_file(w: World) -> Path:
    return next((w / "ckpt").glob("I*_E*.pth"))


def _sr(w: World, config: str, *extra: str) -> list[str]:
    return ["-c", str(w.root / f"{config}.json"), "--no-progress", *extra]


def _slices_args(w: World, out: Path, *extra: str) -> list[str]:
    return ["slices", "--input", str(w / "slices"), "--folders", "T1", "T2", "SPECT", "--out", str(out), "--size", "32",
            "--scales", "2", "--split", "1:1:1", "--quiet", *extra]


def _slices_in(w: World, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["slices", "--input", str(inp), "--folders", "T1", "T2", "SPECT", "--out", str(out), "--quiet", *extra]


def _real_scans(w: World, data: Path, out: Path, *extra: str) -> list[str]:
    """paper.real_scans with a good config and checkpoint: only the outputs (or `extra`) are wrong."""
    return ["--data", str(data), "-c", str(w / "tiny.json"), "--checkpoint", str(w / "ckpt"), "--out", str(out),
            "--no-progress", *extra]


def _ro(w: World) -> Path:
    assert w.ro is not None
    return w.ro


CASES: dict[str, Case] = {
    # infer.py: unreadable checkpoints of every kind
    "infer-ckpt-random-bytes": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "random.pth"), 2,
                                    lambda w: str(w / "bad" / "random.pth"), lambda w: w.root / "o.png"),
    "infer-ckpt-empty": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "empty.pth"), 2,
                             lambda w: "empty.pth is empty"),
    "infer-ckpt-truncated": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "truncated.pth"), 2,
                                 lambda w: "truncated.pth: truncated or damaged"),
    "infer-ckpt-other-pickle": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "pickle.pth"), 2,
                                    lambda w: "pickle.pth: not a PyTorch checkpoint"),
    "infer-ckpt-lfs-pointer": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "lfs.pth"), 2,
                                   lambda w: "lfs.pth is a Git LFS pointer"),
    "infer-ckpt-text": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "text.pth"), 2, lambda w: "text.pth"),
    "infer-ckpt-foreign-dict": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "foreign.pth"), 2,
                                    lambda w: "foreign.pth is not a TFS-Diff checkpoint"),
    "infer-ckpt-folder-named-pth": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "folder.pth"), 2,
                                        lambda w: "folder.pth holds no complete checkpoint"),
    "infer-ckpt-official-garbage": Case("infer", lambda w: _with_ckpt(w, w / "bad" / "bad"), 2,
                                        lambda w: "bad_gen.pth"),
    "infer-ckpt-missing": Case("infer", lambda w: _with_ckpt(w, w.root / "nowhere.pth"), 2,
                               lambda w: "nowhere.pth"),
    "infer-ckpt-empty-run": Case("infer", lambda w: _with_ckpt(w, w / "empty_run"), 2,
                                 lambda w: "holds no complete checkpoint"),
    "infer-ckpt-lost-source": Case("infer", lambda w: _with_ckpt(w, w / "lost_run"), 2,
                                   lambda w: "gone.pth, which its 'resumed_from' names, no longer exists"),
    # infer.py: images
    "infer-1x1-rule": Case("infer", lambda w: _infer_single(
        w, "--method", "laplacian_ycbcr", "--out", str(w.root / "o.png"), inputs=("one1", "one2", "one3")),
                           2, lambda w: "at least 8 pixels", lambda w: w.root / "o.png"),
    "infer-1x1-model": Case("infer", lambda w: _infer_single(
        w, "--checkpoint", str(w / "ckpt"), "--out", str(w.root / "o.png"), inputs=("one1", "one2", "one3")),
                            2, lambda w: "at least 8 pixels", lambda w: w.root / "o.png"),
    "infer-out-size-too-small": Case("infer", lambda w: _rule(w, w.root / "o.png", "--out-size", "4", "4"), 2,
                                     lambda w: "4x4"),
    "infer-out-size-zero": Case("infer", lambda w: _rule(w, w.root / "o.png", "--out-size", "0", "0"), 2,
                                lambda w: "0x0"),
    "infer-input-is-folder": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--out", str(w.root / "o.png"), inputs=("lr1", "lr2", "folder")), 2,
                                  lambda w: "folder.png: [Errno 21] Is a directory"),
    "infer-sizes-differ": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--out", str(w.root / "o.png"), inputs=("lr1", "other_size", "lr3")), 2,
                               lambda w: "other_size.png: 10x8"),
    "infer-missing-image": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--out", str(w.root / "o.png"), inputs=("lr1", "lr2", "nope")), 2,
                                lambda w: "nope.png"),
    "infer-corrupt-image": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--out", str(w.root / "o.png"), inputs=("lr1", "corrupt", "lr3")), 2,
                                lambda w: "corrupt.png"),
    "infer-text-as-image": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--out", str(w.root / "o.png"), inputs=("text", "lr2", "lr3")), 2,
                                lambda w: "text.png"),
    # infer.py: outputs
    "infer-single-exists": Case("infer", lambda w: _rule(w, w / "out" / "existing.png"), 2,
                                lambda w: "existing.png already exists and was not written by TFS-Diff"),
    "infer-single-out-is-folder": Case("infer", lambda w: _rule(w, w / "out" / "folder.png"), 2,
                                       lambda w: "folder.png is a folder"),
    "infer-single-out-not-image": Case("infer", lambda w: _rule(w, w.root / "o.txt"), 2, lambda w: "o.txt"),
    "infer-single-out-under-file": Case("infer", lambda w: _rule(w, w / "afile" / "o.png"), 2,
                                        lambda w: str(w / "afile")),
    "infer-single-out-read-only": Case("infer", lambda w: _rule(w, _ro(w) / "o.png"), 2,
                                       lambda w: f"{_ro(w)}/", read_only=True),
    "infer-single-disk-full": Case("infer", lambda w: _rule(w, w.root / "full.png"), 1,
                                   lambda w: "no space left on the device", lambda w: w.root / "full.png",
                                   setup=lambda mp: mp.setattr(Image.Image, "save", _disk_full)),
    "infer-split-results-exist": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--checkpoint", str(w / "ckpt"),
                                                          "--out", str(w / "out/split"), "--no-progress"], 2,
                                      lambda w: "tfsdiff already exists and was not written by TFS-Diff"),
    "infer-split-method-is-file": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--method", "average",
                                                           "--out", str(w / "out/split_file")], 2,
                                       lambda w: "average is a file"),
    "infer-split-out-read-only": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--method", "average",
                                                          "--out", str(_ro(w) / "res")], 2,
                                      lambda w: str(_ro(w)), read_only=True),
    "infer-split-without-test": Case("infer", lambda w: ["-c", str(w / "no_test.json"), "--method", "average"], 2,
                                     lambda w: "datasets.test"),
    "infer-process-with-rule": Case("infer", lambda w: _rule(w, w.root / "o.png", "--process"), 2,
                                    lambda w: "--process"),
    "infer-out-size-without-inputs": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--out-size", "8", "8"], 2,
                                          lambda w: "--out-size"),
    "infer-inputs-without-out": Case("infer", lambda w: _infer_single(w, "--method", "average"), 2,
                                     lambda w: "--out"),
    "infer-config-missing": Case("infer", lambda w: ["-c", str(w.root / "none.json"), "--method", "average"], 2,
                                 lambda w: "none.json"),
    "infer-config-is-folder": Case("infer", lambda w: ["-c", str(w / "img"), "--method", "average"], 2,
                                   lambda w: f"{w / 'img'}: cannot read file"),
    "infer-config-not-json": Case("infer", lambda w: ["-c", str(w / "img" / "lr1.png"), "--method", "average"], 2,
                                  lambda w: "lr1.png: cannot read file"),
    "infer-config-unknown-key": Case("infer", lambda w: ["-c", str(w / "bad_key.json"), "--method", "average"], 2,
                                     lambda w: "train.val_frq"),
    "infer-steps-too-many": Case("infer", lambda w: _with_ckpt(w, w / "ckpt") + ["--sampler", "ddim", "--steps", "99"],
                                 2, lambda w: "--steps"),
    "infer-unknown-method": Case("infer", lambda w: _infer_single(w, "--method", "median", "--out", "o.png"), 2,
                                 lambda w: "median"),
    # infer.py: outputs never land on inputs, --overwrite never replaces what the project did not write
    "infer-out-is-input-overwrite": Case("infer", lambda w: _rule(w, w / "img" / "lr1.png", "--overwrite"), 2,
                                         lambda w: f"--out {w / 'img' / 'lr1.png'} is the input {w / 'img' / 'lr1.png'}"),
    "infer-out-dotdot-input": Case("infer", lambda w: _rule(w, w / "img" / "sub" / ".." / "." / "lr2.png", "--overwrite"),
                                   2, lambda w: f"is the input {w / 'img' / 'lr2.png'}"),
    "infer-process-strip-over-input": Case("infer", lambda w: _infer_single(
        w, "--checkpoint", str(w / "ckpt"), "--out", str(w / "img" / "fz.png"), "--process", "--overwrite",
        inputs=("fz_process", "lr2", "lr3")), 2, lambda w: f"--process {w / 'img' / 'fz_process.png'} is the input",
        lambda w: w / "img" / "fz.png"),
    "infer-overwrite-user-file": Case("infer", lambda w: _rule(w, w / "out" / "existing.png", "--overwrite"), 2,
                                      lambda w: "existing.png already exists and was not written by TFS-Diff"),
    "infer-split-out-in-dataroot": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--method", "average",
                                                            "--out", str(w / "data" / "res"), "--overwrite"], 2,
                                        lambda w: f"lies inside the input folder {w / 'data'}",
                                        lambda w: w / "data" / "res"),
    "infer-split-overwrite-unmarked": Case("infer", lambda w: ["-c", str(w / "tiny.json"), "--checkpoint",
                                                               str(w / "ckpt"), "--out", str(w / "out/split"),
                                                               "--overwrite", "--no-progress"], 2,
                                           lambda w: "tfsdiff already exists and was not written by TFS-Diff"),
    "infer-out-size-overflow": Case("infer", lambda w: _with_ckpt(w, w / "ckpt") + [
        "--out-size", "2147483648", "2147483648"], 2,
                                    lambda w: "fusing a 2147483648x2147483648 image (height x width) needs about",
                                    lambda w: w.root / "o.png"),
    "infer-out-size-huge-rule": Case("infer", lambda w: _rule(w, w.root / "o.png", "--out-size", "40000", "40000"), 2,
                                     lambda w: "fusing a 40000x40000 image (height x width) needs about",
                                     lambda w: w.root / "o.png"),
    "infer-large-output-low-memory": Case("infer", lambda w: _with_ckpt(w, w / "ckpt") + ["--out-size", "4096", "4096"],
                                          2, lambda w: "GiB free: pass smaller inputs or a smaller --out-size",
                                          lambda w: w.root / "o.png",
                                          setup=lambda mp: mp.setattr(infer, "free_memory_bytes", lambda device: 2**30)),
    "infer-samples-unbounded": Case("infer", lambda w: _with_ckpt(w, w / "ckpt") + ["--samples", "1000000000"], 2,
                                    lambda w: "--samples: expected an integer from 1 to 1000"),
    "infer-start-step-untrained": Case("infer", lambda w: ["-c", str(w / "run_chain_untrained.json"), "--method",
                                                           "average"], 2, lambda w: "model.sampler.start_step"),
    # infer.py: published methods and their weights (--peer-dir)
    "infer-peer-without-peer-dir": Case("infer", lambda w: _rule(w, w.root / "o.png")[:-4] + [
        "--method", "ifcnn", "--out", str(w.root / "o.png")], 2,
                                        lambda w: "Code/snapshots/IFCNN-MAX.pth (337,094 bytes, SHA-256 6022b44c",
                                        lambda w: w.root / "o.png"),
    "infer-peer-wrong-weights": Case("infer", lambda w: _infer_single(
        w, "--method", "ifcnn", "--peer-dir", str(w / "fake_peer"), "--out", str(w.root / "o.png")), 2,
                                     lambda w: "IFCNN-MAX.pth is not the authors' weight file",
                                     lambda w: w.root / "o.png"),
    "infer-peer-dir-with-a-rule": Case("infer", lambda w: _infer_single(
        w, "--method", "average", "--peer-dir", str(w / "fake_peer"), "--out", str(w.root / "o.png")), 2,
                                       lambda w: "--peer-dir is for a published method with weights"),
    # configs: numbers
    "sr-residual-scale-infinite": Case("sr", lambda w: _sr(w, "run_inf_scale"), 2,
                                       lambda w: "model.diffusion.residual_scale: expected a finite number, got inf"),
    "sr-lr-infinite": Case("sr", lambda w: _sr(w, "run_inf_lr"), 2,
                           lambda w: "train.optimizer.lr: expected a finite number, got inf"),
    "sr-lr-nan": Case("sr", lambda w: _sr(w, "run_nan_lr"), 2,
                      lambda w: "train.optimizer.lr: expected a finite number, got nan"),
    "sr-seed-negative": Case("sr", lambda w: _sr(w, "run_seed_negative"), 2,
                             lambda w: "seed: expected an integer from 0 to 4294967295, got -1"),
    "sr-patch-below-ssim-window": Case("sr", lambda w: _sr(w, "run_patch_below_ssim"), 2,
                                       lambda w: "datasets.train.patch_size: 4 pixels is smaller than the 11-pixel "
                                                 "SSIM window"),
    "sr-train-max-step-below-start-step": Case("sr", lambda w: _sr(w, "run_chain_untrained"), 2,
                                               lambda w: "diffusion.train_max_step 5 trains steps 1..5 only, but the "
                                                         "sampler starts at 10"),
    # sr.py
    "sr-experiments-read-only": Case("sr", lambda w: _sr(w, "run_ro"), 2, lambda w: str(_ro(w)), read_only=True),
    "sr-experiments-under-file": Case("sr", lambda w: _sr(w, "run_under_file"), 2, lambda w: str(w / "afile")),
    "sr-ckpt-random-bytes": Case("sr", lambda w: _sr(w, "run", "--checkpoint", str(w / "bad" / "random.pth")), 2,
                                 lambda w: "random.pth: not a PyTorch checkpoint"),
    "sr-ckpt-truncated": Case("sr", lambda w: _sr(w, "run", "--checkpoint", str(w / "bad" / "truncated.pth")), 2,
                              lambda w: "truncated.pth"),
    "sr-ckpt-of-another-network": Case("sr", lambda w: _sr(w, "run", "--checkpoint", str(w / "release" / "r.pth")), 2,
                            lambda w: "r.pth was trained with model.unet"),
    "sr-ckpt-empty-run": Case("sr", lambda w: _sr(w, "run", "--checkpoint", str(w / "empty_run")), 2,
                              lambda w: "empty_run/checkpoint holds no complete checkpoint"),
    "sr-val-without-ckpt": Case("sr", lambda w: _sr(w, "run", "-p", "val"), 2, lambda w: "--checkpoint"),
    "sr-config-missing": Case("sr", lambda w: _sr(w, "none"), 2, lambda w: "none.json"),
    "sr-dataset-missing": Case("sr", lambda w: _sr(w, "run_nodata"), 2, lambda w: "/nonexistent/tfsdiff/train"),
    "sr-disk-full-at-save": Case("sr", lambda w: _sr(w, "run_full"), 1, lambda w: "I1_E0.pth: no space left",
                                 setup=lambda mp: mp.setattr(torch, "save", _disk_full)),
    # python -m model.release
    "release-out-read-only": Case("release", lambda w: _release(w, _ro(w) / "r.pth"), 2,
                                  lambda w: f"{_ro(w)}/r.pth", read_only=True),
    "release-out-under-file": Case("release", lambda w: _release(w, w / "afile" / "r.pth"), 2,
                                   lambda w: str(w / "afile")),
    "release-out-exists": Case("release", lambda w: _release(w, w / "release" / "r.pth"), 2,
                               lambda w: "r.pth already exists: pass --overwrite"),
    "release-out-is-folder": Case("release", lambda w: _release(w, w / "bad" / "folder.pth"), 2,
                                  lambda w: "folder.pth is a folder"),
    "release-out-not-pth": Case("release", lambda w: _release(w, w.root / "r.bin"), 2, lambda w: "r.bin"),
    "release-ckpt-random-bytes": Case("release", lambda w: _release(w, w.root / "s.pth", w / "bad" / "random.pth"), 2,
                                      lambda w: "random.pth", lambda w: w.root / "s.pth"),
    "release-of-a-release": Case("release", lambda w: _release(w, w.root / "s.pth", w / "release" / "r.pth"), 2,
                                 lambda w: "already a release", lambda w: w.root / "s.pth"),
    "release-disk-full": Case("release", lambda w: _release(w, w.root / "s.pth"), 1,
                              lambda w: "s.pth: no space left", lambda w: w.root / "s.pth",
                              setup=lambda mp: mp.setattr(torch, "save", _disk_full)),
    "release-out-is-checkpoint": Case("release", lambda w: _release(w, _ckpt_file(w), _ckpt_file(w)) + [
        "--overwrite"], 2, lambda w: f"--out {_ckpt_file(w)} is the input"),
    "release-out-inside-checkpoint-folder": Case("release", lambda w: _release(w, w / "ckpt" / "r.pth"), 2,
                                                 lambda w: "lies inside the input folder", lambda w: w / "ckpt/r.pth"),
    "release-overwrites-training-checkpoint": Case("release", lambda w: _release(w, w / "user" / "training.pth") + [
        "--overwrite"], 2, lambda w: "training.pth already exists and is a training checkpoint"),
    "release-foreign-json-beside-out": Case("release", lambda w: _release(w, w / "user" / "model.pth") + [
        "--overwrite"], 2, lambda w: "model.json already exists and is not the manifest",
        lambda w: w / "user/model.pth"),
    "release-manifest-path-is-folder-writes-nothing": Case(
        "release", lambda w: _release(w, w / "user" / "manifest_folder.pth"), 2,
        lambda w: "manifest_folder.json, where the manifest of --out", lambda w: w / "user" / "manifest_folder.pth"),
    "release-config-missing": Case("release", lambda w: _release(w, w.root / "s.pth") + ["--config", "missing.json"],
                                   2, lambda w: "missing.json: file not found", lambda w: w.root / "s.pth"),
    "release-config-of-another-network": Case("release", lambda w: _release(w, w.root / "s.pth") + [
        "--config", "run.json"], 2, lambda w: "--config run.json does not describe the network", lambda w: w / "s.pth"),
    # eval.py
    "eval-missing-folder": Case("eval", lambda w: [str(w.root / "nowhere")], 2, lambda w: "nowhere"),
    "eval-cases-without-figure": Case("eval", lambda w: [str(w / "results"), "--cases", "a"], 2, lambda w: "--figure"),
    "eval-figure-not-png": Case("eval", lambda w: [str(w / "results"), "--figure", str(w / "fig.txt")], 2,
                                lambda w: "fig.txt: expected a .png"),
    "eval-folder-is-file": Case("eval", lambda w: [str(w / "afile")], 2, lambda w: "afile is a file"),
    "eval-unpaired": Case("eval", lambda w: [str(w / "unpaired"), "--no-progress"], 2, lambda w: "m2: missing b"),
    "eval-corrupt-image": Case("eval", lambda w: [str(w / "corrupt"), "--no-progress"], 2, lambda w: "b_fused.png"),
    "eval-out-under-file": Case("eval", lambda w: [str(w / "results"), "--out", str(w / "afile" / "m"),
                                                   "--no-progress"],
                                2, lambda w: str(w / "afile")),
    "eval-out-read-only": Case("eval", lambda w: [str(w / "results"), "--out", str(_ro(w) / "m" / "t"),
                                                  "--no-progress"],
                               2, lambda w: str(_ro(w)), read_only=True),
    "eval-out-partial-write": Case("eval", lambda w: [str(w / "results"), "--out", str(w / "evalout" / "m"),
                                                      "--overwrite", "--no-progress"], 2,
                                   lambda w: "m.tex already exists and was not written by TFS-Diff",
                                   lambda w: w / "evalout" / "m.md"),
    "eval-default-tables-over-user-file": Case("eval", lambda w: [str(w / "scored"), "--no-progress"], 2,
                                               lambda w: "metrics_gt.csv already exists and was not written",
                                               lambda w: w / "scored" / "metrics_gt.md"),
    "eval-figure-over-user-file": Case("eval", lambda w: [str(w / "results"), "--figure", str(w / "user" / "fig.png"),
                                                          "--overwrite", "--no-progress"], 2,
                                       lambda w: "fig.png already exists and was not written",
                                       lambda w: w / "results" / "metrics_gt.md"),
    "eval-figure-inside-results": Case("eval", lambda w: [str(w / "results"), "--figure",
                                                          str(w / "results" / "tfsdiff" / "fig.png")], 2,
                                       lambda w: "lies inside the input folder",
                                       lambda w: w / "results/tfsdiff/fig.png"),
    "eval-figure-is-an-input": Case("eval", lambda w: [str(w / "results"), "--figure",
                                                       str(w / "results" / "tfsdiff" / "a_fused.png"), "--overwrite"],
                                    2, lambda w: "a_fused.png"),
    # python -m paper.experiments --table and python -m paper.false_colour
    "experiments-table-infinite-psnr": Case("experiments", lambda w: ["--table", "--out", str(w / "exp_inf")], 2,
                                            lambda w: "pca.json: per_case.paper.c1.PSNR is missing or null",
                                            lambda w: w / "exp_inf" / "tables.md"),
    "experiments-table-nan-ssim": Case("experiments", lambda w: ["--table", "--out", str(w / "exp_nan")], 2,
                                       lambda w: "pca.json: per_case.paper.c2.SSIM is nan, not a finite number",
                                       lambda w: w / "exp_nan" / "tables.md"),
    "experiments-table-partial-write": Case("experiments", lambda w: ["--table", "--out", str(w / "exp_partial")], 2,
                                            lambda w: "tables.json already exists and was not written by TFS-Diff",
                                            lambda w: w / "exp_partial" / "tables.md"),
    "false-colour-fused-size-mismatch": Case("false_colour", lambda w: [str(w / "fc_fused")], 2,
                                             lambda w: "case b of " + str(w / "fc_fused") + ": the fused image and "
                                             "its sources differ in size (b_fused.png 8x8, b_src1.png 16x16"),
    "false-colour-source-size-mismatch": Case("false_colour", lambda w: [str(w / "fc_source")], 2,
                                              lambda w: "b_src2.png 16x8"),
    # data/prepare_data.py and data/builders/embedded.py
    "prepare-input-missing": Case("prepare", lambda w: ["slices", "--input", str(w.root / "nowhere"), "--folders",
                                                        "T1", "T2", "SPECT", "--out", str(w.root / "ds")], 2,
                                  lambda w: "nowhere", lambda w: w.root / "ds"),
    "prepare-out-exists": Case("prepare", lambda w: _slices_args(w, (w / "existing_dataset")), 2,
                               lambda w: "existing_dataset already exists and was not written by TFS-Diff"),
    # issue 22: the output is never an input, inside one or containing one; --overwrite only replaces the project's
    "prepare-out-is-input-overwrite": Case("prepare", lambda w: _slices_args(w, w / "slices", "--overwrite"), 2,
                                           lambda w: f"--out {w / 'slices'} is the input {w / 'slices'}"),
    "prepare-out-parent-of-input-overwrite": Case(
        "prepare", lambda w: _slices_in(w, w / "nest" / "scans", w / "nest", "--overwrite"), 2,
        lambda w: f"--out {w / 'nest'} contains the input {w / 'nest' / 'scans'}"),
    "prepare-out-inside-input": Case("prepare", lambda w: _slices_args(w, w / "slices" / "ds"), 2,
                                     lambda w: f"--out {w / 'slices' / 'ds'} lies inside the input folder "
                                               f"{w / 'slices'}", lambda w: w / "slices" / "ds"),
    "prepare-out-is-input-file": Case("prepare", lambda w: ["volumes", "--files", *[str(w / "afile")] * 3, "--out",
                                                            str(w / "afile"), "--overwrite", "--quiet"], 2,
                                      lambda w: f"--out {w / 'afile'} is the input {w / 'afile'}"),
    "prepare-overwrite-unmarked-folder": Case(
        "prepare", lambda w: _slices_args(w, w / "existing_dataset", "--overwrite"), 2,
        lambda w: f"{w / 'existing_dataset'} already exists and was not written by TFS-Diff"),
    "prepare-seed-negative": Case("prepare", lambda w: _slices_args(w, w.root / "ds", "--seed", "-1"), 2,
                                  lambda w: "--seed must be 0..4294967295, got -1", lambda w: w.root / "ds"),
    "prepare-seed-too-large": Case("prepare", lambda w: _slices_args(w, w.root / "ds", "--seed", str(2**32)), 2,
                                   lambda w: "--seed must be 0..4294967295", lambda w: w.root / "ds"),
    "prepare-workers-negative": Case("prepare", lambda w: _slices_args(w, w.root / "ds", "--workers", "-2"), 2,
                                     lambda w: "--workers must be >= 0, got -2", lambda w: w.root / "ds"),
    "prepare-size-zero": Case("prepare", lambda w: _slices_in(w, w / "slices", w.root / "ds", "--size", "0"), 2,
                              lambda w: "--size must be 8..16384, got 0", lambda w: w.root / "ds"),
    "prepare-pairs-copies-zero": Case("prepare", lambda w: ["pairs", "--input", str(w / "slices"), "--out",
                                                            str(w.root / "ds"), "--copies", "0", "--quiet"], 2,
                                      lambda w: "--copies must be >= 1, got 0", lambda w: w.root / "ds"),
    "embedded-seed-negative": Case("embedded", lambda w: ["--root", str(w.root / "emb"), "--seed", "-1", "--quiet"],
                                   2, lambda w: "--seed must be 0..4294967295, got -1", lambda w: w.root / "emb"),
    "prepare-out-under-file": Case("prepare", lambda w: _slices_args(w, w / "afile" / "ds"), 2,
                                   lambda w: str(w / "afile")),
    "prepare-out-read-only": Case("prepare", lambda w: _slices_args(w, _ro(w) / "ds"), 2, lambda w: str(_ro(w)),
                                  read_only=True),
    "embedded-root-not-empty": Case("embedded", lambda w: ["--root", str(w / "existing_dataset"), "--quiet"], 2,
                                    lambda w: "existing_dataset already exists and is not empty"),
    # benchmarks
    "bench-ckpt-random-bytes": Case("bench", lambda w: ["--checkpoint", str(w / "bad" / "random.pth"), "--out",
                                                        str(w.root / "b.json")], 2, lambda w: "random.pth",
                                    lambda w: w.root / "b.json"),
    "bench-config-missing": Case("bench", lambda w: ["--e2e-config", str(w.root / "none.json"), "--out",
                                                     str(w.root / "b.json")], 2, lambda w: "none.json"),
    "real-scans-data-missing": Case("real_scans", lambda w: ["--data", str(w.root / "nowhere"), "--out",
                                                             str(w.root / "rs")], 2, lambda w: "nowhere",
                                    lambda w: w.root / "rs"),
    # issue 22: everything is checked before anything is written; never over an input or a user's file
    "real-scans-out-contains-data": Case("real_scans", lambda w: _real_scans(w, w / "nest" / "scans", w / "nest"), 2,
                                         lambda w: f"--out {w / 'nest'} contains the input {w / 'nest' / 'scans'}"),
    "real-scans-out-is-data": Case("real_scans", lambda w: _real_scans(w, w / "slices", w / "slices"), 2,
                                   lambda w: f"--out {w / 'slices'} is the input {w / 'slices'}"),
    "real-scans-out-inside-triplets": Case(
        "real_scans", lambda w: _real_scans(w, w / "slices", w / "img" / "rs", "--triplets", str(w / "img")), 2,
        lambda w: f"--out {w / 'img' / 'rs'} lies inside the input folder {w / 'img'}", lambda w: w / "img" / "rs"),
    "real-scans-user-file-in-out": Case("real_scans", lambda w: _real_scans(w, w / "slices", w / "rs_user"), 2,
                                        lambda w: f"{w / 'rs_user'} already exists and was not written by "
                                                  "paper.real_scans"),
    "real-scans-figure-over-user-file": Case(
        "real_scans", lambda w: _real_scans(w, w / "slices", w.root / "rs", "--figure",
                                            str(w / "out" / "existing.png")),
        2, lambda w: "existing.png already exists and was not written by TFS-Diff", lambda w: w.root / "rs"),
    "real-scans-bad-checkpoint-writes-nothing": Case(
        "real_scans", lambda w: ["--data", str(w / "slices"), "-c", str(w / "tiny.json"), "--checkpoint",
                                 str(w / "bad" / "random.pth"), "--out", str(w.root / "rs"), "--no-progress"], 2,
        lambda w: "random.pth", lambda w: w.root / "rs"),
    "real-scans-peer-unknown": Case(
        "real_scans", lambda w: ["--data", str(w / "slices"), "-c", str(w / "tiny.json"), "--checkpoint",
                                 str(w / "ckpt"), "--out", str(w.root / "rs"), "--peer", "median", "--no-progress"], 2,
        lambda w: "--peer median: 'median' is not a published method", lambda w: w.root / "rs"),
    "real-scans-peer-wrong-weights-writes-nothing": Case(
        "real_scans", lambda w: ["--data", str(w / "slices"), "-c", str(w / "tiny.json"), "--checkpoint",
                                 str(w / "ckpt"), "--out", str(w.root / "rs"), "--peer",
                                 f"ifcnn={w / 'fake_peer'}", "--no-progress"], 2,
        lambda w: "IFCNN-MAX.pth is not the authors' weight file", lambda w: w.root / "rs"),
    "real-scans-config-missing-writes-nothing": Case(
        "real_scans", lambda w: ["--data", str(w / "slices"), "-c", str(w.root / "none.json"), "--out",
                                 str(w.root / "rs"), "--no-progress"], 2, lambda w: "none.json",
        lambda w: w.root / "rs"),
}


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_table_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert set(CLIS) == {case.cli for case in CASES.values()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, world: World, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    if case.read_only and world.ro is None:
        pytest.skip("no read-only folder here (root without /sys)")
    monkeypatch.chdir(world.root)
    before = _snapshot(world.root)
    if case.setup is not None:
        case.setup(monkeypatch)
    try:
        code = CLIS[case.cli](case.argv(world))
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in out + err
    assert case.names(world) in err, err
    after = _snapshot(world.root)
    changed = [str(p) for p, data in before.items() if after.get(p) != data]
    assert not changed, f"existing files changed: {changed}"
    if case.absent is not None:
        target = case.absent(world)
        assert not target.exists()
        assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.stem}")], "partial output"


# ----------------------------------------------------------------------------------------------- accepted inputs

def test_infer_reads_16_bit_and_rgba_sources_as_prepare_data_does(world: World, tmp_path: Path) -> None:
    """Issue cases 5 and 6: a 16-bit source is scaled by min-max (PIL's RGB conversion would clip it) and an RGBA
    source with white transparent pixels is composited on black, exactly as prepare_data reads them."""
    ramp = np.linspace(0, 4000, LOW * LOW).reshape(LOW, LOW).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "t1_16bit.png")
    rgba = np.random.default_rng(5).integers(0, 256, (LOW, LOW, 4), dtype=np.uint8)
    rgba[: LOW // 2, :, :3], rgba[: LOW // 2, :, 3] = 255, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "spect_rgba.png")
    paths = [tmp_path / "t1_16bit.png", world / "img" / "lr2.png", tmp_path / "spect_rgba.png"]
    out = tmp_path / "fused.png"
    assert infer.main(["-c", str(world / "tiny.json"), "--method", "average", "--inputs", *map(str, paths),
                       "--out", str(out)]) == 0
    read = [read_image(p) for p in paths]
    assert read[0].max() == 255 and (read[0] == 255).mean() < 0.05  # min-max, not clipped
    assert (read[2][: LOW // 2] == 0).all()  # transparent -> black
    expected = fuse("average", infer.upsample(read, (SIZE, SIZE)))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


@pytest.mark.slow
def test_infer_split_out_writes_one_folder_per_method_and_overwrites_on_request(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    base = ["-c", str(world / "tiny.json"), "--out", str(out), "--no-progress"]
    assert infer.main([*base, "--checkpoint", str(world / "ckpt")]) == 0
    assert infer.main([*base, "--method", "laplacian_ycbcr"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["laplacian_ycbcr", "tfsdiff"]
    model_fused = (out / "tfsdiff" / "p1_fused.png").read_bytes()
    assert infer.main([*base, "--method", "laplacian_ycbcr"]) == 2
    (out / "laplacian_ycbcr" / "stale_fused.png").write_bytes(b"old")
    assert infer.main([*base, "--method", "laplacian_ycbcr", "--overwrite"]) == 0
    assert not (out / "laplacian_ycbcr" / "stale_fused.png").exists()  # replaced, not merged
    assert (out / "tfsdiff" / "p1_fused.png").read_bytes() == model_fused
    assert sorted(p.name for p in out.iterdir()) == ["laplacian_ycbcr", "tfsdiff"]  # no temporary left
    shutil.copytree(out / "tfsdiff", out / ".tfsdiff.tmp1")  # what a killed run leaves: eval.py skips it
    capsys.readouterr()
    assert eval_cli.main([str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "Laplacian-YCbCr" in table and "TFS-Diff" in table and ".tfsdiff.tmp1" not in table


def test_overwrite_replaces_only_what_infer_wrote(world: World, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fused.png"
    assert infer.main(_rule(world, out)) == 0
    assert infer.main(_rule(world, out)) == 2
    assert f"{out} already exists: pass --overwrite" in capsys.readouterr().err
    assert infer.main(_rule(world, out, "--overwrite")) == 0  # its own output, unchanged since: replaced
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(out)  # the user edits it: now it is theirs
    assert infer.main(_rule(world, out, "--overwrite")) == 2
    assert "was not written by TFS-Diff (or was changed since)" in capsys.readouterr().err
    assert not np.asarray(Image.open(out)).any()


def test_the_default_results_folder_is_replaced_so_a_command_runs_again_and_again(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first command, twice: without --out, infer.py's own previous results are replaced; a folder of
    the same name that infer.py did not write is kept and refused."""
    monkeypatch.chdir(tmp_path)
    args = ["-c", str(world / "tiny.json"), "--method", "average"]
    assert infer.main(args) == 0
    folder = tmp_path / "results" / "tiny" / "test" / "average"
    assert (folder / FOLDER_MARKER).is_file()
    (folder / "p1_fused.png").write_bytes(b"stale")
    assert infer.main(args) == 0
    assert (folder / "p1_fused.png").read_bytes() != b"stale"
    (folder / FOLDER_MARKER).unlink()
    assert infer.main(args) == 2
    assert (folder / "p1_fused.png").exists()


def test_a_config_with_a_byte_order_mark_is_read(tmp_path: Path, world: World) -> None:
    text = (world / "tiny.json").read_text(encoding="utf-8")
    (tmp_path / "bom.json").write_text("\ufeff" + text, encoding="utf-8")
    assert load_config(tmp_path / "bom.json") == load_config(world / "tiny.json")


def test_a_float_image_with_nan_pixels_keeps_its_other_pixels(tmp_path: Path) -> None:
    """NaN (no data) reads as the minimum of the finite pixels: one NaN no longer turns a source black."""
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    ramp[3, 4] = np.nan
    ramp[5, 5] = np.inf
    Image.fromarray(ramp, mode="F").save(tmp_path / "pet.tif")
    image = read_image(tmp_path / "pet.tif")
    assert image[..., 0].max() == 255 and image[0, 0, 0] == 0 and image[3, 4, 0] == 0 and image[5, 5, 0] == 0
    assert image[7, 6, 0] == np.rint(ramp[7, 6] * 255)
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "empty.tif")
    with pytest.raises(ImageReadError, match="empty.tif: no pixel holds a finite value"):
        read_image(tmp_path / "empty.tif")


@pytest.mark.slow
def test_release_overwrite_replaces_only_its_own_release(world: World, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world.root)
    out = tmp_path / "r.pth"
    assert release.main(_release(world, out)) == 0
    assert release.main(_release(world, out)) == 2  # it exists: replacing it needs --overwrite
    (tmp_path / FILE_LEDGER).unlink()  # a release the ledger does not know (as committed in pretrained/) ...
    assert release.main([*_release(world, out), "--overwrite"]) == 0  # ... is verified as one, then replaced
    manifest = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert manifest["file"] == "r.pth" and manifest["sha256"] == sha256_file(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_LEDGER, "r.json", "r.pth"]  # no temporary left
    out.write_bytes(out.read_bytes() + b"x")  # changed since: no longer the release its manifest names
    changed = out.read_bytes()
    assert release.main([*_release(world, out), "--overwrite"]) == 2
    assert out.read_bytes() == changed


def test_eval_rewrites_its_own_tables_only(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "m"
    args = [str(world / "results"), "--out", str(prefix), "--no-progress"]
    assert eval_cli.main(args) == 0
    assert eval_cli.main(args) == 2
    assert "m.md already exists: pass --overwrite" in capsys.readouterr().err
    assert eval_cli.main([*args, "--overwrite"]) == 0
    Path(f"{prefix}.csv").write_text("edited by hand\n", encoding="utf-8")
    assert eval_cli.main([*args, "--overwrite"]) == 2
    assert "m.csv already exists and was not written by TFS-Diff" in capsys.readouterr().err
    assert Path(f"{prefix}.csv").read_text(encoding="utf-8") == "edited by hand\n"
    results = shutil.copytree(world / "results", tmp_path / "results")  # the default PREFIX: rewritten every run
    assert eval_cli.main([str(results), "--no-progress"]) == 0
    assert eval_cli.main([str(results), "--no-progress"]) == 0


def test_experiments_table_rewrites_its_own_tables_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _record(tmp_path / "exp")
    args = ["--table", "--out", str(tmp_path / "exp")]
    tables = tmp_path / "exp" / "tables.md"
    assert experiments.main(args) == 0
    written = tables.read_bytes()
    assert experiments.main(args) == 0  # its own tables (recorded in the ledger)
    (tmp_path / "exp" / FILE_LEDGER).unlink()  # a fresh clone: no ledger, tables exactly as generated
    assert experiments.main(args) == 0 and tables.read_bytes() == written
    tables.write_bytes(written + b"my notes\n")
    assert experiments.main(args) == 2
    assert "tables.md already exists and was not written by TFS-Diff" in capsys.readouterr().err
    assert tables.read_bytes() == written + b"my notes\n"


@pytest.mark.slow
def test_prepare_overwrite_replaces_only_its_own_marked_output(world: World, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """prepare_data.py marks its output; --overwrite replaces that output, never a folder without the marker; the
    marker does not disturb reading the dataset."""
    out = tmp_path / "ds"
    assert prepare_data.main(_slices_args(world, out)) == 0
    assert (out / FOLDER_MARKER).is_file()
    assert len(FusionDataset(out / "train", 16, 32)) == 1  # the hidden marker is no case and no folder
    assert prepare_data.main(_slices_args(world, out)) == 2
    assert f"{out} already holds results: pass --overwrite" in capsys.readouterr().err
    (out / "train" / "stale.txt").write_text("old", encoding="utf-8")
    assert prepare_data.main(_slices_args(world, out, "--overwrite")) == 0  # its own: replaced, not merged
    assert not (out / "train" / "stale.txt").exists() and (out / FOLDER_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary or replaced folder left
    (out / FOLDER_MARKER).unlink()  # now it is the user's folder
    assert prepare_data.main(_slices_args(world, out, "--overwrite")) == 2
    assert "was not written by TFS-Diff" in capsys.readouterr().err and (out / "manifest.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_data.main(_slices_args(world, empty)) == 0 and (empty / FOLDER_MARKER).is_file()


def test_embedded_dataset_is_marked_and_an_unmarked_one_is_still_reused(embedded_dataset: Path,
                                                                        tmp_path: Path) -> None:
    """The embedded dataset holds the marker, loads as before, and one built before the marker existed (no marker)
    is still recognised by its manifest and reused, not rebuilt."""
    assert (embedded_dataset / FOLDER_MARKER).is_file()
    assert len(FusionDataset(embedded_dataset / "test", 8, 32)) > 0
    old = tmp_path / "old"
    shutil.copytree(embedded_dataset, old)
    (old / FOLDER_MARKER).unlink()
    before = _snapshot(old)
    assert embedded.ensure_embedded_dataset(old, 32, (4,), 0, progress=False, limit=4) == old
    assert _snapshot(old) == before


def test_debug_shows_the_traceback_with_the_same_exit_code(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    args = _with_ckpt(world, world / "bad" / "random.pth")
    assert infer.main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert infer.main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "random.pth" in err


def _raises(err: BaseException) -> Callable[[], int]:
    def action() -> int:
        raise err
    return action


@pytest.mark.parametrize("err, code, message", [
    (UsageError("--x: bad"), 2, "error: --x: bad"),
    (PermissionError(errno.EACCES, "Permission denied", "/a/b"), 2, "error: /a/b: permission denied: fix its"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/a/f/x"), 2, "/a/f/x: a part of the path is a file"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/a/d"), 2, "/a/d: is a folder where a file is expected"),
    (FileExistsError("/a/out already exists"), 2, "/a/out already exists: remove it or choose another path"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "no space left on the device: free some space"),
    (OSError(errno.EIO, "Input/output error", "/dev/x"), 1, "/dev/x: Input/output error"),
    (RuntimeError("CUDA out of memory.\nmore lines"), 1, "failed with RuntimeError: CUDA out of memory. (run again "
                                                         "with --debug"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
])
def test_run_command_policy(err: BaseException, code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_raises(err)) == code
    printed = capsys.readouterr().err
    assert message in printed and "Traceback" not in printed and "more lines" not in printed
    assert run_command(_raises(err), debug=True) == code
    assert "Traceback" in capsys.readouterr().err
