"""The real-scan benchmark (issue 12): TFS-Diff against every bicubic-then-fuse baseline on the real test triplets.

    python -m paper.real_scans --data <folder of the public Harvard pairs> [--triplets <folder like harvard_trimodal>]
        [-c CONFIG] [--checkpoint PATH] [--cases N] [--out DIR] [--figure FILE] [--sampler S] [--steps N] [--eta E]
        [--samples K] [--start-step S] [--peer NAME[=DIR] ...] [--sr3 [CHECKPOINT]] [--sr3-config FILE]
        [--no-progress]

1. **Test split.** The real triplets of the test subjects 21, 28 and 41 in --data plus the kept cases of --triplets,
   built with the rules of ``prepare_data.py pairs --splits test`` (``data.builders.pairs_form``,
   ``data.prepare_data.prepare_pairs``) into ``<out>/data``: each 256x256 source is an HR image, the LR input is
   ``data.resample.degrade`` of it at the config's scale, and the ground truth is ``laplacian_ycbcr`` of the HR
   sources, exactly as in the test split of the prepared dataset, which it extends only by the HR sources
   themselves (``{k}_hr_{r}/``, ``data.layout.source_hr_dir``). ``--cases N`` keeps the first N cases.
2. **Fusion.** TFS-Diff (a ``model.fuser.Fuser``, weights only, through ``model.evaluation.evaluate_model``,
   timed without the model loading) into ``<out>/x<scale>/tfsdiff/`` and every rule of
   ``data.fusion_rules.FUSION_RULES`` on the same bicubic-upsampled inputs (``fuse_with_rule``) into
   ``<out>/x<scale>/<rule>/``: the results layout, so ``python eval.py <out>/x<scale>`` reads them too. ``--peer``
   adds published methods; ``--sr3`` adds the paper's sequential baselines ``sr3+NAME`` (``model.sr3``) for every
   rule and every ``--peer`` method into ``<out>/x<scale>/sr3+NAME/``: the SR3 model of the scale super-resolves each
   case's three bicubic inputs once (seeded), timed on its own, and each method fuses the SR3 images.
3. **Scores.** ``metrics.scoring.score_folder``, eval.py's metrics against the ground truth (suite paper: grey metrics,
   and LPIPS when its AlexNet weights are installed), in the paper convention (``<out>/real_scans.md``, printed) and
   the cddfuse convention (``<out>/real_scans_cddfuse.md``), mean ± std over all cases and per subject (the
   manifest's record of each case; ``other`` when unknown).
4. ``<out>/real_scans.json``: the run, per-case numbers, the summaries, TFS-Diff's seconds per fused image, its PSNR
   and SSIM margins over the best baseline (by mean grey PSNR) overall and per subject, and whether the issue's
   targets are met (``paper.real_scans_report``); the false colour of every method (``paper.false_colour``: mean
   chroma where all three inputs are grey), per case and per group, also printed for all cases.
5. ``--figure FILE``: ``metrics.figure.comparison_figure`` of 4 cases spread over the subjects.

The checkpoint is --checkpoint, else the config's ``path.resume_state``, else ``path.pretrained``. A missing folder,
a config without a checkpoint, an unreadable image and the like print one line ``error: ...`` and exit with 2
(``core.cli.run_command``'s policy; ``--debug`` adds the traceback).

What may be written (``core.outputs``, issue 22). Everything is checked before anything is written: the config loads,
the checkpoint is readable (``model.checkpoint_io.check_readable``), and

- ``--out`` is never an input (``--data``, ``--triplets``, the checkpoint, the config), never lies inside an input
  folder and never contains an input; the same holds for ``--figure``;
- ``--out`` is absent, empty, or a folder that paper.real_scans wrote (its ``.tfsdiff-output`` marker names
  paper.real_scans, or bench.real_scans, the module's former name); any other folder or file is refused and never
  deleted;
- inside it, the folders it replaces (``data/``, ``x<scale>/<method>/``) must be the project's (marked) and the
  files it replaces (``real_scans{.md,_cddfuse.md,.json}``, ``--figure``) must be the ones it wrote, unchanged since
  (``core.outputs`` ledger); a user's file or folder there is refused, never replaced.

A run into its own previous ``--out`` replaces its own previous results without ``--overwrite`` (the documented
rerun); each method folder is written into a hidden temporary folder and renamed into place when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from torch.utils.data import DataLoader
from tqdm import tqdm

from core.cli import add_debug_arg, add_sampler_args, apply_sampler_args, checkpoint_to_load, run_and_report
from core.config import DatasetConfig, TFSDiffConfig, load_config
from core.errors import UsageError
from core.logger import setup_logger
from core.outputs import FOLDER_MARKER, OutputError, check_apart, check_file_target, check_folder_target, mark_folder, \
    publish_files, publish_folder, record_files
from core.registry import PUBLISHED_FUSION
from data.builders.pairs_form import PairsRequest
from data.fusion_rules import FUSION_RULES
from data.images import read_image
from data.loader import dataset_from_config
from data.prepare_data import Output, Settings, prepare_pairs
from metrics.figure import FigureSection, comparison_figure
from metrics.fusion import CONVENTIONS
from metrics.lpips import load_lpips, missing_weights_note
from metrics.registry import tensor2img
from metrics.scoring import MethodScores, metric_names, score_folder
from metrics.tables import MODEL_RUN, to_markdown
from model.checkpoint_io import check_readable
from model.evaluation import BASELINE_RULE, evaluate_model, fuse_with_rule, method_fuser
from model.fuser import Fuser
from model.sr3 import SR3_PREFIX, SequentialMethod, SuperResolver, default_sr3_config, load_sr3
from paper import real_scans_report as report
from paper.false_colour import folder_false_colour

DEFAULT_CONFIG = "config/harvard_x4_residual_start200_64_256.json"
DEFAULT_OUT = "results/real_scans"
FIGURE_CASES = 4
PREPARE_SEED = 0  # prepare_data's default; the test split does not depend on it (no augmentation in test)
REFERENCE, SUITE = "gt", "paper"
COMMAND = "paper.real_scans"
FORMER_COMMANDS = ("bench.real_scans",)  # the module's name before paper/: an --out written under it stays its own
METHODS = (*FUSION_RULES, MODEL_RUN)
REPORT_FILES = ("real_scans.md", "real_scans_cddfuse.md", "real_scans.json")
T = TypeVar("T")


class BenchError(UsageError):
    """A command-line input is missing or unusable (exit status 2)."""


@dataclass(frozen=True)
class Setup:
    """The config (with the sampler flags applied), the checkpoint to sample with, and the split whose
    l_resolution / r_resolution set the scale (datasets.test, else datasets.val)."""

    cfg: TFSDiffConfig
    checkpoint: str
    split: DatasetConfig

    @property
    def scale(self) -> str:
        return f"x{self.split.r_resolution // self.split.l_resolution}"


@dataclass(frozen=True)
class Fused:
    """The method folders of one run (baselines in FUSION_RULES order, TFS-Diff last) and the model's speed."""

    folders: dict[str, Path]
    seconds_per_image: float
    published_seconds: dict[str, float] = field(default_factory=dict)  # published method -> seconds per image
    sr3_seconds: float | None = None  # SR3's seconds per case (three sources), for the sr3+NAME rows


