"""The paper's experiments at laptop scale: evaluate each trained row, and the paper's comparison rows, on the real
test triplets, and rebuild the Table 1-like, no-reference, best-sequential, Table 2-like and ablation-difference tables
from the saved results.

    python -m paper.experiments --run ROW --data <folder of the public Harvard pairs> [--triplets DIR ...]
        [--config FILE] [--checkpoint PATH] [--allow-partial] [--cases N] [--peer NAME[=DIR] ...]
        [--sr3 [CHECKPOINT]] [--sr3-config FILE] [--out DIR] [--no-progress]
    python -m paper.experiments --table [--out DIR]

Rows (``paper.records.ROWS``), in two forms:

- the real-scan recipe (residual form, two stages; the form of the shipped weights): recipe_x2, recipe_x4, recipe_x8
  (configs ``config/harvard_x{2,4,8}_residual_start200_*.json``) and the Table 2 ablations recipe_wo_tmfa_x4,
  recipe_wo_psf_x4, recipe_official_x4 (``config/experiments/recipe/<ablation>_x4_start200.json``); each trained by
  ``python sr.py -p train -c <stage 1 config>``, then ``python sr.py -p train -c <its stage 2 config> --checkpoint
  <stage 1 run>`` (the commands are in each config's header);
- the paper's own form (one stage): tfsdiff_x4, wo_tmfa_x4, wo_psf_x4, official_x4, tfsdiff_x2, tfsdiff_x8, each
  trained by ``python sr.py -p train -c config/experiments/<row>.json``.

``--run ROW``, through the functions of ``paper.real_scans``:

1. The row's config (``Row.config`` under ``config/``, or ``--config``; its scale must be the row's). Checkpoint:
   --checkpoint, else the config's released weights ``path.pretrained`` (recipe_x4: the shipped
   ``pretrained/tfsdiff_x4_64_256.pth``), else the newest run folder ``<experiments_root>/<name>_train_*`` (the file
   its ``checkpoint/latest`` names, as ``sr.py --checkpoint`` resolves a run folder). The checkpoint must be at the budget (step == ``train.n_iter``;
   ``--allow-partial`` evaluates an earlier one, and the tables then say so) and, when it records its config, must
   have been trained with the row's training keys (``seed``, ``datasets.train`` but ``num_workers``, ``model`` but
   ``sampler``, ``train.optimizer``, ``train.ema_scheduler``): evaluating a checkpoint under the wrong row is an error
   naming the keys that differ.
   ``--peer NAME[=DIR]`` (repeatable) and ``--sr3 [CHECKPOINT]`` / ``--sr3-config FILE`` mean and are checked as
   in ``paper.real_scans`` (``real_scans.check_comparison_args``, ``load_peers``, ``load_sr3_pipelines``: the SR3
   config defaults to ``config/sr3_x<s>_<l>_<r>.json`` of the row's scale, its weights to that config's
   ``path.pretrained``); the published methods and the SR3 model are loaded before anything is written.
2. The real test split at the row's scale, with its HR sources (``real_scans.build_test_split``), into
   ``<out>/<scale>/data``.
3. The comparisons of that scale (``paper.comparisons``): every bicubic-then-fuse rule, bicubic + each ``--peer``
   method and, with ``--sr3``, SR3 + each rule and each ``--peer`` method (``sr3+NAME``), fused, timed and scored into
   ``<out>/<scale>/<method>/`` with their records, once per scale: again only when a record is missing, holds other
   cases or inputs, or lacks its time or its scores against the HR sources.
4. The row (``real_scans.fuse_model``, then ``comparisons.save_scored``) into ``<out>/<scale>/<ROW>/`` and its record
   ``<out>/<scale>/<ROW>.json`` (layout: ``paper.records``), then the tables are rebuilt.

Every record holds the per-case numbers against the ground truth in both conventions, the no-reference metrics
against the three HR sources (``paper.records.SOURCE_METRICS``, CDDFuse convention) and the seconds per image (for
``sr3+NAME``: SR3's seconds for the three sources plus NAME's), so ``--table`` never reads an image.

``--table`` rebuilds ``<out>/tables.md`` and ``<out>/tables.json`` from the records alone
(``paper.tables``); a row without a record is reported as "not trained yet" (or "trained, not evaluated
yet" when a run folder of it exists), never with numbers; a comparison without a record is left out. A record
holding a null or non-finite metric (but LPIPS, null without its weights) is refused, naming the record and the
field. Errors print one ``error: ...`` line and exit with 2 (``core.cli.run_command``'s policy; ``--debug`` adds
the traceback).

What may be written (``core.outputs``). The tables are derived from the records, so ``--table`` and
``--run`` rewrite their own tables without a flag, and only their own:

- ``tables.md`` / ``tables.json`` are replaced only when the project wrote them and nobody changed them since (they
  are recorded in the ``.tfsdiff-written.json`` ledger of ``<out>``), or when they already hold exactly the tables
  that the current records give (then nothing of the user's can be lost: they are kept, and recorded as the
  project's). The second rule is what lets a fresh clone, which has no ledger, rebuild the committed tables of
  ``docs/experiments_results``. Any other file of those names (the user's, or tables edited by hand) is never
  replaced: the command stops naming it, before writing anything.
- Both files are published together (``core.outputs.publish_files``). ``--run`` checks them before it evaluates.
- ``--run``'s ``--out`` is never one of its inputs (``--data``, ``--triplets``, ``--config``, the checkpoint, the
  ``--peer`` folders, ``--sr3`` and ``--sr3-config``), never inside one, and never contains one.
"""
from __future__ import annotations

