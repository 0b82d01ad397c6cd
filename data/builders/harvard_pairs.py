"""Read the public Harvard AANLIB dual-modal pair layout: pairs, subjects, the subject split and the real triplets.

Layout (as redistributed by the public fusion-dataset repository; research use only)::

    IN/CT-MRI/{CT,MRI}/<id>.png     IN/PET-MRI/{MRI,PET}/<id>.png     IN/SPECT-MRI/{MRI,SPECT}/<id>.png

Rules:

* ``<id>`` is a subject number followed by a 3-digit slice number: ``21009`` is slice 9 of subject 21. The public
  set has 2-digit subjects and four 1-digit ones (``2004`` is subject 2, a different patient from subject 20), so the
  subject is the id without its last 3 digits. A file whose stem is not 4 or 5 digits is an error naming the file.
* A pair folder that is absent is skipped; at least one must be present. Within a pair folder both modality folders
  must hold the same ids (the missing ones are named); non-image files are skipped with a warning; hidden files are
  ignored.
* **Subject split.** Test subjects (default 21, 28, 41) never reach train or val. Val subjects are given, or chosen
  for ``val_per_kind`` subjects per pair kind: the other subjects are put in a ``seed``-ed random order and, for each
  kind in the order CT-MRI, PET-MRI, SPECT-MRI, the first subjects that have that kind are taken until the kind has
  ``val_per_kind`` val subjects, skipping any subject whose move would leave a kind without a train subject. Train is
  the rest. A subject's pairs of every kind go to its split.
* **Real triplets.** A CT-MRI id that is also a SPECT-MRI (or PET-MRI) id forms a registered triplet
  (``CT-MRI/CT``, ``CT-MRI/MRI``, ``SPECT-MRI/SPECT``) only when the two MRI images are pixel-identical (the same
  slice); an id shared by PET-MRI and SPECT-MRI is never a triplet (it would hold two functional images).
* **Triplet folders** (``--triplets``, like ``harvard_trimodal``): files ``<case>_<k>_<modality>.<ext>`` with
  ``k`` = 1, 2, 3 in the order (anatomical A, MR-T2, functional). Their images are re-encoded copies (up to 70 grey
  levels apart on single pixels), so a triplet image and a pair image show the same slice when the mean absolute
  difference of their 64x64 area-averaged RGB thumbnails is at most 1.5 grey levels (measured on the public sets:
  copies 0.09-0.77; different slices at least 2.04, for neighbouring PET slices). A case whose three images show
  the slices of a real triplet, slot by slot, is a duplicate and dropped; a case with an image showing a slice of a
  train or val subject is excluded; the other cases join the test split, with the subject of the pair they share a
  slice with, if any.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.builders.splits import PrepareError, list_folder
from data.images import IMAGE_EXTENSIONS, PairingError, pair_by_stem, read_image

__all__ = ["KINDS", "DEFAULT_TEST_SUBJECTS", "Pair", "Triplet", "read_pairs", "subjects_by_kind", "split_subjects",
           "find_real_triplets", "read_triplet_folder", "match_triplets", "subject_of", "read_rgb"]

KINDS: dict[str, tuple[str, str]] = {"CT-MRI": ("CT", "MRI"), "PET-MRI": ("MRI", "PET"),
                                     "SPECT-MRI": ("MRI", "SPECT")}
FUNCTIONAL_KINDS = ("SPECT-MRI", "PET-MRI")
DEFAULT_TEST_SUBJECTS = ("21", "28", "41")
_ID = re.compile(r"\d{4,5}")
THUMBNAIL = 64
SAME_SLICE_MAD = 1.5
_TRIPLET_FILE = re.compile(r"(?P<case>.+)_(?P<slot>[123])_(?P<modality>[^_]+)")


@dataclass(frozen=True)
class Pair:
    """One dual-modal pair: ``files`` in the folder order of ``KINDS[kind]`` (e.g. CT, MRI for CT-MRI)."""

    kind: str
    pair_id: str
    files: tuple[Path, Path]

    @property
    def subject(self) -> str:
        """The subject of the id: all but its last 3 digits."""
        return subject_of(self.pair_id)


@dataclass(frozen=True)
class Triplet:
    """A real registered triplet (anatomical A, MR-T2, functional); ``subject`` is None when unknown."""

    case_id: str
    subject: str | None
    files: tuple[Path, Path, Path]
    modalities: tuple[str, str, str]


def subject_of(pair_id: str) -> str:
    """Subject of a pair id: the id without its 3-digit slice number (``21009`` -> ``21``, ``2004`` -> ``2``)."""
    return pair_id[:-3]


def read_rgb(path: Path) -> np.ndarray:
    """``data.images.read_image`` (H, W, 3) uint8; its ImageReadError (an input error) names the file."""
    return read_image(path)


def _list_images(folder: Path) -> dict[str, Path]:
    """Stem -> image file of ``folder`` (``data.builders.splits.list_folder``: other files are skipped with a
    warning)."""
    return list_folder(folder, IMAGE_EXTENSIONS, [])


def _read_kind(root: Path, kind: str) -> dict[str, Pair]:
    """Id -> Pair of the pair folder ``root/kind``."""
    listings = {name: _list_images(root / kind / name) for name in KINDS[kind]}
    for files in listings.values():
        for stem, path in files.items():
            if not _ID.fullmatch(stem):
                raise PrepareError(f"{path}: file name must be a pair id, a subject number and a 3-digit slice "
                                   "number (4 or 5 digits), e.g. 21009.png")
    try:
        ids = pair_by_stem({str(root / kind / name): files for name, files in listings.items()})
    except PairingError as err:
        raise PrepareError(f"ids not present in both folders of {root / kind}:\n{err}") from None
    first, second = KINDS[kind]
    return {i: Pair(kind, i, (listings[first][i], listings[second][i])) for i in ids}


def read_pairs(root: Path) -> dict[str, dict[str, Pair]]:
    """Kind -> id -> Pair for the pair folders present under ``root`` (rules in the module docstring)."""
    if not root.is_dir():
        raise PrepareError(f"input folder {root} does not exist")
    pairs = {kind: _read_kind(root, kind) for kind in KINDS if (root / kind).is_dir()}
    if not any(pairs.values()):
        expected = ", ".join(f"{kind}/{{{a},{b}}}/<id>.png" for kind, (a, b) in KINDS.items())
        raise PrepareError(f"no pairs under {root}: expected {expected}")
    return pairs


def subjects_by_kind(pairs: dict[str, dict[str, Pair]]) -> dict[str, set[str]]:
    """Subject -> the pair kinds it has."""
    kinds: dict[str, set[str]] = {}
    for kind, by_id in pairs.items():
        for pair in by_id.values():
            kinds.setdefault(pair.subject, set()).add(kind)
    return kinds


def _numeric(subject: str) -> tuple[int, str]:
    """Sort key that orders digit strings by value (2 before 10)."""
    return len(subject), subject


def _leaves_train(kinds_of: dict[str, set[str]], rest: Sequence[str], val: Sequence[str]) -> bool:
    """Whether every kind that a non-test subject has keeps a train subject when ``val`` goes to val."""
    train = [s for s in rest if s not in val]
    return all(any(kind in kinds_of[s] for s in train) for s in rest for kind in kinds_of[s])


def _auto_val(kinds_of: dict[str, set[str]], rest: list[str], val_per_kind: int, seed: int) -> list[str]:
    """Val subjects chosen by the rule of the module docstring."""
    order = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    chosen: list[str] = []
    for kind in KINDS:
        for subject in order:
            if sum(kind in kinds_of[s] for s in chosen) >= val_per_kind:
                break
            if subject in chosen or kind not in kinds_of[subject]:
                continue
            if _leaves_train(kinds_of, rest, chosen + [subject]):
                chosen.append(subject)
    return sorted(chosen, key=_numeric)


def split_subjects(kinds_of: dict[str, set[str]], test: Iterable[str], val: Iterable[str] | None = None,
                   val_per_kind: int = 1, seed: int = 0) -> dict[str, list[str]]:
    """Split -> sorted subjects (rules in the module docstring); every subject named must have pairs."""
    test, known = sorted(set(test), key=_numeric), sorted(kinds_of, key=_numeric)
    for name, subjects in (("test", test), ("val", val or [])):
        missing = [s for s in subjects if s not in kinds_of]
        if missing:
            raise PrepareError(f"{name} subject(s) {', '.join(missing)} have no pairs; subjects present: "
                               f"{', '.join(known)}")
    rest = [s for s in known if s not in test]
    if val is not None:
        val = sorted(set(val), key=_numeric)
        if set(val) & set(test):
            raise PrepareError(f"subject(s) {', '.join(sorted(set(val) & set(test)))} are both val and test")
    else:
        if val_per_kind < 0:
            raise PrepareError(f"--val-per-kind must be >= 0, got {val_per_kind}")
        val = _auto_val(kinds_of, rest, val_per_kind, seed)
    train = [s for s in rest if s not in val]
    if not train:
        raise PrepareError(f"no train subject left: test {', '.join(test)}, val {', '.join(val)} of {', '.join(known)}")
    return {"train": train, "val": val, "test": test}


def find_real_triplets(pairs: dict[str, dict[str, Pair]]) -> list[Triplet]:
    """The real triplets: CT-MRI ids whose MRI is pixel-identical to the MRI of the same id in SPECT-/PET-MRI."""
    triplets = []
    ct_pairs = pairs.get("CT-MRI", {})
    for kind in FUNCTIONAL_KINDS:
        other = pairs.get(kind, {})
        for pair_id in sorted(set(ct_pairs) & set(other)):
            ct, mri = ct_pairs[pair_id].files
            other_mri, functional = other[pair_id].files
            if np.array_equal(read_rgb(mri), read_rgb(other_mri)):
                modality = KINDS[kind][1]
                case_id = f"real_ct_{modality.lower()}_{pair_id}"
                triplets.append(Triplet(case_id, subject_of(pair_id), (ct, mri, functional), ("CT", "MRI", modality)))
    return triplets


def read_triplet_folder(folder: Path) -> list[Triplet]:
    """The cases of a triplet folder, sorted by case name (subject unknown until ``match_triplets``)."""
    slots: dict[str, dict[int, tuple[Path, str]]] = {}
    for stem, path in _list_images(folder).items():
        match = _TRIPLET_FILE.fullmatch(stem)
        if match is None:
            raise PrepareError(f"{path}: expected a file named <case>_<k>_<modality>.<ext> with k = 1, 2 or 3, "
                               "e.g. case01_1_CT.png")
        slots.setdefault(match["case"], {})[int(match["slot"])] = (path, match["modality"])
    if not slots:
        raise PrepareError(f"no triplet images in {folder}")
    triplets = []
    for case, found in sorted(slots.items()):
        missing = [str(k) for k in (1, 2, 3) if k not in found]
        if missing:
            raise PrepareError(f"{folder}: case {case!r} lacks image(s) {', '.join(missing)} "
                               f"(expected {case}_1_<modality>, {case}_2_<modality>, {case}_3_<modality>)")
        files = tuple(found[k][0] for k in (1, 2, 3))
        modalities = tuple(found[k][1] for k in (1, 2, 3))
        triplets.append(Triplet(f"trimodal_{case}", None, files, modalities))  # type: ignore[arg-type]
    return triplets


def _thumbnail(path: Path) -> np.ndarray:
    """(64, 64, 3) float32 area-averaged thumbnail of an image (0..255)."""
    return cv2.resize(read_rgb(path).astype(np.float32), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)


def _distances(image: np.ndarray, thumbnails: np.ndarray) -> np.ndarray:
    """Mean absolute difference (grey levels) of one thumbnail to each of (N, 64, 64, 3) ``thumbnails``."""
    return np.abs(thumbnails - image).mean(axis=(1, 2, 3))


def match_triplets(extra: list[Triplet], pairs: dict[str, dict[str, Pair]], real: list[Triplet],
                   held_out: set[str]) -> tuple[list[Triplet], dict[str, str]]:
    """(kept cases with their subject, dropped case id -> reason) for the cases of a triplet folder.

    ``held_out`` are the train and val subjects; ``real`` the real triplets already in the dataset. Two images show
    the same slice when their thumbnails differ by at most SAME_SLICE_MAD grey levels (module docstring).
    """
    owners = [(pair.pair_id, path) for by_id in pairs.values() for pair in by_id.values() for path in pair.files]
    thumbnails = np.stack([_thumbnail(path) for _, path in owners])
    row = {path: k for k, (_, path) in enumerate(owners)}
    kept, dropped = [], {}
    for triplet in extra:
        distances = [_distances(_thumbnail(path), thumbnails) for path in triplet.files]
        ids = sorted({owners[k][0] for d in distances for k in np.nonzero(d <= SAME_SLICE_MAD)[0]})
        same = [t.case_id for t in real if all(d[row[p]] <= SAME_SLICE_MAD for d, p in zip(distances, t.files))]
        if same:
            dropped[triplet.case_id] = f"duplicate of {same[0]}"
        elif any(subject_of(i) in held_out for i in ids):
            dropped[triplet.case_id] = f"shows the slice of pair(s) {', '.join(ids)} of a train/val subject"
        else:
            subject = subject_of(ids[0]) if ids else None
            kept.append(Triplet(triplet.case_id, subject, triplet.files, triplet.modalities))
    return kept, dropped
