"""Volume fusion's files: three registered volumes in, display slices out, and fused slices back into one NIfTI volume.

``infer.py --inputs A.nii.gz B.nii.gz C.nii.gz --out fused.nii.gz`` (docs/usage.md, "Volumes") runs these steps,
and ``bench/volumes.py`` runs them too:

1. **Read** (:func:`read_volume`): a NIfTI file (``.nii``, ``.nii.gz``; a trailing length-1 4th axis is dropped) or a
   folder holding one DICOM series (``data.dicom``), as float32 data and the affine of its voxel grid (RAS+ world
   millimetres).
2. **One grid** (:func:`on_one_grid`): the three volumes must have one shape and affines that agree within
   ``data.builders.volumes.AFFINE_ATOL``; with ``resample_to="first"`` the second and third are resampled onto the
   first's grid (``nibabel.processing.resample_from_to``, cubic spline, 0 outside their field of view).
3. **Window** (``data.builders.volumes.window_volume``, as ``prepare_data.py volumes`` does): per volume ``lo, hi`` =
   the 0.5 and 99.5 percentiles of its non-zero finite voxels, ``clip((v - lo) / (hi - lo), 0, 1) * 255`` rounded to
   uint8.
4. **Slice** (:func:`slice_volumes`): reoriented to the closest canonical orientation (RAS+), cut along the slice
   axis (``axial``, ``coronal`` or ``sagittal``) into slices shown as ``prepare_data.py`` shows them (the slice
   transposed and flipped vertically: anterior, or superior, up; the subject's left on the left, or posterior for
   sagittal slices), so that the model sees what it was trained on. A grey slice is made RGB (R = G = B), or with a
   colour map rendered in that map (``data.colour_maps.colourise``). A slice whose three windowed sources are all
   zero is *empty*.
5. **Put back** (:meth:`SliceGeometry.volume`): the fused display slices, of any in-plane size, are stacked along the
   slice axis and the volume is turned back into the first input's original orientation. Its affine keeps the field
   of view: along an in-plane axis of ``n`` voxels fused into ``m``, output voxel ``i'`` lies at input voxel
   coordinate ``(i' + 0.5) n / m - 0.5``, so the outer voxel edges (coordinates -0.5 and ``n - 0.5``) stay where
   they were, the voxel size is divided by ``m / n``, and the first voxel centre moves by half an input voxel minus
   half an output voxel.
6. **Write** (:func:`fused_nifti`, :func:`spread_nifti`, :func:`nifti_bytes`): the fused volume as NIfTI RGB24
   (``RGB24``, one (R, G, B) uint8 record per voxel) or, with ``grey``, as uint8 luminance ``0.299 R + 0.587 G +
   0.114 B`` rounded (``core.grey.to_grey``), the uncertainty as float32 grey levels, both with the first
   input's units and sform/qform codes and a short ``descrip``; the sidecar JSON beside the output
   (:func:`sidecar_path`) records how it was made.
"""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.grey import to_grey
from data.builders.splits import PrepareError
from data.builders.volumes import AFFINE_ATOL, AXES, NIFTI_EXTENSIONS, window_volume
from data.colour_maps import colourise
from data.dicom import read_dicom_series
from data.images import file_stem

__all__ = ["RGB24", "WINDOW_RULE", "VolumeError", "Volume", "SliceGeometry", "SlicedVolumes", "is_nifti_name",
           "is_volume_input", "read_volume", "on_one_grid", "slice_volumes", "fused_nifti", "spread_nifti",
           "nifti_bytes", "nifti_stem", "sidecar_path", "beside", "sidecar_record"]

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])  # NIfTI datatype 128 (DT_RGB24)
DESCRIP_BYTES = 80  # the NIfTI-1 header's descrip field
RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)  # the canonical orientation, as nibabel writes it
log = logging.getLogger("tfsdiff")


class VolumeError(PrepareError):
    """Volumes that cannot be fused together (not 3-D, unreadable, not on one grid); the message names the files."""


def is_nifti_name(path: str | Path) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return file_stem(Path(path), NIFTI_EXTENSIONS) is not None


def is_volume_input(path: str | Path) -> bool:
    """Whether an --inputs entry can be a volume: a NIfTI file name (``.nii``, ``.nii.gz``) or a folder (DICOM)."""
    return Path(path).is_dir() or is_nifti_name(path)