import argparse
import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from core.cli import add_debug_arg, run_and_report
from core.config import (ConfigError, DatasetConfig, TFSDiffConfig, config_to_dict, load_config, parse_config,
                         resolve_input_paths)
from core.errors import UsageError
from core.logger import setup_logger
from core.outputs import check_apart, check_file_target, publish_files, record_files
from data.fusion_rules import FUSION_RULES
from data.loader import dataset_from_config
from model.checkpoint_io import (CHECKPOINT_FILE, newest_checkpoint, read_checkpoint,
                                 resolve_checkpoint)
from model.sr3 import SR3_PREFIX
from paper import records as layout
from paper import real_scans
from paper.comparisons import Comparison, Evaluation, run_comparisons, save_scored
from paper.tables import build_tables

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = ROOT / "config"  # the rows' configs (Row.config) are relative to it, from any folder
DEFAULT_OUT = Path("results/experiments")
TRAINING_KEYS = ("seed", "datasets.train.", "model.", "train.optimizer.", "train.ema_scheduler")
IGNORED_KEYS = ("datasets.train.num_workers", "datasets.train.cache_images", "model.sampler.")  # change no weights
SHOWN_DIFFERENCES = 5


class ExperimentError(UsageError):
    """A command-line input is missing or unusable (exit status 2)."""


@dataclass(frozen=True)
class Setup:
    """The row, its config and config file, the split whose l_resolution / r_resolution set the scale
    (datasets.test, else datasets.val), the checkpoint to sample with and its training step (None: unknown)."""

    row: layout.Row
    config: str
    cfg: TFSDiffConfig
    split: DatasetConfig
    checkpoint: str
    step: int | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--run", choices=tuple(layout.ROWS), metavar="ROW",
                        help=f"evaluate one trained row: {', '.join(layout.ROWS)}")
    action.add_argument("--table", action="store_true", help="rebuild the tables from the saved results only")
    parser.add_argument("--data", type=Path, help="with --run: folder of the public Harvard pairs (CT-MRI/, PET-MRI/, "
                        "SPECT-MRI/)")
    parser.add_argument("--triplets", nargs="+", type=Path, default=[], metavar="DIR",
                        help="folders of real triplets <case>_<k>_<modality>.png (like harvard_trimodal)")
    parser.add_argument("--config", help="the row's config (default: the repository's config of the row)")
    parser.add_argument("--checkpoint", help="weights to evaluate (default: the config's released weights, else the "
                        "newest run folder of the row)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="evaluate a checkpoint before the budget train.n_iter (the tables mark the row partial)")
    parser.add_argument("--cases", type=int, help="only the first N test cases (quick checks)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results root (default {DEFAULT_OUT})")
    real_scans.add_comparison_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_arg(parser)
    return parser.parse_args(argv)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (lists and scalars are leaves)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in flat.items()}