@dataclass(frozen=True)
class SR3Pipelines:
    """The SR3 model of --sr3 (its config file, the config, its weights and the cached `SuperResolver`) and the
    sequential methods sr3+NAME that share it."""

    config: str
    cfg: TFSDiffConfig
    weights: str
    resolver: SuperResolver
    methods: dict[str, SequentialMethod]


def add_comparison_args(parser: argparse.ArgumentParser) -> None:
    """--peer, --sr3 and --sr3-config: the comparison methods (also paper.experiments --run)."""
    parser.add_argument("--peer", action="append", default=[], metavar="NAME[=DIR]",
                        help="also fuse with the published method NAME (ifcnn, prrgan, matr, mufusion, ctsr, bitonicx), "
                             "its authors' weights in DIR (a clone of their repository; bitonicx has none); repeat "
                             "for several methods")
    parser.add_argument("--sr3", nargs="?", const="", metavar="CHECKPOINT",
                        help="also run the paper's sequential baselines sr3+NAME for every rule and every --peer "
                             "method: SR3 super-resolves the three inputs, then NAME fuses them; CHECKPOINT: the SR3 "
                             "weights (default: the SR3 config's path.pretrained, pretrained/sr3_x<s>_<l>_<r>.pth)")
    parser.add_argument("--sr3-config", metavar="FILE", help="with --sr3: the SR3 config (default: "
                        "config/sr3_x<s>_<l>_<r>.json of the scale)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="folder of the public Harvard pairs (CT-MRI/, "
                        "PET-MRI/, SPECT-MRI/)")
    parser.add_argument("--triplets", nargs="+", type=Path, default=[], metavar="DIR",
                        help="folders of real triplets <case>_<k>_<modality>.png (like harvard_trimodal)")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"model config (default {DEFAULT_CONFIG})")
    parser.add_argument("--checkpoint", help="weights to sample with (default: the config's path.resume_state, else "
                        "path.pretrained)")
    parser.add_argument("--cases", type=int, help="only the first N test cases (quick checks)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT}): "
                        "absent, empty or a previous --out of paper.real_scans (its own results are replaced); never "
                        "an input, inside one or containing one")
    parser.add_argument("--figure", type=Path, help="also write a comparison figure of 4 cases to this PNG file (never "
                        "over a file it did not write)")
    add_comparison_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_arg(parser)
    add_sampler_args(parser)
    return parser.parse_args(argv)