def nifti_stem(path: Path) -> str:
    """The name of a NIfTI file without ``.nii`` or ``.nii.gz`` (the whole name for other files)."""
    return file_stem(path, NIFTI_EXTENSIONS) or path.name


def sidecar_path(out: Path) -> Path:
    """The sidecar JSON of a fused volume: ``fused.json`` beside ``fused.nii.gz``."""
    return out.with_name(nifti_stem(out) + ".json")


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


@dataclass(frozen=True)
class Volume:
    """One input volume: float32 data (X, Y, Z), the affine of its grid, and its NIfTI header (None for DICOM)."""

    path: str
    data: np.ndarray
    affine: np.ndarray
    header: Any = None

    def describe(self) -> str:
        """``PATH: XxYxZ voxels of a x b x c mm`` (the sizes along the array axes)."""
        sizes = "x".join(f"{v:g}" for v in np.round(_voxel_sizes(self.affine), 3))
        return f"{self.path}: {'x'.join(map(str, self.data.shape))} voxels of {sizes} mm"


def read_volume(path: str) -> Volume:
    """A NIfTI file or a folder holding one DICOM series as a 3-D float32 `Volume`; VolumeError naming the file
    when it cannot be read or is not 3-D."""
    where = Path(path)
    if where.is_dir():
        data, affine = read_dicom_series(where)
        return Volume(path, data, affine)
    import nibabel as nib

    if not where.is_file():
        raise VolumeError(f"--inputs {path} does not exist")
    try:
        img = nib.load(str(where))
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise VolumeError(f"cannot read NIfTI volume {path}: {err}") from None
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise VolumeError(f"{path} is not a 3-D volume (shape {img.shape}); give one 3-D volume per modality")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (OSError, ValueError, EOFError) as err:
        raise VolumeError(f"cannot read the voxels of NIfTI volume {path}: {err}") from None
    return Volume(path, data, np.asarray(img.affine, dtype=np.float64), img.header)


def _resample_onto(volume: Volume, target: Volume) -> Volume:
    """`volume` resampled onto `target`'s grid: cubic spline (order 3), 0 outside its field of view."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    moved = resample_from_to(nib.Nifti1Image(volume.data, volume.affine), (target.data.shape, target.affine),
                             order=3, mode="constant", cval=0.0)
    return Volume(volume.path, np.asarray(moved.dataobj, dtype=np.float32), target.affine.copy(), volume.header)


def on_one_grid(volumes: list[Volume], resample_to: str | None) -> tuple[list[Volume], list[bool]]:
    """The volumes on the first one's grid, and which were resampled onto it. Without `resample_to` volumes on
    different grids (shape, or affine beyond ``AFFINE_ATOL`` mm) are a VolumeError listing every volume's shape and
    voxel size; with ``resample_to="first"`` those are resampled onto the first's grid (a log line names them)."""
    first = volumes[0]
    off = [v.data.shape != first.data.shape or not np.allclose(v.affine, first.affine, rtol=0.0, atol=AFFINE_ATOL)
           for v in volumes]
    if not any(off):
        return volumes, off
    if resample_to != "first":
        raise VolumeError("the three volumes must lie on one voxel grid (one shape, affines equal within "
                          f"{AFFINE_ATOL} mm), but they do not: " + "; ".join(v.describe() for v in volumes)
                          + ". Register and resample them onto one grid, or pass --resample-to first to resample "
                          "the second and third onto the first's grid")
    moved = [_resample_onto(v, first) if is_off else v for v, is_off in zip(volumes, off)]
    log.info("--resample-to first: resampled %s onto the grid of %s (cubic spline, 0 outside their field of view)",
             ", ".join(v.describe() for v, is_off in zip(volumes, off) if is_off), first.describe())
    return moved, off