def _same_in_clone(ours: Any, theirs: Any) -> bool:
    """Whether two values of a key are equal, a dataroot inside this repository also as the same path inside the
    clone that trained the checkpoint (its absolute path differs when the clone was moved or was a worktree)."""
    if ours == theirs:
        return True
    inside = repository_relative(ours) if isinstance(ours, str) and isinstance(theirs, str) else None
    if inside is None or Path(inside).is_absolute():
        return False
    parts = Path(inside).parts
    return Path(theirs).parts[-len(parts):] == parts


def training_differences(cfg: TFSDiffConfig, trained: TFSDiffConfig) -> list[str]:
    """``key: row value != checkpoint value`` for each training key (TRAINING_KEYS but IGNORED_KEYS) that differs;
    dataroots inside the repository compare as paths inside the clone (`_same_in_clone`)."""
    ours, theirs = flatten(config_to_dict(cfg)), flatten(config_to_dict(trained))
    keys = sorted(k for k in ours.keys() | theirs.keys()
                  if k.startswith(TRAINING_KEYS) and not k.startswith(IGNORED_KEYS))
    return [f"{k}: {ours.get(k)!r} != {theirs.get(k)!r}" for k in keys
            if not (_same_in_clone if k.endswith(".dataroot") else operator.eq)(ours.get(k), theirs.get(k))]


def row_config(row: layout.Row) -> Path:
    """The repository's config of ``row``."""
    return CONFIG_ROOT / row.config


def latest_run(cfg: TFSDiffConfig, config: str) -> Path:
    """The newest run folder ``<experiments_root>/<name>_train_*`` of the row's config (file ``config``)."""
    root = Path(cfg.path.experiments_root)
    runs = sorted(p for p in root.glob(f"{cfg.name}_train_*") if p.is_dir()) if root.is_dir() else []
    if not runs:
        raise ExperimentError(f"no training run of {cfg.name}: no folder {root}/{cfg.name}_train_*; train it "
                              f"(the commands are in the header of {repository_relative(config)}) or pass "
                              "--checkpoint")
    return runs[-1]


def default_checkpoint(cfg: TFSDiffConfig, config: str) -> str:
    """The config's released weights (``path.pretrained``), else its newest run folder."""
    return cfg.path.pretrained or str(latest_run(cfg, config))


def checkpoint_facts(checkpoint: str, config: str) -> tuple[Path, int | None, TFSDiffConfig | None]:
    """(the file or official prefix a checkpoint path names, the training step and the training config it records;
    None where it does not, as for official prefixes, whose step comes from their ``I{step}_E{epoch}`` name). The
    recorded config's relative paths (runs from before config paths were resolved on loading) are read as written
    in the row's ``config`` (`core.config.resolve_input_paths`), as loading it reads its own."""
    kind, location = resolve_checkpoint(checkpoint)
    if kind == "official":
        match = CHECKPOINT_FILE.fullmatch(f"{location.name}.pth")
        return location, (int(match.group(1)) if match else None), None
    state = read_checkpoint(location)
    trained = state.get("config")
    try:
        return location, int(state["step"]), None if trained is None else parse_config(
            resolve_input_paths(trained, config), str(location))
    except ConfigError as err:
        raise ExperimentError(f"{location}: the config it records does not parse ({err}); pass a checkpoint of "
                              "this code") from None


