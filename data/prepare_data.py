"""Turn a user's own tri-modal scans (2-D slice folders or registered NIfTI volumes) into the official TFS-Diff layout.

    python data/prepare_data.py slices  --input IN --folders T1 T2 SPECT --modalities MR-T1 MR-T2 SPECT --out OUT
    python data/prepare_data.py volumes --files t1.nii.gz t2.nii.gz spect.nii.gz --modalities MR-T1 MR-T2 SPECT \
        --out OUT
    python data/prepare_data.py pairs --input HARVARD_PAIRS --out OUT --copies 5 [--triplets DIR] [--embedded N] \
        [--splits {train,val,test} ...]
    python data/prepare_data.py sr3 --input HARVARD_PAIRS --out OUT --copies 5 [--embedded N]   # SR3 single images

Output: ``OUT/{train,val,test}/{1,2,3}_lr_{l}/``, ``{1,2,3}_sr_{l}_{r}/``, ``hr_{r}/`` (PNG, 8-bit RGB) for every
requested LR size ``l`` and ``OUT/manifest.json``; ``sr3`` writes SR3's single-image layout instead (below). Rules (see
docs/own_data.md):

* Input files are paired by stem across the modality folders; non-image (non-NIfTI) files are skipped with a
  warning, hidden files are ignored.
* Images are read by ``data.images.read_image``: the EXIF orientation is applied; grey, RGB, palette and 1-bit
  images are converted to RGB (grey -> R=G=B, pseudo-colour kept); alpha is composited on black
  (RGB * alpha / 255); 16-bit / 32-bit / float images are scaled per image by min-max to 0..255; of an animated GIF
  only the first frame is used. Each image is zero-padded (centred) to a square and resized to ``r x r`` with
  ``data.resample.resize_bicubic``.
* Volumes: reoriented to the closest canonical (RAS+) orientation; per volume the non-zero voxels give the 0.5 and
  99.5 percentiles ``lo, hi`` and ``clip((v - lo) / (hi - lo), 0, 1) * 255`` is rounded to uint8; a slice is kept
  when at least ``--min-foreground`` (default 5 %) of its pixels are non-zero in some modality.
* Degradation: ``data.resample.degrade``; ground truth from the GT folder/volume, else ``data.fusion_rules.fuse``.
* Splits are by case (slice cases: the file stems, or with ``--group REGEX`` the subjects the expression names in
  them; volume cases: the subjects) with a ``--seed`` permutation; a single subject is cut into contiguous slabs
  ``train | gap | val | gap | test | gap | train``.
* Pairs (the public Harvard AANLIB pair layout): split by subject, real triplets for test, derived and augmented
  triplets for train/val; rules in ``data/builders/harvard_pairs.py``, ``data/builders/harvard_cases.py`` and
  ``data/builders/triplets.py``; ``--splits`` writes only the named splits (the manifest lists them as
  ``written_splits``).
* SR3 (``sr3``, the single-image super-resolution data of the paper's sequential baselines, model.task ``"sr3"``):
  the train and val cases that ``pairs`` plans from the same options (same subject split, derivations and
  augmentations, so the same HR sources), each of their three HR sources a case ``<triplet>_s<k>`` of
  ``OUT/{train,val}/hr_{r}/``, ``lr_{l}/``, ``sr_{l}_{r}/`` (``data.layout.write_single_case``: the same
  ``data.resample.degrade``, so ``sr_{l}_{r}/<triplet>_s<k>.png`` is the ``{k}_sr_{l}_{r}/<triplet>.png`` of
  ``pairs``). No test split: no image of the test subjects (default 21, 28, 41) enters it.
* Everything is written into a hidden sibling folder, marked as the project's (``.tfsdiff-output``) and renamed to
  ``OUT`` at the end; input errors exit with code 2, failures while running (e.g. disk full) with 1
  (``core.cli.run_command``; ``--debug`` shows the traceback).

What may be written (``core.outputs``, issue 22), checked before anything is read or written:

* ``OUT`` is never an input (``--input``, ``--files``, ``--gt-file``, ``--triplets``), never lies inside an input
  folder and never contains an input, with or without ``--overwrite``; the refusal names both paths.
* ``OUT`` must be absent or empty; ``--overwrite`` replaces only a folder that prepare_data.py (or another command of
  the project) wrote, i.e. one holding the ``.tfsdiff-output`` marker. Any other folder or file is refused and
  never deleted; the old output is removed only after the new one is complete.
* Integer options are range-checked: ``--seed`` 0..2**32-1, ``--size`` 8..16384, ``--workers`` >= 0, ``--copies``
  >= 1, ``--embedded`` >= 0, ``--val-per-kind`` >= 0, ``--slab-gap`` >= 0, ``--min-foreground`` in [0, 1].
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python data/prepare_data.py): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.cli import add_debug_arg, run_and_report
from core.outputs import check_apart, check_folder_target, mark_folder
from core.registry import Registry
from data import layout
from data.builders import harvard_cases, pairs_form
from data.builders.splits import (SPLITS, PrepareError, list_folder, pair_folders, parse_split, slab_split,
                                  split_by_subject, split_cases)
from data.builders.volumes import AXES, PERCENTILES, find_subjects, single_subject, subject_slices
from data.fusion_rules import FUSION_RULES, fuse
from data.images import IMAGE_EXTENSIONS, pad_to_square, read_image
from data.resample import resize_bicubic

__all__ = ["Settings", "Output", "CaseJob", "ImageJob", "write_case", "write_image", "prepare_slices",
           "prepare_volumes", "prepare_pairs", "prepare_sr3", "InputLayout", "DATASET_LAYOUTS", "main"]

FORMAT_VERSION = 1
COMMAND = "data/prepare_data.py"
MAX_SEED = 2**32 - 1
MAX_SIZE = 16384
DEFAULT_GT_FUSION = "laplacian_ycbcr"


@dataclass(frozen=True)
class Settings:
    """What every case job needs: HR side, LR sides, GT fusion rule, size policy, and whether each HR source is
    written too (``{k}_hr_{r}/``, ``data.layout.write_case``; the test split of paper.real_scans only)."""

    r_resolution: int
    l_resolutions: tuple[int, ...]
    gt_fusion: str
    resize: bool
    hr_sources: bool = False


@dataclass(frozen=True)
class CaseJob:
    """One output case: three sources (image paths or 2-D uint8 arrays) and an optional ground truth."""

    split_root: Path
    case_id: str
    sources: tuple[Path | np.ndarray, ...]
    gt: Path | np.ndarray | None
    settings: Settings


@dataclass(frozen=True)
class ImageJob:
    """One single-image (SR3) output case: one HR image as a 2-D or (H, W, 3) uint8 array."""

    split_root: Path
    case_id: str
    image: np.ndarray
    settings: Settings


@dataclass(frozen=True)
class Output:
    """Where and how to write: target folder, scales, splits, fusion rule, workers, flags."""

    out: Path
    settings: Settings
    scales: tuple[int, ...]
    split: tuple[int, int, int]
    seed: int
    workers: int
    overwrite: bool
    progress: bool


# ------------------------------------------------------------------------------------------------ reading


def _square_hr(array: np.ndarray, r_resolution: int) -> Image.Image:
    """HxW or HxWx3 uint8 -> r x r RGB PIL image: zero-pad centred to a square, then bicubic resize."""
    return resize_bicubic(Image.fromarray(pad_to_square(array)), r_resolution).convert("RGB")


def _case_arrays(job: CaseJob) -> list[np.ndarray]:
    """The job's sources (+ GT) as arrays; image sizes must agree unless ``resize``."""
    items = list(job.sources) + ([job.gt] if job.gt is not None else [])
    arrays = [read_image(item) if isinstance(item, Path) else item for item in items]
    sizes = {tuple(a.shape[:2]) for a in arrays}
    if len(sizes) > 1 and not job.settings.resize:
        described = ", ".join(f"{item} ({a.shape[1]}x{a.shape[0]})" for item, a in zip(items, arrays))
        raise PrepareError(f"images of case {job.case_id!r} differ in size: {described}; register them to one size "
                           "or pass --resize (each image is then padded to a square and resized on its own)")
    return arrays