def sequential_methods(args: argparse.Namespace) -> list[str]:
    """The sr3+NAME rows of --sr3: every rule of FUSION_RULES, then every --peer method (none without --sr3)."""
    if args.sr3 is None:
        return []
    return [SR3_PREFIX + name for name in (*FUSION_RULES, *published_methods(args))]


def published_methods(args: argparse.Namespace) -> dict[str, str | None]:
    """--peer NAME[=DIR] as name -> weights folder (None without one), in the order given; BenchError for a name that
    is not a published method or a repeated one."""
    published = PUBLISHED_FUSION.names()
    peers: dict[str, str | None] = {}
    for given in args.peer:
        name, _, folder = given.partition("=")
        if name not in published:
            raise BenchError(f"--peer {given}: {name!r} is not a published method (one of {', '.join(published)})")
        if name in peers:
            raise BenchError(f"--peer {name} is given twice")
        peers[name] = folder or None
    return peers


def check_comparison_args(args: argparse.Namespace) -> None:
    """BenchError naming the argument when --peer (`published_methods`) or --sr3-config (only with --sr3) is
    unusable; loads nothing."""
    published_methods(args)
    if args.sr3_config and args.sr3 is None:
        raise BenchError("--sr3-config goes with --sr3 (the sequential baselines)")


def comparison_inputs(args: argparse.Namespace) -> list[str]:
    """The files and folders that --peer and --sr3 name (the weights folders, the SR3 checkpoint and config)."""
    return [*filter(None, published_methods(args).values()), *filter(None, (args.sr3, args.sr3_config))]


def _check_inputs(args: argparse.Namespace) -> None:
    for folder in (args.data, *args.triplets):
        if not folder.is_dir():
            raise BenchError(f"folder {folder} does not exist")
    if args.cases is not None and args.cases < 1:
        raise BenchError(f"--cases must be at least 1, got {args.cases}")
    if args.figure is not None and args.figure.suffix.lower() != ".png":
        raise BenchError(f"--figure {args.figure}: expected a .png file name")
    check_comparison_args(args)


def _inputs(args: argparse.Namespace, setup: Setup) -> list[Path | str]:
    """Every file and folder the run reads: --data, --triplets, the checkpoint and the config."""
    return [args.data, *args.triplets, setup.checkpoint, args.config, *comparison_inputs(args)]