def row_setup(args: argparse.Namespace) -> Setup:
    """The row's config, its checkpoint and step, checked against the row (scale, budget, training keys)."""
    row = layout.ROWS[args.run]
    config = args.config or str(row_config(row))
    cfg = load_config(config)
    split = cfg.datasets.test or cfg.datasets.val
    scale = f"x{split.r_resolution // split.l_resolution}"
    if scale != row.scale:
        raise ExperimentError(f"{config}: its test split is at scale {scale}, but row {row.name} is {row.scale}")
    location, step, trained = checkpoint_facts(args.checkpoint or default_checkpoint(cfg, config), config)
    checkpoint = str(location)
    if step != cfg.train.n_iter and not args.allow_partial:
        raise ExperimentError(f"checkpoint {checkpoint} is at step {step}, not at the budget train.n_iter "
                              f"{cfg.train.n_iter} of {config}: finish the training (sr.py -p train -c {config} "
                              "--checkpoint <run folder>) or pass --allow-partial")
    differing = [] if trained is None else training_differences(cfg, trained)
    if differing:
        shown = "; ".join(differing[:SHOWN_DIFFERENCES]) + ("; ..." if len(differing) > SHOWN_DIFFERENCES else "")
        raise ExperimentError(f"checkpoint {checkpoint} was not trained as row {row.name} ({config}): {shown}")
    return Setup(row, config, cfg, split, checkpoint, step)


def repository_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (records stay valid in another clone), else as
    given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _provenance(path: str | None) -> str | None:
    """An input path as a record names it: resolved, then `repository_relative`."""
    return None if path is None else repository_relative(str(Path(path).resolve()))


def comparison_plan(args: argparse.Namespace, peers: dict[str, Callable],
                    pipelines: real_scans.SR3Pipelines | None) -> dict[str, Comparison]:
    """The comparisons of this run: every rule, every loaded --peer method and, with --sr3, every sr3+NAME, each with
    the inputs its record names besides --data and --triplets."""
    dirs = {name: _provenance(folder) for name, folder in real_scans.published_methods(args).items()}
    plan = {rule: Comparison(FUSION_RULES[rule], {}) for rule in FUSION_RULES}
    plan |= {name: Comparison(fuse, {"peer_dir": dirs[name]}) for name, fuse in peers.items()}
    if pipelines is not None:
        sr3 = {"sr3_config": _provenance(pipelines.config), "sr3_checkpoint": _provenance(pipelines.weights),
               "sr3_sampler": config_to_dict(pipelines.cfg)["model"]["sampler"]}
        for method, pipeline in pipelines.methods.items():
            name = method.removeprefix(SR3_PREFIX)
            plan[method] = Comparison(pipeline, sr3 | ({"peer_dir": dirs[name]} if name in dirs else {}))
    return plan


def _evaluation(args: argparse.Namespace, setup: Setup, argv: list[str]) -> tuple[Evaluation, DataLoader]:
    """Build the test split of the row's scale (``real_scans.build_test_split``) and its loader."""
    where = argparse.Namespace(data=args.data, triplets=args.triplets, out=args.out / setup.row.scale,
                               no_progress=args.no_progress)
    test_root, subjects = real_scans.build_test_split(where, setup.split)
    loader = dataset_from_config(replace(setup.split, dataroot=str(test_root), data_len=args.cases or -1),
                                 seed=setup.cfg.seed, train=False)[2]
    inputs = {"data": str(args.data.resolve()), "triplets": [str(t.resolve()) for t in args.triplets]}
    run = Evaluation(args.out, setup.row.scale, list(loader.dataset.case_ids), subjects, test_root,
                     setup.split.r_resolution, " ".join(["python -m paper.experiments", *argv]), inputs,
                     not args.no_progress)
    return run, loader


def _check_run_args(args: argparse.Namespace) -> None:
    if args.data is None or not args.data.is_dir():
        raise ExperimentError("--run needs --data, an existing folder of the public Harvard pairs")
    for folder in args.triplets:
        if not folder.is_dir():
            raise ExperimentError(f"--triplets folder {folder} does not exist")
    if args.cases is not None and args.cases < 1:
        raise ExperimentError(f"--cases must be at least 1, got {args.cases}")
    real_scans.check_comparison_args(args)