def write_case(job: CaseJob) -> str:
    """Write one case in the layout of ``data.layout``; returns its case id (runs in worker processes)."""
    cfg = job.settings
    hrs = [_square_hr(a, cfg.r_resolution) for a in _case_arrays(job)]
    sources = hrs[:3]
    gt = hrs[3] if job.gt is not None else Image.fromarray(fuse(cfg.gt_fusion, [np.asarray(s) for s in sources]))
    layout.write_case(job.split_root, job.case_id, sources, gt, cfg.l_resolutions, cfg.hr_sources)
    return job.case_id


def write_image(job: ImageJob) -> str:
    """Write one single-image case in the layout of ``data.layout.write_single_case``: the image padded and resized
    to ``r`` as ``write_case`` makes a source; returns its case id (runs in worker processes)."""
    cfg = job.settings
    layout.write_single_case(job.split_root, job.case_id, _square_hr(job.image, cfg.r_resolution), cfg.l_resolutions)
    return job.case_id

# ------------------------------------------------------------------------------------------------ writing


def _run_jobs(jobs: Iterable[CaseJob | ImageJob], total: int | None, workers: int, progress: bool,
              writer: Callable[..., str] = write_case) -> None:
    """Run ``writer`` (``write_case``, or ``write_image`` for single images) over ``jobs`` in-process (workers <= 1)
    or in a process pool, at most 2*workers queued."""
    bar = tqdm(total=total, desc="preparing cases", unit="case", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                writer(job)
                bar.update(1)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: set[Future[str]] = set()
            try:
                for job in jobs:
                    pending.add(pool.submit(writer, job))
                    while len(pending) >= 2 * workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                            bar.update(1)
                for future in pending:
                    future.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def _check_target(out: Path, overwrite: bool, inputs: Iterable[Path | None] = ()) -> None:
    """OutputError (exit 2) unless ``out`` may be written (``core.outputs``): apart from every input, and absent,
    empty or (with ``overwrite``) a folder the project marked as its own."""
    check_apart(out, inputs, "--out")
    check_folder_target(out, overwrite, "--out")


def _build(output: Output, jobs_for: Callable[[Path], Iterable[CaseJob | ImageJob]], manifest: dict[str, object],
           total: int | None, inputs: Iterable[Path | None] = (), writer: Callable[..., str] = write_case) -> Path:
    """Write all cases (with ``writer``, `_run_jobs`) into a temporary sibling of ``output.out``, mark it and swap it
    in atomically.

    ``manifest`` is serialised after the jobs ran (so lists the jobs fill while running are complete); ``inputs``
    are the files and folders read, which ``output.out`` must stay apart from.
    """
    inputs = list(inputs)
    _check_target(output.out, output.overwrite, inputs)
    out = output.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.preparing-", dir=out.parent))
    old = out.parent / f".{out.name}.replaced-{tmp.name.rsplit('-', 1)[-1]}"
    try:
        _run_jobs(jobs_for(tmp), total, output.workers, output.progress, writer)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        mark_folder(tmp, COMMAND)
        tmp.chmod(0o755)
        _check_target(out, output.overwrite, inputs)
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def _base_manifest(output: Output, form: str, modalities: list[str], gt_source: str) -> dict[str, object]:
    """Manifest keys shared by both input forms."""
    cfg = output.settings
    gt = ({"source": "given", "from": gt_source} if gt_source else
          {"source": "fusion", "rule": cfg.gt_fusion, "function": "data.fusion_rules.fuse"})
    return {"format_version": FORMAT_VERSION, "input_form": form, "modalities": modalities,
            "modality_order": "/".join(modalities), "r_resolution": cfg.r_resolution, "scales": list(output.scales),
            "l_resolutions": list(cfg.l_resolutions), "degradation": "data.resample.degrade (PIL bicubic down to l, "
            "bicubic up to r, 8-bit RGB)", "ground_truth": gt, "split_ratio": list(output.split), "seed": output.seed}


def prepare_slices(input_root: Path, folders: list[str], modalities: list[str], output: Output,
                   gt_folder: str | None = "GT", group: str | None = None) -> Path:
    """Slice-folder form: ``input_root/<folder>/<stem>.<img>`` per modality (+ optional ``gt_folder``). With
    ``group`` (a regular expression, ``--group``) the stems are grouped into the subjects it names and the subjects
    are split, so all slices of a subject land in one split (``data.builders.splits.split_by_subject``)."""
    skipped: list[Path] = []
    listed = {name: list_folder(input_root / name, IMAGE_EXTENSIONS, skipped) for name in folders}
    use_gt = gt_folder is not None and (input_root / gt_folder).is_dir()
    if use_gt:
        listed[gt_folder] = list_folder(input_root / gt_folder, IMAGE_EXTENSIONS, skipped)
    stems = pair_folders(listed, input_root)
    if group is None:
        splits, subjects = split_cases(stems, output.split, output.seed, "cases"), None
    else:
        splits, subjects = split_by_subject(stems, group, output.split, output.seed)

    def jobs_for(tmp: Path) -> Iterator[CaseJob]:
        for split, ids in splits.items():
            for stem in ids:
                gt = listed[gt_folder][stem] if use_gt else None
                yield CaseJob(tmp / split, stem, tuple(listed[f][stem] for f in folders), gt, output.settings)

    manifest = _base_manifest(output, "slices", modalities, str(input_root / gt_folder) if use_gt else "")
    manifest.update(input=str(input_root.resolve()), folders=folders, splits=splits,
                    skipped_files=[str(path) for path in skipped])
    if group is not None:
        manifest.update(group=group, subject_splits=subjects)
    return _build(output, jobs_for, manifest, len(stems), [input_root])


def prepare_volumes(subjects: dict[str, list[Path]], modalities: list[str], output: Output, axis: str = "axial",
                    min_foreground: float = 0.05, slab_gap: int = 5) -> Path:
    """Volume form: ``subjects`` maps subject id -> [m1, m2, m3(, gt)] NIfTI paths (all subjects alike)."""
    if len({len(paths) for paths in subjects.values()}) != 1:
        raise PrepareError("either every subject or none has a ground-truth volume")
    has_gt = len(next(iter(subjects.values()))) == 4
    if len(subjects) == 1:
        subject, paths = next(iter(subjects.items()))
        slices = subject_slices(paths, axis, min_foreground)
        assignment = slab_split([i for i, _ in slices], output.split, slab_gap, f"non-empty slices of {paths[0]}")
        by_subject = {s: [subject] if s in assignment.values() else [] for s in SPLITS}
    else:
        by_subject, slices, assignment = split_cases(list(subjects), output.split, output.seed, "subjects"), [], {}
    case_ids: dict[str, list[str]] = {s: [] for s in SPLITS}

    def jobs_for(tmp: Path) -> Iterator[CaseJob]:
        for split in SPLITS:
            for subject in by_subject[split]:
                planes = slices if len(subjects) == 1 else subject_slices(subjects[subject], axis, min_foreground)
                for index, arrays in planes:
                    if len(subjects) == 1 and assignment.get(index) != split:
                        continue
                    case_id = f"{subject}_{axis}{index:03d}"
                    case_ids[split].append(case_id)
                    yield CaseJob(tmp / split, case_id, tuple(arrays[:3]), arrays[3] if has_gt else None,
                                  output.settings)

    manifest = _base_manifest(output, "volumes", modalities, "ground-truth volumes" if has_gt else "")
    manifest.update(subjects={k: [str(p.resolve()) for p in v] for k, v in subjects.items()},
                    subject_splits=by_subject, splits=case_ids, axis=axis, orientation="closest canonical (RAS+)",
                    intensity=f"per volume: percentiles {list(PERCENTILES)} of non-zero voxels -> 0..255",
                    min_foreground=min_foreground, slab_gap=slab_gap if len(subjects) == 1 else None)
    return _build(output, jobs_for, manifest, len(assignment) if len(subjects) == 1 else None,
                  [path for paths in subjects.values() for path in paths])


def prepare_pairs(request: pairs_form.PairsRequest, output: Output) -> Path:
    """Pair form: the Harvard pair layout of ``request`` (``data.builders.pairs_form``) -> tri-modal cases
    (``data.builders.harvard_cases``) of ``request.splits``: train/val by subject with derived triplets, the real
    triplets for test."""
    plan = pairs_form.plan_request(request, output.seed)
    manifest = _base_manifest(output, "pairs", list(harvard_cases.MODALITIES), "")
    del manifest["split_ratio"]
    manifest.update(pairs_form.request_manifest(plan, request, output.seed))

    def jobs_for(tmp: Path) -> Iterator[CaseJob]:
        for split, case_id, sources in harvard_cases.generate_cases(plan, output.seed, output.settings.r_resolution,
                                                                   manifest):
            yield CaseJob(tmp / split, case_id, tuple(sources), None, output.settings)

    return _build(output, jobs_for, manifest, len(plan.cases) + plan.embedded,
                  [request.input_root, *request.triplet_folders])


SR3_SPLITS = ("train", "val")  # never test: the test subjects stay out of the SR3 data


def prepare_sr3(request: pairs_form.PairsRequest, output: Output) -> Path:
    """SR3 form: every HR source of the train and val cases that ``prepare_pairs`` writes for ``request`` (the same
    plan, derivations and augmentations, ``data.builders.harvard_cases``) as a single-image case ``<triplet>_s<k>``,
    k = 1, 2, 3, in the layout of ``data.layout.write_single_case``. ``request.splits`` must be train and/or val."""
    if not request.splits or not set(request.splits) <= set(SR3_SPLITS):
        raise PrepareError(f"the SR3 data has train and val splits only, never test (got {', '.join(request.splits)})")
    plan = pairs_form.plan_request(request, output.seed)
    pair_fields = pairs_form.request_manifest(plan, request, output.seed)
    manifest = _base_manifest(output, "sr3", list(harvard_cases.MODALITIES), "")
    del manifest["split_ratio"]
    manifest.update(task="sr3", ground_truth={"source": "the HR image itself (hr_{r}/)"},
                    layout="data.layout.write_single_case: hr_{r}/, lr_{l}/, sr_{l}_{r}/ per split")
    manifest.update({key: value for key, value in pair_fields.items() if key not in ("splits", "cases", "counts")})
    manifest.update(triplets=pair_fields["splits"], triplet_cases=pair_fields["cases"],
                    splits={split: [] for split in plan.splits}, cases={}, counts={})
    images: dict[str, list[str]] = manifest["splits"]  # type: ignore[assignment]
    cases: dict[str, dict[str, object]] = manifest["cases"]  # type: ignore[assignment]

    def jobs_for(tmp: Path) -> Iterator[ImageJob]:
        for split, case_id, sources in harvard_cases.generate_cases(plan, output.seed, output.settings.r_resolution,
                                                                   pair_fields):
            for k, (modality, image) in enumerate(zip(harvard_cases.MODALITIES, sources), start=1):
                image_id = f"{case_id}_s{k}"
                images[split].append(image_id)
                cases[image_id] = {"triplet": case_id, "source": k, "modality": modality}
                yield ImageJob(tmp / split, image_id, image, output.settings)
        manifest["counts"] = {split: len(ids) for split, ids in images.items()}

    return _build(output, jobs_for, manifest, 3 * (len(plan.cases) + plan.embedded), [request.input_root],
                  write_image)


# ------------------------------------------------------------------------------------------------ command line


def _resolutions(size: int, scales: list[int] | None, lr_sizes: list[int] | None) -> tuple[list[int], list[int]]:
    """(scales, LR sides) from ``--scales`` and ``--lr-sizes``; both must divide ``--size``."""
    if not 8 <= size <= MAX_SIZE:
        raise PrepareError(f"--size must be 8..{MAX_SIZE}, got {size}")
    for scale in scales or []:
        if scale < 2 or size % scale:
            raise PrepareError(f"--scales {scale} does not divide --size {size} (or is < 2)")
    for l_res in lr_sizes or []:
        if not 1 <= l_res < size or size % l_res:
            raise PrepareError(f"--lr-sizes {l_res} does not divide --size {size} (or is not smaller)")
    chosen = set(scales or []) | {size // l for l in lr_sizes or []} or {2, 4, 8}
    bad = [s for s in chosen if size % s]
    if bad:
        raise PrepareError(f"default scale(s) {bad} do not divide --size {size}; pass --scales or --lr-sizes")
    ordered = sorted(chosen)
    return ordered, [size // s for s in ordered]


# The input layouts (sub-commands): each is registered in DATASET_LAYOUTS beside its parser and its preparation.


@dataclass(frozen=True)
class InputLayout:
    """One layout a user's data may come in: a sub-command that turns it into the layout of ``data.layout``.

    ``add_parser(forms, name, base, common)`` adds the sub-command ``name`` to ``forms`` (``base``: the options of
    every layout; ``common``: those plus --modalities, --split and --gt-folder); ``prepare(args, output)`` writes the
    dataset and returns its folder; ``split_ratio``: the cases are split by --split (else by the layout's own rule);
    ``task``: the model task whose dataset reads what it writes (``"sr3"``: single images).
    """

    add_parser: Callable[[argparse._SubParsersAction, str, argparse.ArgumentParser, argparse.ArgumentParser], object]
    prepare: Callable[[argparse.Namespace, Output], Path]
    split_ratio: bool = True
    task: str = "fusion"  # the model.task (core.registry.TASKS) whose dataset reads the output


DATASET_LAYOUTS: Registry[InputLayout] = Registry("dataset layout", InputLayout)


def _slices_parser(forms: argparse._SubParsersAction, name: str, base: argparse.ArgumentParser,
                   common: argparse.ArgumentParser) -> None:
    slices = forms.add_parser(name, parents=[common], help="folders of 2-D images, one folder per modality",
                              description="Files are paired by stem across folders. Non-image files are skipped with "
                              "a warning; hidden files are ignored.")
    slices.add_argument("--input", required=True, type=Path, help="folder holding the modality folders")
    slices.add_argument("--folders", nargs=3, metavar="DIR", help="the three modality folders (default: --modalities)")
    slices.add_argument("--group", metavar="REGEX", help="split by subject, not by slice: a regular expression "
                        "searched in each file stem whose first group (or whole match, without a group) names the "
                        "subject, e.g. '^(sub[0-9]+)_' for sub01_slice07.png; all slices of a subject go to one split "
                        "and --split counts subjects. A stem it does not match is an error (default: every stem is "
                        "its own case, so neighbouring slices of one subject can land in different splits)")
    slices.add_argument("--resize", action="store_true", help="allow images of one case to differ in size: each is "
                        "padded to a square and resized to --size on its own (default: error)")


def _from_slices(args: argparse.Namespace, output: Output) -> Path:
    folders, modalities = _names(args)
    return prepare_slices(args.input, folders, modalities, output, args.gt_folder, args.group)


DATASET_LAYOUTS.add("slices", InputLayout(_slices_parser, _from_slices))


def _volumes_parser(forms: argparse._SubParsersAction, name: str, base: argparse.ArgumentParser,
                    common: argparse.ArgumentParser) -> None:
    volumes = forms.add_parser(name, parents=[common], help="registered 3-D NIfTI volumes",
                               description="Non-NIfTI files in the modality folders are skipped with a warning.")
    source = volumes.add_mutually_exclusive_group(required=True)
    source.add_argument("--files", nargs=3, type=Path, metavar="NII", help="one subject: three registered volumes")
    source.add_argument("--input", type=Path, help="folder of modality folders holding <subject>.nii[.gz] files")
    volumes.add_argument("--folders", nargs=3, metavar="DIR", help="modality folders under --input")
    volumes.add_argument("--gt-file", type=Path, help="with --files: fused ground-truth volume")
    volumes.add_argument("--subject-id", help="with --files: subject id (default: stem of the first file)")
    volumes.add_argument("--axis", choices=sorted(AXES), default="axial", help="slicing axis (default axial)")
    volumes.add_argument("--min-foreground", type=float, default=0.05,
                         help="keep slices with at least this fraction of non-zero pixels (default 0.05)")
    volumes.add_argument("--slab-gap", type=int, default=5, help="single subject: slices left out between "
                         "train/val/test slabs (default 5)")


def _from_volumes(args: argparse.Namespace, output: Output) -> Path:
    subjects, modalities = _volume_subjects(args)
    return prepare_volumes(subjects, modalities, output, args.axis, args.min_foreground, args.slab_gap)


DATASET_LAYOUTS.add("volumes", InputLayout(_volumes_parser, _from_volumes))


def _pairs_parser(forms: argparse._SubParsersAction, name: str, base: argparse.ArgumentParser,
                  common: argparse.ArgumentParser) -> None:
    pairs_form.add_pairs_parser(forms, base)  # names the sub-command "pairs"


def _from_pairs(args: argparse.Namespace, output: Output) -> Path:
    return prepare_pairs(pairs_form.request_from_args(args), output)


DATASET_LAYOUTS.add("pairs", InputLayout(_pairs_parser, _from_pairs, split_ratio=False))


def _sr3_parser(forms: argparse._SubParsersAction, name: str, base: argparse.ArgumentParser,
                common: argparse.ArgumentParser) -> None:
    sr3 = forms.add_parser(name, parents=[base], help="SR3 single-image data from the Harvard AANLIB pair layout: "
                           "every HR source of the train and val triplets of 'pairs'",
                           description="The train and val cases that 'pairs' writes with the same options (same "
                           "subject split, derivations and augmentations), each of their three HR sources a "
                           "single-image case <triplet>_s<k> in hr_{r}/, lr_{l}/, sr_{l}_{r}/ (SR3's layout, "
                           "model.task 'sr3'); no test split: no image of the test subjects enters it. --gt-fusion "
                           "does not apply (the target is the image itself).")
    pairs_form.add_subject_args(sr3)


def _from_sr3(args: argparse.Namespace, output: Output) -> Path:
    if args.gt_fusion != DEFAULT_GT_FUSION:
        raise PrepareError(f"--gt-fusion {args.gt_fusion}: sr3 writes single images whose target is the image "
                           "itself; there is no fused ground truth (remove --gt-fusion)")
    request = pairs_form.PairsRequest(args.input, (), tuple(args.test_subjects),
                                      tuple(args.val_subjects) if args.val_subjects else None, args.val_per_kind,
                                      args.copies, args.embedded, SR3_SPLITS)
    return prepare_sr3(request, output)


DATASET_LAYOUTS.add("sr3", InputLayout(_sr3_parser, _from_sr3, split_ratio=False, task="sr3"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    forms = parser.add_subparsers(dest="form", required=True, metavar="{" + ",".join(DATASET_LAYOUTS.names()) + "}")
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--out", required=True, type=Path, help="output folder (created atomically); never an input, "
                      "inside one or containing one")
    base.add_argument("--size", type=int, default=256, help="HR side r (default 256)")
    base.add_argument("--scales", type=int, nargs="+", help="SR scales, e.g. 2 4 8 (default 2 4 8)")
    base.add_argument("--lr-sizes", type=int, nargs="+", help="explicit LR sides l (each divides --size)")
    base.add_argument("--gt-fusion", default=DEFAULT_GT_FUSION, choices=sorted(FUSION_RULES),
                      help="fusion rule for the ground truth when none is given (default laplacian_ycbcr)")
    base.add_argument("--seed", type=int, default=0, help="seed of the case permutation; pairs: also of the val "
                      "subjects, derivations and augmentations (default 0)")
    base.add_argument("--workers", type=int, default=0, help="worker processes; 0 or 1 = in-process (default 0)")
    base.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is done "
                      "(only a folder the project wrote, holding its .tfsdiff-output marker; any other is refused)")
    base.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_arg(base)
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument("--modalities", nargs=3, metavar="NAME", help="modality names in order, e.g. MR-T1 MR-T2 "
                        "SPECT (default: the folder names or file stems)")
    common.add_argument("--split", default="8:1:1", help="train:val:test ratio, by case (default 8:1:1)")
    common.add_argument("--gt-folder", default="GT", help="ground-truth sub-folder of --input, used when present "
                        "(default GT)")
    for name, layout_spec in DATASET_LAYOUTS.items():
        layout_spec.add_parser(forms, name, base, common)
    return parser


def _names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(folders, modality names): each defaults to the other; one of them is required."""
    folders = args.folders or args.modalities
    if not folders:
        raise PrepareError("pass --folders or --modalities (three names) to choose the modality folders")
    return list(folders), list(args.modalities or folders)


def _volume_subjects(args: argparse.Namespace) -> tuple[dict[str, list[Path]], list[str]]:
    """Subjects (id -> [m1, m2, m3(, gt)]) and modality names from the volume arguments."""
    if args.files:
        subjects, stems = single_subject(args.files, args.gt_file, args.subject_id)
        return subjects, list(args.modalities or stems)
    if args.gt_file or args.subject_id:
        raise PrepareError("--gt-file and --subject-id go with --files; with --input put ground-truth volumes in "
                           f"{args.input / args.gt_folder} and name the files <subject>.nii[.gz]")
    folders, modalities = _names(args)
    return find_subjects(args.input, folders, args.gt_folder), modalities


def _check_numbers(args: argparse.Namespace) -> None:
    """PrepareError naming the option when an integer (or fraction) option is out of its range."""
    ranges = {"seed": (0, MAX_SEED), "workers": (0, None), "copies": (1, None), "embedded": (0, None),
              "val_per_kind": (0, None), "slab_gap": (0, None)}
    for key, (low, high) in ranges.items():
        value = getattr(args, key, None)
        if value is not None and (value < low or (high is not None and value > high)):
            wanted = f"{low}..{high}" if high is not None else f">= {low}"
            raise PrepareError(f"--{key.replace('_', '-')} must be {wanted}, got {value}")
    fraction = getattr(args, "min_foreground", None)
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise PrepareError(f"--min-foreground must be a fraction in [0, 1], got {fraction}")


def _inputs(args: argparse.Namespace) -> list[Path]:
    """Every input file and folder of the command line (the output stays apart from all of them)."""
    given = [args.input, *(getattr(args, "files", None) or []), getattr(args, "gt_file", None),
             *(getattr(args, "triplets", None) or [])]
    return [path for path in given if path is not None]


def _prepare(args: argparse.Namespace) -> Path:
    """Check the arguments and prepare the dataset they describe; returns the dataset folder."""
    _check_numbers(args)
    _check_target(args.out, args.overwrite, _inputs(args))  # before anything is read: names --out and the input
    if args.input is not None and not args.input.is_dir():
        raise PrepareError(f"input folder {args.input} does not exist")
    scales, l_resolutions = _resolutions(args.size, args.scales, args.lr_sizes)
    settings = Settings(args.size, tuple(l_resolutions), args.gt_fusion, getattr(args, "resize", False))
    layout_spec = DATASET_LAYOUTS.get(args.form)
    split = parse_split(args.split) if layout_spec.split_ratio else (0, 0, 0)
    output = Output(args.out, settings, tuple(scales), split, args.seed, args.workers, args.overwrite,
                    not args.quiet)
    return layout_spec.prepare(args, output)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 after printing the dataset folder, else the exit code of `core.cli.run_command`
    after printing ``error: ...`` to stderr."""
    args = _parser().parse_args(argv)
    return run_and_report(lambda: _prepare(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