def _writer(folder: Path) -> str | None:
    """The command named by the marker of `folder` (None without a readable marker)."""
    try:
        return json.loads((folder / FOLDER_MARKER).read_text(encoding="utf-8")).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def check_outputs(args: argparse.Namespace, setup: Setup) -> None:
    """OutputError (exit 2) naming the path unless every output may be written (module docstring); writes nothing."""
    out, inputs = args.out, _inputs(args, setup)
    check_apart(out, inputs, "--out")
    if args.figure is not None:
        check_apart(args.figure, inputs, "--figure")
        check_file_target(args.figure, True, "--figure")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"--out {out} is a file, not a folder of results: choose another --out")
    if out.is_dir() and any(out.iterdir()) and _writer(out) not in (COMMAND, *FORMER_COMMANDS):
        raise OutputError(f"{out} already exists and was not written by {COMMAND} (it has no {FOLDER_MARKER} marker "
                          "of it): it is never replaced; choose another --out (absent or empty) or remove it yourself")
    scale_dir = out / setup.scale
    if scale_dir.is_symlink() or (scale_dir.exists() and not scale_dir.is_dir()):
        raise OutputError(f"{scale_dir} is not a folder: it would hold the results; remove it or choose another --out")
    methods = (*METHODS, *published_methods(args), *sequential_methods(args))
    for folder in (out / "data", *(scale_dir / method for method in methods)):
        check_folder_target(folder, True, "--out")
    for name in REPORT_FILES:
        check_file_target(out / name, True, "--out")