def run_row(args: argparse.Namespace, argv: list[str]) -> str:
    """Evaluate one row (and the comparisons of its scale when needed); returns the rebuilt tables' Markdown."""
    _check_run_args(args)
    setup = row_setup(args)
    # the published methods and the SR3 model are loaded (their weights checked) before anything is written
    peers = real_scans.load_peers(args)
    pipelines = real_scans.load_sr3_pipelines(args, setup.split, peers)
    check_apart(args.out, [args.data, *args.triplets, setup.config, setup.checkpoint,
                           *real_scans.comparison_inputs(args)], "--out")
    table_contents(args.out)  # the tables may be rewritten: checked before the evaluation
    run, loader = _evaluation(args, setup, argv)
    run_comparisons(run, comparison_plan(args, peers, pipelines), loader,
                    None if pipelines is None else pipelines.resolver)
    folder = layout.method_folder(args.out, run.scale, setup.row.name)
    seconds = real_scans.fuse_model(setup.cfg, setup.checkpoint, loader, folder, run.progress)
    info = {"command": run.command, "config": repository_relative(setup.config),
            "checkpoint": repository_relative(setup.checkpoint),
            "step": setup.step,
            "n_iter": setup.cfg.train.n_iter, "sampler": config_to_dict(setup.cfg)["model"]["sampler"],
            "seconds_per_image": seconds, "l_resolution": setup.split.l_resolution,
            "r_resolution": setup.split.r_resolution}
    save_scored(run, {setup.row.name: folder}, {setup.row.name: info})
    return rebuild_tables(args.out)


def status_of(method: str) -> str:
    """Why a method has no record. A row: "released, not evaluated yet" when its config names released weights that
    exist; else "not trained yet" without a run folder ``<experiments_root>/<config name>_train_*``; with one, the
    newest checkpoint step over its run folders against the budget ``train.n_iter`` ("trained, not
    evaluated yet" once a checkpoint reaches it, else "training: step S of N"). A baseline is made by the first
    --run at its scale."""
    if method not in layout.ROWS:
        return "not evaluated yet (the first --run at this scale makes it)"
    try:
        cfg = load_config(row_config(layout.ROWS[method]))
        root, budget, name = Path(cfg.path.experiments_root), cfg.train.n_iter, cfg.name
    except ConfigError:
        cfg, root, budget, name = None, Path("runs"), None, method
    if cfg is not None and cfg.path.pretrained and Path(cfg.path.pretrained).is_file():
        return "released, not evaluated yet"
    runs = [p for p in root.glob(f"{name}_train_*") if p.is_dir()] if root.is_dir() else []
    if not runs:
        return "not trained yet"
    newest = [newest_checkpoint(run / "checkpoint") for run in runs if (run / "checkpoint").is_dir()]
    step = max((int(CHECKPOINT_FILE.fullmatch(p.name).group(1)) for p in newest if p is not None), default=0)
    if budget is None or step >= budget:
        return "trained, not evaluated yet"
    return f"training: step {step} of {budget}"


def _encoded(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def table_contents(out: Path) -> tuple[str, dict[Path, str]]:
    """(the Markdown, the table files to write: path -> text) of the current records of ``out``, checked as the
    module docstring says: a file already holding its new text is kept (recorded as the project's) and left out;
    any other existing file must be one the project wrote (OutputError otherwise, naming it)."""
    markdown, doc = build_tables(layout.load_records(out), status_of)
    tables = {out / layout.TABLES_MD: markdown, out / layout.TABLES_JSON: json.dumps(doc, indent=1) + "\n"}
    same = [path for path, text in tables.items() if path.is_file() and not path.is_symlink()
            and path.read_bytes() == _encoded(text)]
    if same:
        try:
            record_files(same)
        except OSError:
            pass  # a folder we may not write into: the identical files stay as they are, unrecorded
    changed = {path: text for path, text in tables.items() if path not in same}
    for path in changed:
        check_file_target(path, True, "--out")
    return markdown, changed


def rebuild_tables(out: Path) -> str:
    """Write ``<out>/tables.md`` and ``<out>/tables.json`` from the saved records (both or neither); returns the
    Markdown."""
    markdown, changed = table_contents(out)
    out.mkdir(parents=True, exist_ok=True)
    publish_files(changed, True, "--out")
    print(f"written {out / layout.TABLES_MD} and {out / layout.TABLES_JSON}", file=sys.stderr)
    return markdown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_logger()
    if args.table:
        return run_and_report(lambda: rebuild_tables(args.out), debug=args.debug)
    return run_and_report(lambda: run_row(args, argv), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
