"""Group input files into cases and assign the cases to train / val / test for ``data/prepare_data.py``.

Cases are paired by file stem across the modality folders. Splits are by case: a ``seed``-ed permutation of the
sorted case ids cut by the ``train:val:test`` ratio (largest remainder, at least one case per non-zero ratio); a
single subject is cut into contiguous slabs ``train | gap | val | gap | test | gap | train`` instead. Slice cases may
be grouped into subjects first (``subjects_of_stems``, ``prepare_data.py slices --group``): then the subjects are
split, and all slices of a subject go to one split.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from core.errors import UsageError
from data.images import PairingError, list_by_stem, pair_by_stem
from data.layout import SPLITS

__all__ = ["PrepareError", "SPLITS", "list_folder", "pair_folders", "parse_split", "allocate_counts", "split_cases",
           "slab_split", "subjects_of_stems", "split_by_subject"]


class PrepareError(UsageError):
    """A user input problem; the message names the offending file(s) or option."""


def list_folder(folder: Path, extensions: tuple[str, ...], skipped: list[Path]) -> dict[str, Path]:
    """Map stem -> file for the files in ``folder`` (``data.images.list_by_stem``); hidden files are ignored, other
    non-inputs are appended to ``skipped`` and warned about on stderr."""
    if not folder.is_dir():
        raise PrepareError(f"missing modality folder {folder}")
    try:
        found, others = list_by_stem(folder, extensions)
    except PairingError as err:
        raise PrepareError(str(err)) from None
    for path in others:
        print(f"warning: skipping {path}: not a file with extension {', '.join(extensions)}", file=sys.stderr)
    skipped.extend(others)
    return found


def pair_folders(folders: dict[str, dict[str, Path]], input_root: Path) -> list[str]:
    """Stems present in every folder (``data.images.pair_by_stem``); raises naming the stems missing from each."""
    if not any(folders.values()):
        raise PrepareError(f"no input files in {', '.join(str(input_root / name) for name in folders)}")
    try:
        return pair_by_stem({str(input_root / name): files for name, files in folders.items()})
    except PairingError as err:
        raise PrepareError(f"stems not present in every modality folder:\n{err}") from None


def parse_split(text: str) -> tuple[int, int, int]:
    """``"8:1:1"`` -> (8, 1, 1): three non-negative integers, not all zero."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or not any(int(p) for p in parts):
        raise PrepareError(f"--split {text!r}: expected train:val:test, three non-negative integers, e.g. 8:1:1")
    train, val, test = (int(p) for p in parts)
    return train, val, test


def allocate_counts(n: int, ratios: tuple[int, int, int], what: str) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), at least one item for every non-zero ratio."""
    active = [ratio > 0 for ratio in ratios]
    if n < sum(active):
        raise PrepareError(f"{n} {what} cannot fill {sum(active)} non-empty splits of --split "
                           f"{':'.join(map(str, ratios))}; add data or set some ratios to 0")
    ideal = [n * ratio / sum(ratios) for ratio in ratios]
    counts = [max(int(x), 1) if on else 0 for x, on in zip(ideal, active)]
    while sum(counts) > n:
        i = max((i for i in range(3) if counts[i] > 1), key=lambda i: counts[i] - ideal[i])
        counts[i] -= 1
    while sum(counts) < n:
        i = max((i for i in range(3) if active[i]), key=lambda i: ideal[i] - counts[i])
        counts[i] += 1
    return counts


def split_cases(ids: list[str], ratios: tuple[int, int, int], seed: int, what: str) -> dict[str, list[str]]:
    """Seeded permutation of the sorted ``ids``, cut by ``allocate_counts``; each split sorted."""
    order = [sorted(ids)[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    counts = allocate_counts(len(ids), ratios, what)
    bounds = np.cumsum([0] + counts)
    return {s: sorted(order[bounds[k]:bounds[k + 1]]) for k, s in enumerate(SPLITS)}


def subjects_of_stems(stems: list[str], pattern: str) -> dict[str, str]:
    """Stem -> subject: the first group of the regular expression ``pattern`` searched in the stem (``re.search``:
    anchor it with ``^`` to match from the start), or its whole match when it has no group. A stem it does not match
    (or whose first group is empty) is a PrepareError naming the stem."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise PrepareError(f"--group '{pattern}' is not a valid regular expression: {err}") from None
    subjects = {}
    for stem in stems:
        match = regex.search(stem)
        subject = match and (match.group(1) if regex.groups else match.group(0))
        if not subject:
            what = "does not match" if match is None else "matches with an empty first group for"
            raise PrepareError(f"--group '{pattern}' {what} the stem {stem!r}, so it names no subject: every stem "
                               "must name its subject (e.g. --group '^(sub[0-9]+)_' for sub01_slice07)")
        subjects[stem] = subject
    return subjects


def split_by_subject(stems: list[str], pattern: str, ratios: tuple[int, int, int],
                     seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(stems of each split, subjects of each split): the subjects that ``pattern`` names (``subjects_of_stems``) are
    split as cases are (``split_cases``), and every stem goes to its subject's split; each list sorted."""
    subject_of = subjects_of_stems(stems, pattern)
    subjects = split_cases(sorted(set(subject_of.values())), ratios, seed, "subjects (--group)")
    split_of = {subject: split for split, names in subjects.items() for subject in names}
    return {split: sorted(stem for stem in stems if split_of[subject_of[stem]] == split) for split in SPLITS}, subjects


def slab_split(indices: list[int], ratios: tuple[int, int, int], gap: int, what: str) -> dict[int, str]:
    """Slice index -> split for one subject: ``train | gap | val | gap | test | gap | train`` (empty parts dropped)."""
    n_active = sum(ratio > 0 for ratio in ratios)
    n_gaps = n_active if ratios[0] > 0 and n_active > 1 else n_active - 1
    counts = allocate_counts(len(indices) - gap * n_gaps, ratios, what)
    half = counts[0] // 2
    segments = [("train", half), ("val", counts[1]), ("test", counts[2]), ("train", counts[0] - half)]
    assignment, position = {}, 0
    for name, count in segments:
        if count == 0:
            continue
        if position > 0:
            position += gap
        for index in indices[position:position + count]:
            assignment[index] = name
        position += count
    return assignment
