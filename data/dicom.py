"""Read a folder holding one DICOM series into a 3-D volume with a NIfTI (RAS+ world) affine, for volume fusion.

The folder's files (hidden files ignored; not recursive) are read with pydicom. Files that are not DICOM, or DICOM
files without an image (a DICOMDIR, a structured report), are skipped with a warning. The images must form one
series (one ``SeriesInstanceUID``; several are an error listing them) of single-frame, greyscale
(``MONOCHROME2``) slices, one orientation (``ImageOrientationPatient``), one pixel spacing and one size, at distinct,
evenly spaced positions along the slice normal.

Geometry (DICOM PS3.3 C.7.6.2.1.1). ``ImageOrientationPatient`` gives the unit vectors ``r`` (along a row, the
direction of increasing column index) and ``c`` (along a column, increasing row index); ``PixelSpacing`` is
(spacing between rows, spacing between columns); ``ImagePositionPatient`` is the centre of the first pixel. Slices
are sorted by the projection of their position on the normal ``n = r x c``. Voxel ``(i, j, k)`` of the volume is
column ``i``, row ``j`` of the ``k``-th sorted slice, at

    P(i, j, k) = IPP_0 + i * PixelSpacing[1] * r + j * PixelSpacing[0] * c + k * (IPP_last - IPP_0) / (N - 1)

in the patient's LPS coordinates; the affine negates x and y to give NIfTI's RAS. A single slice takes its
thickness along ``n`` from ``SpacingBetweenSlices``, else ``SliceThickness``, else 1 mm. A series whose slice
positions do not lie along the normal (gantry tilt, more than ``MAX_TILT_DEGREES``) or whose gaps differ by more
than ``SPACING_TOLERANCE`` (missing slices) is refused: convert it with dcm2niix, which corrects both.

Values: ``pixel * RescaleSlope + RescaleIntercept`` (1 and 0 when absent), as float32.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np

from data.builders.splits import PrepareError

__all__ = ["DicomError", "read_dicom_series", "MAX_TILT_DEGREES", "SPACING_TOLERANCE"]

MAX_TILT_DEGREES = 0.1  # largest angle between the slice normal and the step between slice positions
SPACING_TOLERANCE = 0.01  # largest deviation of one gap between slice positions from their mean, as a fraction
ORIENTATION_ATOL = 1e-4  # direction cosines of two slices of one series must agree within this
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CONVERT = "convert the series to NIfTI (e.g. `dcm2niix -z y -o OUT FOLDER`) and pass the .nii.gz"
log = logging.getLogger("tfsdiff")


class DicomError(PrepareError):
    """A DICOM folder that cannot be read as one volume; the message names the folder or file."""


def _pydicom() -> ModuleType:
    try:
        import pydicom
        import pydicom.errors
    except ImportError:
        raise DicomError("reading a DICOM folder needs pydicom (`pip install pydicom`, listed in requirement.txt), "
                         f"or {CONVERT}") from None
    return pydicom


def _floats(ds: object, tag: str, count: int, path: Path) -> np.ndarray:
    value = getattr(ds, tag, None)
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (count,):
        raise DicomError(f"DICOM file {path} has no usable {tag} ({count} numbers expected, got {value!r}); "
                         f"{CONVERT}")
    return values


def _headers(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    """The image files of `folder` grouped by SeriesInstanceUID (headers only)."""
    pydicom = _pydicom()
    series: dict[str, list[tuple[Path, object]]] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            skipped.append(path.name)
            continue
        if "Rows" not in ds or "ImagePositionPatient" not in ds:
            skipped.append(path.name)
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if skipped:
        log.warning("DICOM folder %s: skipped %d file%s without a DICOM image: %s", folder, len(skipped),
                    "" if len(skipped) == 1 else "s", ", ".join(skipped))
    return series


def _check_series(folder: Path, files: list[tuple[Path, object]]) -> None:
    first_path, first = files[0]
    for path, ds in files:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise DicomError(f"DICOM file {path} holds {frames} frames (an enhanced multi-frame image), which is not "
                             f"read here; {CONVERT}")
        photometric = str(getattr(ds, "PhotometricInterpretation", ""))
        if photometric != "MONOCHROME2" or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise DicomError(f"DICOM file {path} is {photometric or 'of unknown photometric interpretation'}; only "
                             f"greyscale MONOCHROME2 images are read; {CONVERT}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomError(f"DICOM folder {folder}: slices of different sizes ({first_path.name}: "
                             f"{first.Rows}x{first.Columns}, {path.name}: {ds.Rows}x{ds.Columns} rows x columns)")
        for tag, count in (("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
            if not np.allclose(_floats(ds, tag, count, path), _floats(first, tag, count, first_path), rtol=0.0,
                               atol=ORIENTATION_ATOL):
                raise DicomError(f"DICOM folder {folder}: {tag} differs between {first_path.name} and {path.name}; "
                                 f"one series has one {tag}")


def _slice_affine(folder: Path, files: list[tuple[Path, object]]) -> tuple[list[tuple[Path, object]], np.ndarray]:
    """The files sorted along the slice normal and the RAS+ affine of the volume they make."""
    first_path, first = files[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, first_path)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomError(f"DICOM file {first_path}: ImageOrientationPatient {orientation.tolist()} is not two "
                         f"orthogonal unit vectors; {CONVERT}")
    positions = {path: _floats(ds, "ImagePositionPatient", 3, path) for path, ds in files}
    ordered = sorted(files, key=lambda item: float(positions[item[0]] @ normal))
    depth = np.asarray([positions[path] @ normal for path, _ in ordered])
    if len(ordered) > 1:
        gaps = np.diff(depth)
        if np.min(gaps) < 1e-4:
            twin = int(np.argmin(gaps))
            raise DicomError(f"DICOM folder {folder}: {ordered[twin][0].name} and {ordered[twin + 1][0].name} lie at "
                             "the same slice position; give a folder holding one series, each position once")
        if np.max(np.abs(gaps - gaps.mean())) > SPACING_TOLERANCE * gaps.mean():
            raise DicomError(f"DICOM folder {folder}: the slices are not evenly spaced (gaps {gaps.min():.3f} to "
                             f"{gaps.max():.3f} mm along the normal: missing slices?); {CONVERT}")
        step = (positions[ordered[-1][0]] - positions[ordered[0][0]]) / (len(ordered) - 1)
        tilt = np.degrees(np.arccos(np.clip(step @ normal / np.linalg.norm(step), -1.0, 1.0)))
        if tilt > MAX_TILT_DEGREES:
            raise DicomError(f"DICOM folder {folder}: the slice positions step {tilt:.2f} degrees away from the slice "
                             f"normal (gantry tilt); {CONVERT}, which corrects it")
    else:
        thickness = getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None) or 1.0
        step = normal * float(thickness)
    row_spacing, col_spacing = _floats(first, "PixelSpacing", 2, first_path)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * col_spacing, col * row_spacing, step
    lps[:3, 3] = positions[ordered[0][0]]
    return ordered, LPS_TO_RAS @ lps


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(float32 volume (columns, rows, slices), RAS+ affine) of the one DICOM series in `folder` (module
    docstring); DicomError naming the folder or file when it is not one readable series."""
    series = _headers(folder)
    if not series:
        raise DicomError(f"{folder} is a folder without DICOM images; --inputs takes NIfTI files (.nii, .nii.gz) or "
                         "folders holding one DICOM series")
    if len(series) > 1:
        listing = "; ".join(f"{uid or '(no SeriesInstanceUID)'}: {len(files)} file{'s' if len(files) > 1 else ''} "
                            f"({getattr(files[0][1], 'SeriesDescription', '') or 'no description'})"
                            for uid, files in sorted(series.items()))
        raise DicomError(f"DICOM folder {folder} holds {len(series)} series ({listing}): give a folder holding one "
                         "series")
    files = next(iter(series.values()))
    _check_series(folder, files)
    ordered, affine = _slice_affine(folder, files)
    pydicom = _pydicom()
    planes = []
    for path, _ in ordered:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
        except (OSError, ValueError, AttributeError, RuntimeError, NotImplementedError) as err:
            raise DicomError(f"cannot read the pixels of DICOM file {path}: {err}; {CONVERT}") from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes.append(pixels * np.float32(slope) + np.float32(intercept))
    # (rows, columns) per slice -> voxel (column i, row j, slice k)
    return np.ascontiguousarray(np.stack(planes, axis=-1).transpose(1, 0, 2)), affine
