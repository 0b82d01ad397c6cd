"""Score fused images with the paper's metrics; write Markdown / CSV / LaTeX tables and a comparison figure.

    python eval.py RESULT_DIR... [--reference gt|sources] [--suite paper|all] [--convention paper|cddfuse]
                   [--out PREFIX] [--figure fig.png [--cases ID ...]]

Each RESULT_DIR is a method folder (per case id `<id>_fused.png`, `<id>_src{1,2,3}.png` and `<id>_hr.png`: the
results layout of `core.results_layout`, as `infer.py` writes it), a folder of method folders (e.g.
`results/demo/test`), or a folder of scale folders `x2/ x4/ x8/` each holding method folders. The method is the
folder name; the scale is the name of the folder holding it when that is `x<digits>` (one table section per scale).
Runs named `wo_tmfa` / `wo_psf` form an ablation table next to `tfsdiff`. The figure (`metrics.figure`) adds a
"<method> spread" column for a method whose folders hold `<id>_uncertainty.png` maps (`infer.py --uncertainty`) for
every shown case.

Metrics, conventions and the aggregation over the three sources: `docs/metrics.md` (code: `metrics.fusion`,
`metrics.scoring`); layout: see `metrics.tables`. `--reference gt` compares with the ground truth, `--reference sources`
with the three sources. `--suite paper` gives MSE VIF SSIM PSNR LPIPS MAE RMSE AG; `--suite all` adds EN SD SF MI
Qabf SCD CC. `--convention paper` (the default) uses PSNR with peak 255, SSIM with data_range 255 and the mean over
the sources; `--convention cddfuse` reproduces the CDDFuse evaluator (PSNR with peak max(F), its scikit-image 0.19
SSIM, its Qabf edge case; with `--reference sources` its dual-modal values, SSIM and VIF summed over a pair of
sources, averaged over the three pairs). Every column names its colour space and convention.

Pairing is by case id: within a scale all methods must have the same ids, and every case needs its sources (and
its ground truth with `--reference gt`); otherwise the error lists the ids and the exit status is 2.
LPIPS needs torchvision's AlexNet weights (`alexnet-owt-7be5be79.pth`, checked by SHA-256) in the torch hub cache;
without them the column shows n/a and the command says where to put the file (nothing is downloaded).

Writes PREFIX.md, PREFIX.csv (mean and std per method and metric), PREFIX_per_image.csv and PREFIX.tex; the default
PREFIX is `<first RESULT_DIR>/metrics_<reference>` (`metrics_<reference>_cddfuse` with `--convention cddfuse`).
The Markdown is also printed.

What may be written (`core.outputs`, issue 22), checked for every file before any image is scored:

- No output is one of the images read; the figure never lies inside a method folder (where it could become a case
  of the results layout). Tables may lie inside a result folder, as the default PREFIX does: their names never
  collide with the layout's `<id>_<kind>.png` files.
- An existing file is replaced only when the project wrote it and nobody changed it since (it is recorded in the
  `.tfsdiff-written.json` ledger of its folder); a file of the user's is never replaced. The tables at the default
  PREFIX are derived from the result folders, so eval.py rewrites its own earlier tables there on every run; at an
  explicit --out, and for --figure, replacing them needs --overwrite.
- All files are published together (`core.outputs.publish_files`): if one cannot be written, none is.

Exit status (`core.cli.run_command`): 0 success; 2 for a usage or input error (unpaired or unreadable results, an
unusable path); 1 for a failure while running. --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from core.cli import add_debug_arg, run_command
from core.errors import UsageError
from core.outputs import check_apart, check_file_target, publish_files
from core.results_layout import fused_case_ids, result_path
from data.fusion_rules import FUSION_RULES
from data.images import PairingError, format_ids, pair_by_stem, read_image
from metrics.figure import FigureSection, comparison_figure
from metrics.fusion import CONVENTIONS
from metrics.lpips import Lpips, alexnet_weights_path, load_lpips, missing_weights_note
from metrics.scoring import metric_names, score_folder
from metrics.tables import ABLATION_RUNS, MODEL_RUN, ScaleSection, to_latex, to_markdown, to_per_image_csv, \
    to_summary_csv

SCALE_NAME = re.compile(r"x\d+")
TABLE_SUFFIXES = (".md", ".csv", "_per_image.csv", ".tex")


class EvalError(UsageError):
    """Result folders are missing, unpaired or unreadable (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result_dirs", nargs="+", metavar="RESULT_DIR", help="method, methods or scales folder(s)")
    parser.add_argument("--reference", choices=("gt", "sources"), default="gt",
                        help="what the full-reference metrics compare the fused images with")
    parser.add_argument("--suite", choices=("paper", "all"), default="paper", help="the paper's metrics or all")
    parser.add_argument("--convention", choices=CONVENTIONS, default="paper",
                        help="paper: PSNR peak 255, SSIM data_range 255, mean over sources; cddfuse: the CDDFuse "
                             "evaluator's conventions (docs/metrics.md)")
    parser.add_argument("--out", help="output prefix (default: <first RESULT_DIR>/metrics_<reference>, "
                                      "+ _cddfuse with --convention cddfuse)")
    parser.add_argument("--figure", help="also write the comparison figure to this PNG file")
    parser.add_argument("--cases", nargs="+", metavar="ID", help="case ids of the figure (default: the first three)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace tables at --out and the --figure file that an earlier run wrote (never a file "
                             "the project did not write)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_arg(parser)
    return parser.parse_args(argv)


def _scale_of(folder: Path) -> str:
    return folder.parent.name if SCALE_NAME.fullmatch(folder.parent.name) else ""


def _sub_folders(path: Path) -> list[Path]:
    """The sub-folders of `path`, sorted, without hidden ones (e.g. the temporary folder of an unfinished infer.py
    run)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _method_folders(path: Path) -> list[Path]:
    """The method folders at `path`: itself, its sub-folders, or its scale folders' sub-folders."""
    if not path.is_dir():
        raise EvalError(f"result folder {path} " + ("is a file" if path.exists() else "does not exist"))
    if fused_case_ids(path):
        return [path]
    subs = _sub_folders(path)
    found = [p for p in subs if fused_case_ids(p)]
    for scale in (s for s in subs if SCALE_NAME.fullmatch(s.name)):
        found += [m for m in _sub_folders(scale) if fused_case_ids(m)]
    if not found:
        raise EvalError(f"no method folder (with {result_path(Path('*'), '*', 'fused').name} files) in {path}, its "
                        "sub-folders or its x<N> scale folders")
    return found


def discover(paths: list[str]) -> dict[str, dict[str, Path]]:
    """scale -> method -> folder over all RESULT_DIRs; a method given twice at one scale is an error."""
    scales: dict[str, dict[str, Path]] = {}
    for path in paths:
        for folder in _method_folders(Path(path)):
            methods = scales.setdefault(_scale_of(folder), {})
            if folder.name in methods and methods[folder.name].resolve() != folder.resolve():
                raise EvalError(f"method {folder.name!r} appears twice at one scale: {methods[folder.name]} and "
                                f"{folder}")
            methods[folder.name] = folder
    return {scale: dict(sorted(m.items(), key=lambda kv: _method_order(kv[0]))) for scale, m in sorted(scales.items())}


def _method_order(method: str) -> tuple[int, str]:
    """Columns and rows: the classical fusion rules, other methods (e.g. experiment rows), ablations, TFS-Diff; each
    group by name."""
    group = 3 if method == MODEL_RUN else 2 if method in ABLATION_RUNS else 0 if method in FUSION_RULES else 1
    return group, method


def paired_ids(scale: str, methods: dict[str, Path]) -> list[str]:
    """The case ids shared by all methods of a scale; EvalError listing the ids each method lacks otherwise."""
    try:
        return pair_by_stem({str(folder): fused_case_ids(folder) for folder in methods.values()})
    except PairingError as err:
        where = f"scale {scale}" if scale else "the result folders"
        raise EvalError(f"fused images are not paired by case id across {where}:\n{err}") from None


def _needed_kinds(reference: str) -> tuple[str, ...]:
    return ("src1", "src2", "src3") + (("hr",) if reference == "gt" else ())


def check_files(folder: Path, ids: list[str], reference: str) -> None:
    """EvalError listing the cases of `folder` that lack a source (or, for reference gt, the ground truth)."""
    missing = {case for case in ids for kind in _needed_kinds(reference)
               if not result_path(folder, case, kind).is_file()}
    if missing:
        need = "src1/src2/src3" + ("/hr" if reference == "gt" else "")
        raise EvalError(f"{folder}: cases without their {need} images: {format_ids(missing)}")


def _figure_cases(requested: list[str] | None, ids_per_scale: dict[str, list[str]]) -> list[str]:
    first = next(iter(ids_per_scale.values()))
    cases = requested or first[:3]
    for scale, ids in ids_per_scale.items():
        unknown = set(cases) - set(ids)
        if unknown:
            at_scale = f" at scale {scale}" if scale else ""
            raise EvalError(f"--cases: unknown case id(s) {format_ids(unknown)}{at_scale}; known: {format_ids(ids)}")
    return cases


def _lpips_or_note() -> tuple[Lpips | None, str | None]:
    scorer = load_lpips()
    if scorer is not None:
        return scorer, None
    print(missing_weights_note(), file=sys.stderr)
    return None, f"AlexNet weights not found at {alexnet_weights_path()}"


def table_prefix(args: argparse.Namespace) -> Path:
    """PREFIX of the tables: --out, else `<first RESULT_DIR>/metrics_<reference>[_<convention>]`."""
    tag = "" if args.convention == "paper" else f"_{args.convention}"
    return Path(args.out) if args.out else Path(args.result_dirs[0]) / f"metrics_{args.reference}{tag}"


def check_outputs(args: argparse.Namespace, scales: dict[str, dict[str, Path]],
                  ids_per_scale: dict[str, list[str]]) -> dict[Path, str]:
    """Check every output as the module docstring says, before any scoring; returns table path -> its suffix."""
    tables = {Path(f"{table_prefix(args)}{suffix}"): suffix for suffix in TABLE_SUFFIXES}
    images = [result_path(folder, case, kind) for scale, methods in scales.items() for folder in methods.values()
              for case in ids_per_scale[scale] for kind in ("fused", *_needed_kinds(args.reference))]
    for path in tables:
        check_apart(path, images, "--out")
        check_file_target(path, args.overwrite or not args.out, "--out")
    if args.figure:
        check_apart(args.figure, [f for methods in scales.values() for f in methods.values()], "--figure")
        check_file_target(Path(args.figure), args.overwrite, "--figure")
    return tables


def _figure_png(scales: dict[str, dict[str, Path]], cases: list[str]) -> bytes:
    """The comparison figure as PNG bytes (drawn in a temporary folder, published with the tables)."""
    sections = [FigureSection(scale, tuple(methods.items())) for scale, methods in scales.items()]
    with tempfile.TemporaryDirectory(prefix="tfsdiff-figure") as folder:
        return comparison_figure(sections, cases, Path(folder) / "figure.png", read_image).read_bytes()


def run(args: argparse.Namespace) -> None:
    scales = discover(args.result_dirs)
    ids_per_scale = {scale: paired_ids(scale, methods) for scale, methods in scales.items()}
    for scale, methods in scales.items():
        for folder in methods.values():
            check_files(folder, ids_per_scale[scale], args.reference)
    figure_cases = _figure_cases(args.cases, ids_per_scale) if args.figure else []
    tables = check_outputs(args, scales, ids_per_scale)
    lpips, lpips_missing = _lpips_or_note()
    sections = [ScaleSection(scale, tuple(score_folder(f, ids_per_scale[scale], args.reference, args.suite, lpips,
                                                       args.convention, read_image, not args.no_progress)
                                          for f in methods.values()),
                             metric_names(args.suite))
                for scale, methods in scales.items()]
    markdown = to_markdown(sections, args.reference, args.convention, lpips_missing)
    texts = {".md": markdown, ".csv": to_summary_csv(sections, args.reference, args.convention),
             "_per_image.csv": to_per_image_csv(sections),
             ".tex": to_latex(sections, args.reference, args.convention, lpips_missing)}
    contents: dict[Path, str | bytes] = {path: texts[suffix] for path, suffix in tables.items()}
    if args.figure:
        contents[Path(args.figure)] = _figure_png(scales, figure_cases)
    for path in contents:
        path.parent.mkdir(parents=True, exist_ok=True)
    publish_files(contents, overwrite=True, flag="--out")  # each file was checked with its own rule above
    print(markdown)
    print(f"tables written to {table_prefix(args)}{{.md,.csv,_per_image.csv,.tex}}", file=sys.stderr)
    if args.figure:
        print(f"figure written to {args.figure}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def evaluate() -> int:
        if args.cases and not args.figure:
            raise EvalError("--cases selects the rows of --figure; give --figure FILE too")
        if args.figure and Path(args.figure).suffix.lower() != ".png":
            raise EvalError(f"--figure {args.figure}: expected a .png file name")
        run(args)
        return 0
    return run_command(evaluate, args.debug)


if __name__ == "__main__":
    sys.exit(main())
