"""Read registered NIfTI volumes and cut them into normalised 2-D uint8 slices for ``data/prepare_data.py``.

Each volume is reoriented to the closest canonical (RAS+) orientation; per volume the non-zero voxels give the 0.5
and 99.5 percentiles ``lo, hi`` and ``clip((v - lo) / (hi - lo), 0, 1) * 255`` is rounded to uint8; a slice is kept
when at least ``min_foreground`` of its pixels are non-zero in some modality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.builders.splits import PrepareError, list_folder, pair_folders
from data.images import file_stem

__all__ = ["NIFTI_EXTENSIONS", "PERCENTILES", "AFFINE_ATOL", "AXES", "single_subject", "find_subjects",
           "normalise_volume", "window_volume", "subject_slices"]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
PERCENTILES = (0.5, 99.5)
AFFINE_ATOL = 1e-3  # mm: affines must agree within np.allclose(a, b, rtol=0, atol=AFFINE_ATOL)
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def single_subject(files: list[Path], gt_file: Path | None, subject_id: str | None
                   ) -> tuple[dict[str, list[Path]], list[str]]:
    """({subject id: [m1, m2, m3(, gt)]}, file stems) for one subject; the id defaults to the first file's stem."""
    stems = [file_stem(p, NIFTI_EXTENSIONS) or p.stem for p in files]
    for path in files + ([gt_file] if gt_file else []):
        if not path.is_file():
            raise PrepareError(f"missing volume {path}")
    paths = list(files) + ([gt_file] if gt_file else [])
    return {subject_id or stems[0]: paths}, stems


def find_subjects(input_root: Path, folders: list[str], gt_folder: str) -> dict[str, list[Path]]:
    """Subject id -> [m1, m2, m3(, gt)] from ``input_root/<folder>/<subject>.nii[.gz]`` (+ ``gt_folder`` if present).

    Non-NIfTI files are skipped with a warning; a subject missing from some folder is an error.
    """
    skipped: list[Path] = []
    listed = {name: list_folder(input_root / name, NIFTI_EXTENSIONS, skipped) for name in folders}
    if (input_root / gt_folder).is_dir():
        listed[gt_folder] = list_folder(input_root / gt_folder, NIFTI_EXTENSIONS, skipped)
    subjects = pair_folders(listed, input_root)
    return {subject: [files[subject] for files in listed.values()] for subject in subjects}


def _load_volume(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """(float32 3-D data, affine, nibabel image) of a NIfTI file; a trailing length-1 4th axis is dropped."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise PrepareError(f"{path} is not a 3-D volume (shape {img.shape})")
        return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine), img
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise PrepareError(f"cannot read NIfTI volume {path}: {err}") from None


def normalise_volume(data: np.ndarray, path: Path) -> np.ndarray:
    """Float volume -> uint8 0..255 by the 0.5 / 99.5 percentiles of its non-zero finite voxels."""
    return window_volume(data, path)[0]


def window_volume(data: np.ndarray, path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """``normalise_volume`` and its window: (uint8 volume, (lo, hi)), ``lo, hi`` the 0.5 / 99.5 percentiles of the
    non-zero finite voxels (NaN and infinite voxels count as 0). Voxels map to ``clip((v - lo) / (hi - lo), 0, 1) *
    255``, rounded; when ``hi <= lo`` (one non-zero value dominates) a voxel is 255 when ``v >= hi`` and 0 otherwise.
    PrepareError naming ``path`` for a volume without a non-zero voxel."""
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    nonzero = data[data != 0]
    if nonzero.size == 0:
        raise PrepareError(f"volume {path} has no non-zero voxel")
    low, high = np.percentile(nonzero, PERCENTILES)  # float64 scalars: the arithmetic below stays float64
    if high <= low:
        return np.where(data >= high, 255, 0).astype(np.uint8), (float(low), float(high))
    windowed = np.rint(np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
    return windowed, (float(low), float(high))


def subject_slices(paths: list[Path], axis: str, min_foreground: float) -> list[tuple[int, list[np.ndarray]]]:
    """Load one subject (3 modality volumes + optional GT) -> [(slice index, 2-D uint8 arrays)] of non-empty slices.

    Slices are in display orientation (``slice.T`` flipped vertically: anterior / superior up).
    """
    import nibabel as nib

    loaded = [_load_volume(path) for path in paths]
    for path, (data, affine, _) in zip(paths[1:], loaded[1:]):
        if data.shape != loaded[0][0].shape:
            raise PrepareError(f"volumes of one subject differ in shape: {paths[0]} {loaded[0][0].shape}, "
                               f"{path} {data.shape}")
        if not np.allclose(affine, loaded[0][1], rtol=0.0, atol=AFFINE_ATOL):
            raise PrepareError(f"volumes of one subject differ in affine (atol {AFFINE_ATOL}): {paths[0]}, {path}")
    volumes = []
    for path, (_, _, img) in zip(paths, loaded):
        canonical = nib.as_closest_canonical(img)
        volumes.append(np.moveaxis(normalise_volume(canonical.get_fdata(dtype=np.float32), path), AXES[axis], 0))
    kept = []
    for index in range(volumes[0].shape[0]):
        planes = [np.ascontiguousarray(vol[index].T[::-1]) for vol in volumes]
        if np.mean(np.any(np.stack(planes[:3]) > 0, axis=0)) >= min_foreground:
            kept.append((index, planes))
    if not kept:
        raise PrepareError(f"no slice of {paths[0]} has >= {min_foreground:.0%} foreground pixels")
    return kept