def _start_out(out: Path) -> bool:
    """Create --out (checked by `check_outputs`) and mark it as paper.real_scans's; whether it was created now."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    mark_folder(out, COMMAND)
    return created


def _drop_if_unused(out: Path) -> None:
    """Remove --out made by a run that failed before writing anything into it (nothing but the marker)."""
    try:
        if [p.name for p in out.iterdir()] == [FOLDER_MARKER]:
            (out / FOLDER_MARKER).unlink()
            out.rmdir()
    except OSError:
        pass


def _replace_folder(folder: Path, write: Callable[[Path], T]) -> T:
    """`write` into a hidden temporary sibling of `folder`, then mark it and rename it into place, replacing the
    project's previous `folder` (`core.outputs.publish_folder`); the temporary folder never stays behind."""
    check_folder_target(folder, True, "--out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        result = write(staging)
        check_folder_target(folder, True, "--out")
        publish_folder(staging, folder, COMMAND)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def build_test_split(args: argparse.Namespace, split: DatasetConfig) -> tuple[Path, dict[str, str | None]]:
    """Write the test split into ``<out>/data`` (replacing the project's previous one); returns its folder and case
    id -> subject (None when unknown)."""
    settings = Settings(split.r_resolution, (split.l_resolution,), BASELINE_RULE, resize=False, hr_sources=True)
    output = Output(args.out / "data", settings, (split.r_resolution // split.l_resolution,), (0, 0, 0),
                    PREPARE_SEED, workers=0, overwrite=True, progress=not args.no_progress)
    root = prepare_pairs(PairsRequest(args.data, tuple(args.triplets), splits=("test",)), output)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    subjects = {case: manifest["real_triplets"][case]["subject"] for case in manifest["splits"]["test"]}
    return root / "test", subjects


def fuse_methods(methods: dict[str, Callable], loader: DataLoader, scale_dir: Path) -> dict[str, float]:
    """Every fusion function of `methods` (name -> function of three uint8 sources: a rule of FUSION_RULES, a loaded
    published method, `method_fuser`, or a sequential method sr3+NAME) into ``scale_dir/<name>/`` (each replaced when
    complete); name -> seconds per fused image (writing the results layout included)."""
    seconds = {}
    for name, fuse_case in methods.items():
        def write(staging: Path, fuse_case: Callable = fuse_case) -> float:
            start = time.perf_counter()
            count = len(fuse_with_rule(fuse_case, loader, staging))
            return (time.perf_counter() - start) / max(1, count)

        seconds[name] = _replace_folder(scale_dir / name, write)
    return seconds


def fuse_baselines(loader: DataLoader, scale_dir: Path) -> dict[str, float]:
    """Every rule of FUSION_RULES into ``scale_dir/<rule>/`` (`fuse_methods`); rule -> seconds per fused image."""
    return fuse_methods(dict(FUSION_RULES), loader, scale_dir)


def load_peers(args: argparse.Namespace) -> dict[str, Callable]:
    """The published methods of --peer, loaded with their weights (checked, `method_fuser`): name -> fusion
    function."""
    return {name: method_fuser(name, folder) for name, folder in published_methods(args).items()}


def load_sr3_pipelines(args: argparse.Namespace, split: DatasetConfig,
                       peers: dict[str, Callable]) -> SR3Pipelines | None:
    """The SR3 model of --sr3 / --sr3-config for the scale of `split` (config and weights checked,
    `model.sr3.load_sr3`; one cached `SuperResolver`) and its sr3+NAME methods for every rule and every loaded
    `peers` method; None without --sr3."""
    if args.sr3 is None:
        return None
    cfg, weights = load_sr3(split, args.sr3_config, args.sr3 or None)
    resolver = SuperResolver(Fuser.from_checkpoint(cfg, weights), cache=True)
    fusers = {**FUSION_RULES, **peers}
    methods = {method: SequentialMethod(method, resolver, fusers[method.removeprefix(SR3_PREFIX)])
               for method in sequential_methods(args)}
    return SR3Pipelines(args.sr3_config or str(default_sr3_config(split)), cfg, weights, resolver, methods)


def super_resolve(resolver: SuperResolver, loader: DataLoader, progress: bool) -> float:
    """Run SR3 (with its cache) on the three bicubic inputs of every case, once, so that the sr3+NAME rows time their
    fusion only; returns SR3's seconds per case."""
    start, count = time.perf_counter(), 0
    for batch in tqdm(loader, desc="SR3", disable=not progress, leave=False):
        for i in range(len(batch)):
            resolver([tensor2img(src[i]) for src in batch.sources])
            count += 1
    return (time.perf_counter() - start) / max(1, count)


def fuse_model(cfg: TFSDiffConfig, checkpoint: str, loader: DataLoader, folder: Path, progress: bool) -> float:
    """TFS-Diff into ``folder`` (replaced when complete); returns its seconds per fused image (model loading
    excluded)."""
    fuser = Fuser.from_checkpoint(cfg, checkpoint)

    def write(staging: Path) -> float:
        start = time.perf_counter()
        evaluation = evaluate_model(fuser, loader, staging, progress=progress)
        return (time.perf_counter() - start) / len(evaluation.cases)

    return _replace_folder(folder, write)


def fuse_all(cfg: TFSDiffConfig, checkpoint: str, loader: DataLoader, scale_dir: Path, progress: bool,
             peers: dict[str, Callable] | None = None,
             sequential: dict[str, SequentialMethod] | None = None) -> Fused:
    """Every baseline rule, every published method of `peers`, every sequential method sr3+NAME of `sequential`
    (SR3 run once per case first, `super_resolve`) and TFS-Diff into ``scale_dir/<method>/`` (each folder replaced
    when complete)."""
    folders = {rule: scale_dir / rule for rule in fuse_baselines(loader, scale_dir)}
    peer_seconds = fuse_methods(peers or {}, loader, scale_dir)
    sr3_seconds = None
    if sequential:
        sr3_seconds = super_resolve(next(iter(sequential.values())).resolver, loader, progress)
        peer_seconds |= fuse_methods(dict(sequential), loader, scale_dir)
    folders |= {name: scale_dir / name for name in peer_seconds} | {MODEL_RUN: scale_dir / MODEL_RUN}
    seconds_per_image = fuse_model(cfg, checkpoint, loader, folders[MODEL_RUN], progress)
    return Fused(folders, seconds_per_image, peer_seconds, sr3_seconds)


def score_all(folders: dict[str, Path], ids: list[str], progress: bool) -> tuple[dict[str, list[MethodScores]],
                                                                                str | None]:
    """convention -> the scores of every method folder (eval.py's scoring), and why LPIPS is n/a (or None)."""
    lpips = load_lpips()
    lpips_missing = None
    if lpips is None:
        print(missing_weights_note(), file=sys.stderr)
        lpips_missing = "AlexNet weights not installed"
    scores = {convention: [score_folder(folder, ids, REFERENCE, SUITE, lpips, convention, read_image, progress)
                           for folder in folders.values()] for convention in CONVENTIONS}
    return scores, lpips_missing


def figure_cases(groups: dict[str, list[str]], count: int = FIGURE_CASES) -> list[str]:
    """``count`` cases spread over the subject groups: picks go round-robin over the groups (in order, while they
    have cases left); a group with m picks out of n cases gives the middle cases of m equal parts."""
    subject_groups = {g: ids for g, ids in groups.items() if g != report.ALL} or {report.ALL: groups[report.ALL]}
    picks = dict.fromkeys(subject_groups, 0)
    while sum(picks.values()) < min(count, sum(map(len, subject_groups.values()))):
        for group, ids in subject_groups.items():
            if picks[group] < len(ids) and sum(picks.values()) < count:
                picks[group] += 1
    return [ids[(2 * j + 1) * len(ids) // (2 * picks[g])] for g, ids in subject_groups.items() for j in range(picks[g])]


def _tables(scores: dict[str, list[MethodScores]], groups: dict[str, list[str]],
            lpips_missing: str | None) -> tuple[dict[str, str], dict[str, Any]]:
    """convention -> Markdown tables, and the JSON part of the numbers (per case, summaries, margins, targets)."""
    metrics = metric_names(SUITE)
    markdown, numbers = {}, {"per_case": {}, "summary": {}}
    for convention, methods in scores.items():
        sections = report.group_sections(methods, groups, metrics)
        markdown[convention] = to_markdown(sections, REFERENCE, convention, lpips_missing)
        numbers["per_case"][convention] = report.per_case(methods)
        numbers["summary"][convention] = report.summary(sections, list(groups))
    numbers["margins"] = {group: report.margins([m.select(ids) for m in scores["paper"]])
                          for group, ids in groups.items()}
    numbers["targets"] = report.targets(numbers["margins"])
    return markdown, numbers


def _setup(args: argparse.Namespace) -> Setup:
    cfg = apply_sampler_args(args, load_config(args.config))
    checkpoint = checkpoint_to_load(args.checkpoint, cfg, for_training=False)
    if not checkpoint:
        raise BenchError(f"no checkpoint: {args.config} sets neither path.resume_state nor path.pretrained; pass "
                         "--checkpoint PATH")
    check_readable(checkpoint)  # now, before anything is written
    split = cfg.datasets.test or cfg.datasets.val
    if split is None:
        raise BenchError(f"{args.config} has neither datasets.test nor datasets.val (their l_resolution and "
                         "r_resolution set the scale)")
    return Setup(cfg, str(checkpoint), split)


def _run_info(args: argparse.Namespace, setup: Setup, test_root: Path, subjects: dict[str, str | None],
              groups: dict[str, list[str]], fused: Fused) -> dict[str, Any]:
    """The JSON record of what was run: inputs, model, sampler, cases with their subjects, folders, speed."""
    split = setup.split
    return {"config": args.config, "checkpoint": setup.checkpoint, "sampler": asdict(setup.cfg.model.sampler),
            "data": str(args.data.resolve()), "triplets": [str(t.resolve()) for t in args.triplets],
            "test_split": str(test_root), "scale": setup.scale, "l_resolution": split.l_resolution,
            "r_resolution": split.r_resolution, "reference": REFERENCE, "suite": SUITE,
            "cases": [{"case_id": c, "subject": subjects[c]} for c in groups[report.ALL]], "groups": groups,
            "methods": {m: str(f) for m, f in fused.folders.items()}, "seconds_per_image": fused.seconds_per_image,
            "published_seconds_per_image": fused.published_seconds, "sr3": args.sr3, "sr3_config": args.sr3_config,
            "sr3_seconds_per_case": fused.sr3_seconds}


def _heading(args: argparse.Namespace, setup: Setup, cases: int) -> list[str]:
    sampler = setup.cfg.model.sampler
    steps = f", {sampler.steps} steps" if sampler.steps else ""
    eta = f", eta {sampler.eta}" if sampler.type == "ddim" else ""
    start = f" from step {sampler.start_step}" if sampler.start_step is not None else ""
    samples = f", mean of {sampler.samples} samples" if sampler.samples > 1 else ""
    return [f"# Real-scan benchmark: {cases} real test triplets at {setup.scale} ({setup.split.l_resolution} -> "
            f"{setup.split.r_resolution} px)", "",
            f"- Model: {args.config}, checkpoint {setup.checkpoint}, sampler {sampler.type}{steps}{start}{eta}, "
            f"clip {sampler.clip}{samples}."]


def run(args: argparse.Namespace) -> str:
    """The whole benchmark; returns the Markdown to print (also written to ``<out>/real_scans.md``)."""
    _check_inputs(args)
    # published methods and the SR3 model are loaded (their weights checked) before anything is written
    peers = load_peers(args)
    setup = _setup(args)
    pipelines = load_sr3_pipelines(args, setup.split, peers)
    sequential = pipelines.methods if pipelines is not None else {}
    check_outputs(args, setup)
    created = _start_out(args.out)
    try:
        test_root, subjects = build_test_split(args, setup.split)
    except BaseException:
        if created:
            _drop_if_unused(args.out)
        raise
    loader = dataset_from_config(replace(setup.split, dataroot=str(test_root), data_len=args.cases or -1),
                                 seed=setup.cfg.seed, train=False)[2]
    ids = list(loader.dataset.case_ids)
    fused = fuse_all(setup.cfg, setup.checkpoint, loader, args.out / setup.scale, not args.no_progress, peers,
                     sequential)
    groups = report.case_groups(ids, subjects)
    scores, lpips_missing = score_all(fused.folders, ids, not args.no_progress)
    markdown, numbers = _tables(scores, groups, lpips_missing)
    colour = {method: folder_false_colour(folder, ids, read_image) for method, folder in fused.folders.items()}
    numbers["false_colour"] = report.false_colour_summary(colour, groups)
    text = "\n".join([*_heading(args, setup, len(ids)),
                      *report.verdict_lines(numbers["margins"], numbers["targets"], fused.seconds_per_image),
                      report.false_colour_line(numbers["false_colour"]),
                      *([f"- Published methods, seconds per fused image (weights loading excluded): "
                         + ", ".join(f"{report.display_name(m)} {s:.2f}" for m, s in fused.published_seconds.items())
                         + "."] if fused.published_seconds else []),
                      *([f"- SR3 ({args.sr3 or 'the SR3 config of the scale'}): {fused.sr3_seconds:.2f} s per case "
                         "(three sources); the sr3+NAME times above are the fusion of the SR3 images only."]
                        if fused.sr3_seconds is not None else []), "", markdown["paper"]])
    record = _run_info(args, setup, test_root, subjects, groups, fused) | numbers
    publish_files(dict(zip((args.out / name for name in REPORT_FILES),
                           (text, markdown["cddfuse"], json.dumps(record, indent=1) + "\n"))), overwrite=True)
    if args.figure is not None:
        section = FigureSection(setup.scale, tuple(fused.folders.items()))
        check_file_target(args.figure, True, "--figure")
        comparison_figure([section], figure_cases(groups), args.figure, read_image)
        record_files([args.figure])
        print(f"figure written to {args.figure}", file=sys.stderr)
    print(f"written {args.out}/real_scans{{.md,_cddfuse.md,.json}}", file=sys.stderr)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    return run_and_report(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