@dataclass(frozen=True)
class SliceGeometry:
    """Where display slices come from: the first input's grid (original shape and affine), its orientation relative
    to RAS+ (``nibabel.orientations.io_orientation``) and the slice axis (``data.builders.volumes.AXES``, a RAS+
    axis)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    axis: str

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for size, (target, _) in zip(self.shape, self.ornt):
            shape[int(target)] = size
        return shape[0], shape[1], shape[2]

    @property
    def plane_axes(self) -> tuple[int, int]:
        """The RAS+ axes along a display slice's columns and rows (the slice axis's two others, in order)."""
        first, second = (a for a in range(3) if a != AXES[self.axis])
        return first, second

    @property
    def slice_hw(self) -> tuple[int, int]:
        """(height, width) of a display slice: rows along the second plane axis, columns along the first."""
        cols, rows = self.plane_axes
        return self.canonical_shape[rows], self.canonical_shape[cols]

    def __len__(self) -> int:
        return self.canonical_shape[AXES[self.axis]]

    def display_slices(self, volume: np.ndarray) -> np.ndarray:
        """(n, H, W) display slices of a volume on this grid (original orientation)."""
        from nibabel.orientations import apply_orientation

        canonical = np.moveaxis(apply_orientation(volume, self.ornt), AXES[self.axis], 0)
        return np.ascontiguousarray(canonical.transpose(0, 2, 1)[:, ::-1])

    def scaled_affine(self, hw: tuple[int, int]) -> np.ndarray:
        """The affine (original orientation) of the grid whose display slices are `hw` (H, W): same field of view,
        in-plane voxels divided by the in-plane factors (module docstring, step 5)."""
        cols, rows = self.plane_axes
        factor = {cols: hw[1] / self.canonical_shape[cols], rows: hw[0] / self.canonical_shape[rows]}
        index = np.eye(4)  # output voxel index -> input voxel index
        for axis, (target, _) in enumerate(self.ornt):
            scale = factor.get(int(target), 1.0)
            index[axis, axis] = 1.0 / scale
            index[axis, 3] = 0.5 / scale - 0.5
        return self.affine @ index

    def volume(self, slices: np.ndarray) -> np.ndarray:
        """Display slices (n, H, W, ...) stacked back into a volume in the first input's original orientation."""
        from nibabel.orientations import apply_orientation, ornt_transform

        canonical = np.moveaxis(slices[:, ::-1].swapaxes(1, 2), 0, AXES[self.axis])
        return np.ascontiguousarray(apply_orientation(canonical, ornt_transform(RAS, self.ornt)))


@dataclass(frozen=True)
class SlicedVolumes:
    """The three windowed volumes as display slices (n, H, W) uint8 each, their windows (lo, hi), the colour map
    of each source (None: grey) and the geometry to put fused slices back."""

    planes: tuple[np.ndarray, np.ndarray, np.ndarray]
    windows: tuple[tuple[float, float], ...]
    colour_maps: tuple[str | None, ...]
    geometry: SliceGeometry

    def __len__(self) -> int:
        return len(self.planes[0])

    def sources(self, index: int) -> list[np.ndarray]:
        """The three (H, W, 3) uint8 RGB sources of slice `index` (grey as R = G = B, or in its colour map)."""
        out = []
        for planes, name in zip(self.planes, self.colour_maps):
            grey = planes[index]
            out.append(colourise(grey, name) if name else np.repeat(grey[..., None], 3, axis=2))
        return out

    def is_empty(self, index: int) -> bool:
        """Whether the three windowed sources of slice `index` are all zero (black in every colour map too)."""
        return not any(planes[index].any() for planes in self.planes)


def slice_volumes(volumes: list[Volume], axis: str, colour_map: str | None = None,
                  colour_source: int = 3) -> SlicedVolumes:
    """Window each volume (on one grid) and cut the three into display slices along `axis`; with `colour_map` the
    source `colour_source` (1..3) is rendered in that map (module docstring, steps 3 and 4)."""
    from nibabel.orientations import io_orientation

    first = volumes[0]
    geometry = SliceGeometry(first.data.shape, first.affine, io_orientation(first.affine), axis)
    planes, windows = [], []
    for volume in volumes:
        windowed, window = window_volume(volume.data, Path(volume.path))
        planes.append(geometry.display_slices(windowed))
        windows.append(window)
    maps = tuple(colour_map if k == colour_source else None for k in (1, 2, 3))
    return SlicedVolumes((planes[0], planes[1], planes[2]), tuple(windows), maps, geometry)


