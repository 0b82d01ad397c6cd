"""The cases of a tri-modal dataset built from the Harvard pair layout (``prepare_data.py pairs``), and their sources.

Every case is a triplet in the Harvard tri-modal order (anatomical A, MR-T2, functional):

* **test**: the real triplets of the test subjects (``real_ct_spect_<id>``, from ``data.builders.harvard_pairs``)
  and the kept cases of the ``--triplets`` folders (``trimodal_<case>``), as they are (no augmentation).
* **train / val**: every pair of a train / val subject gives a triplet of its two real images and one derived image
  (``data.builders.triplets``); a real triplet of a train / val subject keeps its three real images (``real_...``):

  ==========  =====================================  ======================  ================================
  pair        slot 1 (anatomical A)                  slot 2 (MR)             slot 3 (functional)
  ==========  =====================================  ======================  ================================
  CT-MRI      CT                                     MRI (T2)                derived from the MRI, Harvard map
  SPECT-MRI   derived from the MRI: CT/T1/PD-like    MRI (T2)                SPECT
  PET-MRI     MRI (T1; the atlas pairs PET with T1)  T2-like from the MRI    PET
  ==========  =====================================  ======================  ================================

  Train gets ``copies`` copies ``<kind>_<id>_c<k>`` of each (kind ``ct_mri``, ``pet_mri``, ``spect_mri`` or
  ``real_ct_spect``/``real_ct_pet``; k = 0..copies-1), each derived and augmented
  (``data.builders.triplets.augment_triplet``) with its own generator
  ``numpy.random.default_rng([seed, kind code, id, k])`` (kind codes: CT-MRI 1, PET-MRI 2, SPECT-MRI 3, real 4); val
  gets one un-augmented copy (``<kind>_<id>_c0``; a real triplet: ``real_..._<id>``).
  Optionally at most ``embedded`` cases of the embedded MNI152 train split (``data.builders.embedded.train_cases``,
  evenly spread, ``mni_zNNN``, as that module makes them, not augmented) join train.
* Images of a case are zero-padded (centred) to a square of their common size before deriving. The writer then
  resizes them to ``r`` (``data.resample.resize_bicubic``) and computes the ground truth with the fusion rule.
* Only the cases of the requested splits are planned (``splits``, default all three; embedded cases need train);
  the subject split, and with it the choice of the test cases, is the same whichever splits are written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.builders import harvard_pairs as hp
from data.builders import triplets
from data.builders.embedded import train_cases
from data.builders.splits import SPLITS, PrepareError
from data.images import pad_to_square

__all__ = ["MODALITIES", "KIND_CODES", "CaseSpec", "Plan", "plan_cases", "case_sources", "manifest_fields",
           "generate_cases"]

MODALITIES = ("anatomical", "MR-T2", "functional")
KIND_CODES = {"CT-MRI": 1, "PET-MRI": 2, "SPECT-MRI": 3, "real": 4}
_PREFIX = {"CT-MRI": "ct_mri", "PET-MRI": "pet_mri", "SPECT-MRI": "spect_mri"}


@dataclass(frozen=True)
class CaseSpec:
    """What one case is made of. ``recipe``: a pair kind (derived) or ``real``."""

    split: str
    case_id: str
    recipe: str
    files: tuple[Path, ...]
    key: int
    copy: int
    augment: bool


@dataclass(frozen=True)
class Plan:
    """The pair and triplet cases of the written splits in write order, the number of embedded cases, and what the
    manifest records."""

    cases: list[CaseSpec]
    splits: tuple[str, ...]
    copies: int
    embedded: int
    subjects: dict[str, list[str]]
    real: list[hp.Triplet]
    dropped_triplets: dict[str, str]
    held_out_pairs: list[str]


def _pair_cases(split: str, pair: hp.Pair, copies: int) -> list[CaseSpec]:
    """The ``copies`` cases of one pair (one un-augmented case in val)."""
    augment = split == "train"
    return [CaseSpec(split, f"{_PREFIX[pair.kind]}_{pair.pair_id}_c{k}", pair.kind, pair.files, int(pair.pair_id), k,
                     augment) for k in range(copies if augment else 1)]


def _real_cases(split: str, triplet: hp.Triplet, copies: int) -> list[CaseSpec]:
    """Cases of a real triplet: as it is in test and val, ``copies`` augmented copies in train."""
    if split != "train":
        return [CaseSpec(split, triplet.case_id, "real", triplet.files, 0, 0, False)]
    key = int(triplet.files[0].stem)  # a real triplet outside test comes from the pairs: CT-MRI/CT/<id>
    return [CaseSpec(split, f"{triplet.case_id}_c{k}", "real", triplet.files, key, k, True) for k in range(copies)]


def plan_cases(pairs: dict[str, dict[str, hp.Pair]], subjects: dict[str, list[str]], extra: list[hp.Triplet],
               copies: int, embedded: int, splits: tuple[str, ...] = SPLITS) -> Plan:
    """Every case of the ``splits`` of the dataset, in ``SPLITS`` order (rules in the module docstring)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise PrepareError(f"--splits: expected some of {', '.join(SPLITS)}, got {', '.join(splits) or 'none'}")
    if copies < 1:
        raise PrepareError(f"--copies must be >= 1, got {copies}")
    if embedded < 0:
        raise PrepareError(f"--embedded must be >= 0, got {embedded}")
    split_of = {s: split for split, names in subjects.items() for s in names}
    real = hp.find_real_triplets(pairs)
    kept, dropped = hp.match_triplets(extra, pairs, real, set(subjects["train"]) | set(subjects["val"])) \
        if extra else ([], {})
    cases = [c for t in real + kept if t.subject not in split_of or split_of[t.subject] == "test"
             for c in _real_cases("test", t, copies)]
    for split in ("train", "val"):
        cases += [c for t in real if split_of[t.subject] == split for c in _real_cases(split, t, copies)]
        for kind in sorted(pairs):
            cases += [c for p in pairs[kind].values() if split_of[p.subject] == split
                      for c in _pair_cases(split, p, copies)]
    held_out = sorted(f"{kind}/{p.pair_id}" for kind, by_id in pairs.items() for p in by_id.values()
                      if split_of[p.subject] == "test")
    written = tuple(split for split in SPLITS if split in splits)
    return Plan([c for c in cases if c.split in written], written, copies, embedded if "train" in written else 0,
                subjects, real + kept, dropped, held_out)


