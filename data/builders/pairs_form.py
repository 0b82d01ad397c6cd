"""The ``pairs`` form of ``data/prepare_data.py``: its options, and the plan and manifest of the dataset it writes.

``prepare_data.py pairs`` (and ``paper.real_scans``, which builds the test split only) describe what to build with a
:class:`PairsRequest`; :func:`plan_request` reads the public Harvard pair layout (``data.builders.harvard_pairs``),
splits it by subject and plans the cases of the requested splits (``data.builders.harvard_cases``);
:func:`request_manifest` is the pair-specific part of ``manifest.json``. ``data.prepare_data.prepare_pairs`` writes the
planned cases.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from data.builders import harvard_cases, harvard_pairs
from data.builders.splits import SPLITS

__all__ = ["PairsRequest", "add_pairs_parser", "add_subject_args", "request_from_args", "plan_request",
           "request_manifest"]


@dataclass(frozen=True)
class PairsRequest:
    """What to build from the pair layout under ``input_root``: the ``--triplets`` folders for the test split, the
    subject rule (test subjects; val subjects, or ``val_per_kind`` chosen by the seed), the train ``copies``, at most
    ``embedded`` embedded MNI152 train cases, and the ``splits`` to write."""

    input_root: Path
    triplet_folders: tuple[Path, ...] = ()
    test_subjects: tuple[str, ...] = harvard_pairs.DEFAULT_TEST_SUBJECTS
    val_subjects: tuple[str, ...] | None = None
    val_per_kind: int = 1
    copies: int = 1
    embedded: int = 0
    splits: tuple[str, ...] = SPLITS


def add_pairs_parser(forms: argparse._SubParsersAction, base: argparse.ArgumentParser) -> None:
    """The ``pairs`` sub-command of ``prepare_data.py`` with the options of :class:`PairsRequest`."""
    pairs = forms.add_parser("pairs", parents=[base], help="the public Harvard AANLIB pair layout "
                             "(CT-MRI/{CT,MRI}, PET-MRI/{MRI,PET}, SPECT-MRI/{MRI,SPECT})",
                             description="Split by subject; real triplets for test; train/val triplets from the pairs "
                             "with a derived third image. Rules: data/builders/harvard_pairs.py, "
                             "data/builders/harvard_cases.py, data/builders/triplets.py.")
    add_subject_args(pairs)
    pairs.add_argument("--triplets", nargs="+", type=Path, default=[], metavar="DIR", help="folders of real "
                       "triplets <case>_<k>_<modality>.png for the test split (e.g. harvard_trimodal)")
    pairs.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), metavar="SPLIT",
                       help="write only these splits, e.g. test (default train val test); the subject split is the "
                       "same whichever are written")


def add_subject_args(parser: argparse.ArgumentParser) -> None:
    """The options of the pair input, its subject split and the train cases (``pairs`` and ``sr3``): --input,
    --test-subjects, --val-subjects, --val-per-kind, --copies, --embedded."""
    parser.add_argument("--input", required=True, type=Path, help="folder holding CT-MRI/, PET-MRI/, SPECT-MRI/")
    parser.add_argument("--test-subjects", nargs="+", default=list(harvard_pairs.DEFAULT_TEST_SUBJECTS),
                        metavar="S", help="test subjects, never in train or val (default 21 28 41)")
    parser.add_argument("--val-subjects", nargs="+", metavar="S", help="val subjects (default: chosen by "
                        "--val-per-kind and --seed)")
    parser.add_argument("--val-per-kind", type=int, default=1, help="val subjects per pair kind when --val-subjects "
                        "is not given, keeping a train subject for every kind (default 1)")
    parser.add_argument("--copies", type=int, default=1, help="augmented train copies per pair (default 1)")
    parser.add_argument("--embedded", type=int, default=0, metavar="N", help="add at most N embedded MNI152 train "
                        "cases to train (default 0)")


def request_from_args(args: argparse.Namespace) -> PairsRequest:
    """The request of parsed ``pairs`` arguments."""
    return PairsRequest(args.input, tuple(args.triplets), tuple(args.test_subjects),
                        tuple(args.val_subjects) if args.val_subjects else None, args.val_per_kind, args.copies,
                        args.embedded, tuple(args.splits))


def plan_request(request: PairsRequest, seed: int) -> harvard_cases.Plan:
    """The subject split of the pair layout and the cases of ``request.splits``; PrepareError on bad input."""
    pairs = harvard_pairs.read_pairs(request.input_root)
    kinds_of = harvard_pairs.subjects_by_kind(pairs)
    subjects = harvard_pairs.split_subjects(kinds_of, request.test_subjects, request.val_subjects,
                                            request.val_per_kind, seed)
    extra = [triplet for folder in request.triplet_folders for triplet in harvard_pairs.read_triplet_folder(folder)]
    return harvard_cases.plan_cases(pairs, subjects, extra, request.copies, request.embedded, request.splits)


def request_manifest(plan: harvard_cases.Plan, request: PairsRequest, seed: int) -> dict:
    """The pair-specific part of ``manifest.json`` (``harvard_cases.manifest_fields``), with the subject rule."""
    rule = {"test": list(request.test_subjects),
            "val": list(request.val_subjects) if request.val_subjects else None,
            "val_per_kind": None if request.val_subjects else request.val_per_kind, "seed": seed}
    return harvard_cases.manifest_fields(plan, request.input_root, list(request.triplet_folders), rule)