def _header(template: Any, description: str) -> Any:
    """A NIfTI-1 header with the units and sform/qform codes of `template` (mm and scanner when None)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    sform, qform = 1, 1
    if isinstance(template, nib.Nifti1Header):
        header.set_xyzt_units(*template.get_xyzt_units())
        sform = int(template["sform_code"]) or 1
        qform = int(template["qform_code"]) or sform
    else:
        header.set_xyzt_units("mm", "sec")
    header["sform_code"], header["qform_code"] = sform, qform
    header["descrip"] = description.encode("ascii", "replace")[:DESCRIP_BYTES - 1]
    return header


def _image(data: np.ndarray, geometry: SliceGeometry, hw: tuple[int, int], template: Any, description: str) -> Any:
    import nibabel as nib

    header = _header(template, description)
    affine = geometry.scaled_affine(hw)
    img = nib.Nifti1Image(data, affine, header)
    img.set_data_dtype(data.dtype)
    img.set_sform(affine, int(header["sform_code"]))
    img.set_qform(affine, int(header["qform_code"]))
    return img


def fused_nifti(geometry: SliceGeometry, fused: np.ndarray, grey: bool, template: Any, description: str) -> Any:
    """The NIfTI image of fused display slices (n, H, W, 3) uint8: RGB24, or with `grey` uint8 luminance, on the
    scaled grid in the first input's orientation, with `template`'s units and codes and `description`."""
    volume = geometry.volume(fused)
    if grey:
        data = to_grey(volume.reshape(volume.shape[0], -1, 3)).reshape(volume.shape[:3]).astype(np.uint8)
    else:
        data = np.ascontiguousarray(volume).view(RGB24)[..., 0]
    return _image(data, geometry, fused.shape[1:3], template, description)


def spread_nifti(geometry: SliceGeometry, spread: np.ndarray, template: Any, description: str) -> Any:
    """The NIfTI image (float32 grey levels) of per-slice spreads (n, H, W), on the grid of `fused_nifti`."""
    return _image(geometry.volume(spread.astype(np.float32)), geometry, spread.shape[1:3], template, description)


def nifti_bytes(img: Any, path: Path) -> bytes:
    """The bytes of `img` as a single-file NIfTI, gzip-compressed when `path` ends in ``.gz``."""
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if path.name.lower().endswith(".gz") else data


WINDOW_RULE = ("per input volume: lo, hi = the 0.5 and 99.5 percentiles of its non-zero finite voxels; voxel v -> "
               "round(clip((v - lo) / (hi - lo), 0, 1) * 255)")


def beside(out: Path, suffix: str) -> Path:
    """``fused_<suffix>.nii.gz`` beside ``fused.nii.gz`` (the output's own NIfTI extension)."""
    stem = nifti_stem(out)
    return out.with_name(f"{stem}{suffix}{out.name[len(stem):]}")


def sidecar_record(sliced: SlicedVolumes, inputs: list[str], resampled: list[bool], image: Any,
                   size: tuple[int, int], out: Path, grey: bool, empty: tuple[int, ...],
                   run: dict[str, Any]) -> dict[str, Any]:
    """The sidecar JSON of a fused volume: its inputs (file, window, resampled or not, colour map), the slicing, the
    fused in-plane `size` (H, W), the output grid of `image`, and `run` (method, config, sampler, ... as the caller
    describes it)."""
    import nibabel as nib

    geometry = sliced.geometry
    return {
        "written_by": "infer.py (volume mode)",
        "inputs": [{"path": path, "window": [lo, hi], "resampled_to_first": moved, "colour_map": name}
                   for path, (lo, hi), moved, name in zip(inputs, sliced.windows, resampled, sliced.colour_maps)],
        "window_rule": WINDOW_RULE,
        "slice_axis": geometry.axis,
        "slicing": "along the slice axis of the first input's closest canonical (RAS+) orientation; each slice "
                   "transposed and flipped vertically (anterior or superior up) for the model, and put back",
        "slices": len(sliced),
        "empty_slices": list(empty),
        "empty_slices_rule": "indices along the slice axis, in RAS+ order, of the slices whose three windowed sources "
                             "are all zero: not fused, left 0 in the output",
        "in_plane_size_hw": {"input": list(geometry.slice_hw), "fused": list(size)},
        "output": {"path": str(out), "shape": [int(v) for v in image.shape],
                   "voxel_sizes_mm": [round(float(v), 6) for v in _voxel_sizes(image.affine)],
                   "orientation": "".join(nib.aff2axcodes(image.affine)), "affine": image.affine.tolist(),
                   "dtype": "uint8 luminance 0.299 R + 0.587 G + 0.114 B" if grey else "RGB24"},
        **run,
    }