def _read_case(files: tuple[Path, ...]) -> list[np.ndarray]:
    """The case's images as (S, S, 3) uint8; they must share one size (the error names the files)."""
    images = [hp.read_rgb(path) for path in files]
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        described = ", ".join(f"{path} ({image.shape[1]}x{image.shape[0]})" for path, image in zip(files, images))
        raise PrepareError(f"images of one pair/triplet differ in size: {described}")
    return [pad_to_square(image) for image in images]


def _grey3(image: np.ndarray) -> np.ndarray:
    """(S, S) uint8 or (S, S, 3) uint8 -> (S, S, 3) uint8 grey (luma, R = G = B)."""
    grey = np.rint(triplets.to_grey(image) * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _derive(recipe: str, images: list[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """(three sources in tri-modal order, what was derived) from the two images of a pair of kind ``recipe``."""
    if recipe == "CT-MRI":
        ct, mri = (_grey3(image) for image in images)
        name, functional = triplets.derive_functional(mri[..., 0], rng)
        return [ct, mri, functional], f"functional in {name}"
    if recipe == "SPECT-MRI":
        mri, spect = _grey3(images[0]), images[1]
        name, anatomy = triplets.derive_anatomy(mri[..., 0], rng)
        return [_grey3(anatomy), mri, spect], name
    t1, pet = _grey3(images[0]), images[1]
    return [t1, _grey3(triplets.t2_like_from_t1(t1[..., 0], rng)), pet], "MR-T2-like"


def case_sources(spec: CaseSpec, seed: int) -> tuple[list[np.ndarray], str]:
    """(three (S, S, 3) uint8 HR sources in tri-modal order, what was derived or "") of one case."""
    rng = np.random.default_rng([seed, KIND_CODES[spec.recipe], spec.key, spec.copy])
    images = _read_case(spec.files)
    if spec.recipe == "real":
        sources, derived = images, ""
    else:
        sources, derived = _derive(spec.recipe, images, rng)
    if spec.augment:
        sources = triplets.augment_triplet(sources, rng)
    return sources, derived


def _relative(path: Path, roots: list[Path]) -> str:
    """``path`` relative to the first of ``roots`` that holds it (else as given), for the manifest."""
    for root in roots:
        if path.resolve().is_relative_to(root.resolve()):
            return str(path.resolve().relative_to(root.resolve()))
    return str(path)


def manifest_fields(plan: Plan, input_root: Path, triplet_folders: list[Path], rule: dict[str, object]) -> dict:
    """The pair-specific part of ``manifest.json``; ``splits``, ``cases`` and ``counts`` (of the written splits,
    ``written_splits``) are filled by ``generate_cases``. ``rule`` records how the subjects were split (test, val or
    val_per_kind, seed)."""
    roots = [input_root, *triplet_folders]
    return {
        "input": str(input_root.resolve()),
        "triplet_folders": [str(folder.resolve()) for folder in triplet_folders],
        "subjects": plan.subjects,
        "subject_rule": rule,
        "copies": plan.copies,
        "embedded": plan.embedded,
        "real_triplets": {t.case_id: {"subject": t.subject, "modalities": list(t.modalities),
                                      "files": [_relative(p, roots) for p in t.files]} for t in plan.real},
        "dropped_triplets": plan.dropped_triplets,
        "held_out_pairs": plan.held_out_pairs,
        "rules": {"layout_and_split": "data.builders.harvard_pairs", "cases": "data.builders.harvard_cases",
                  "derivation_and_augmentation": "data.builders.triplets", "colour_maps": "data.colour_maps"},
        "written_splits": list(plan.splits),
        "splits": {split: [] for split in plan.splits},
        "cases": {},
        "counts": {},
    }


def generate_cases(plan: Plan, seed: int, size: int, manifest: dict) -> Iterator[tuple[str, str, list[np.ndarray]]]:
    """(split, case id, three HR sources) of every case of ``plan``, the embedded ones last (at ``size``, as
    ``data.builders.embedded`` makes them). Records each case in ``manifest`` (from ``manifest_fields``) as it goes."""
    roots = [Path(manifest["input"]), *map(Path, manifest["triplet_folders"])]
    for spec in plan.cases:
        sources, derived = case_sources(spec, seed)
        manifest["splits"][spec.split].append(spec.case_id)
        manifest["cases"][spec.case_id] = {"from": [_relative(p, roots) for p in spec.files], "derived": derived,
                                           "augmented": spec.augment}
        yield spec.split, spec.case_id, sources
    if plan.embedded:
        for case_id, images in train_cases(size, limit=plan.embedded):
            manifest["splits"]["train"].append(case_id)
            manifest["cases"][case_id] = {"from": ["data.builders.embedded"], "derived": "", "augmented": False}
            yield "train", case_id, [np.asarray(image) for image in images]
    manifest["counts"] = {split: len(ids) for split, ids in manifest["splits"].items()}
