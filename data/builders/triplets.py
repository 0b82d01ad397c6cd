"""Derive the missing third image of a dual-modal pair, and augment a tri-modal triplet (rules below, all seeded).

A Harvard tri-modal case is ordered (anatomical A, MR-T2, functional). Every rule works on float images in 0..1
(grey = uint8 / 255) of side ``S`` (lengths below are fractions of ``S`` or of the head radius ``R``); every random
number comes from the ``numpy.random.Generator`` passed in, so one seed gives the same bytes. ``U(a, b)`` is uniform.

Masks and tissue levels of a grey MR image ``v``:

* **head**: ``gaussian(v, S/128) > 0.06``, largest connected part, holes filled. ``R = sqrt(area / pi)``;
  ``depth`` = Euclidean distance to the outside of the head.
* **brain**: ``depth > b`` with ``b = U(0.10, 0.14) R`` (scalp and skull lie within ``b`` of the head's edge);
  ``soft_brain`` = the brain mask blurred by ``S/128``.
* **levels**: the 20th, 55th and 97th percentiles ``lo, mid, hi`` of ``v`` in the brain; ``n = clip((v - lo) /
  (hi - lo), 0, 1)``; ``fluid = smoothstep((v - mid) / (hi - mid))`` (T2: CSF); ``tissue = smoothstep(v / lo)``
  (0 for bone and air).

Second anatomical contrast from an MR-T2 (slot 1; one of three, each with probability 1/3):

* **CT-like**: background 0; scalp (``depth < a``, ``a = U(0.03, 0.05) R``) ``U(0.25, 0.35)``; skull
  (``a <= depth <= b``) ``U(0.88, 1.0)``; brain ``c - U(0.12, 0.2) fluid + 0.05 gm``, ``c = U(0.30, 0.40)``
  (CSF darker than tissue, grey matter ``gm`` slightly brighter), blurred by ``S/256``; noise ``N(0, 0.012)``.
* **T1-like** (monotone decreasing in the brain): brain ``tissue (U(0.12, 0.2) + U(0.55, 0.7) (1 - n)^g)``,
  ``g = U(0.8, 1.25)`` (white matter bright, CSF dark), outside the brain ``U(0.7, 1.0) v``; blended by ``soft_brain``.
* **PD-like** (non-monotone): ``v (1 - k fluid soft_brain)`` with ``k = 1 - U(0.8, 0.95) mid / hi`` (brain CSF
  pulled down to about the grey-matter level, so grey matter is the brightest brain tissue), divided by its 99th
  percentile in the head.

MR-T2-like from an MR-T1 (slot 2 of PET-MRI pairs, whose MRI is T1-weighted): brain ``U(0.15, 0.25) +
U(0.6, 0.75) (1 - n)^g`` (CSF and grey matter bright, white matter dark), outside the brain ``U(0.6, 0.9) v``;
blended by ``soft_brain``.

Functional map from an MR-T2 (slot 3 of CT-MRI pairs): grey-matter likeness ``gm = exp(-((v - mid) / w)^2 / 2)``,
``w = 0.25 (hi - lo)``, white-matter likeness ``wm`` likewise around ``lo``; ``P = (gm + 0.3 wm) (1 - fluid)`` in
the brain, times a smooth regional field ``1 + 0.25 z`` (``z``: white noise blurred by ``S/10``, scaled to unit
std), times 1-3 lesions ``1 + A exp(-d^2 / (2 s^2))`` (hypo ``A = -U(0.5, 0.9)`` or hyper ``U(0.2, 0.5)``, equal
odds; centre a brain pixel; ``s = U(0.02, 0.05) S``); blurred by ``U(0.012, 0.025) S``; scaled so its brain
99.5th percentile is ``U(0.65, 0.8)`` (measured on the real maps: 0.73 PET, 0.81 SPECT-Tc); a colour map is drawn
uniformly from ``data.colour_maps.COLOUR_MAPS``; plus a scalp halo ``h gaussian(head, S/64)`` as the atlas shows it
(``h = U(0.08, 0.2)`` for SPECT-Tc: a teal rim; ``U(0.0, 0.05)`` for PET: nearly black); clipped to 0..1, rendered.

Augmentation of a triplet (training copies only), in this order:

1. **Geometry**, one transform for all three images: flip left-right with probability 1/2, rotation ``U(-10, 10)``
   degrees and scale ``U(0.9, 1.1)`` about the centre, shift ``U(-0.03, 0.03) S`` per axis; ``cv2.warpAffine``,
   bilinear, black border.
2. **Grey images**, each on its own: gamma ``v^U(0.75, 1.35)``; contrast ``m + U(0.85, 1.2) (v - m)`` with ``m`` the
   mean over the head; noise ``N(0, U(0, 0.015))`` inside the head; clipped to 0..1.
3. **Functional image**: with probability 1/2 it is kept; otherwise its activity is read back through its own map
   (``data.colour_maps.closest_map``, only when the mean colour distance is at most 8) and re-rendered, with gamma
   ``U(0.8, 1.25)``, in a map drawn uniformly from the maps.

Images are rounded to uint8 (``numpy.rint``) at the end of each rule.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from data.colour_maps import COLOUR_MAPS, activity_from_colours, closest_map, render_activity

__all__ = ["TissueMasks", "tissue_masks", "DERIVED_ANATOMY", "derive_anatomy", "t2_like_from_t1",
           "derive_functional", "augment_triplet", "to_grey"]

HEAD_THRESHOLD = 0.06
MAX_MAP_DISTANCE = 8.0
MAPS = tuple(sorted(COLOUR_MAPS))
HALO_LEVELS = {"harvard_pet": (0.0, 0.05), "harvard_spect_tc": (0.08, 0.2)}


class TissueMasks:
    """Head/brain masks and tissue levels of one (S, S) grey image ``v`` in 0..1 (rules in the module docstring)."""

    def __init__(self, v: np.ndarray, rng: np.random.Generator) -> None:
        side = v.shape[0]
        head = ndimage.gaussian_filter(v, side / 128) > HEAD_THRESHOLD
        labels, count = ndimage.label(head)
        if count:
            sizes = ndimage.sum_labels(head, labels, index=np.arange(1, count + 1))
            head = labels == 1 + int(np.argmax(sizes))
        self.head = ndimage.binary_fill_holes(head)
        self.radius = float(np.sqrt(max(self.head.sum(), 1.0) / np.pi))
        self.depth = ndimage.distance_transform_edt(self.head).astype(np.float32)
        self.skull_depth = rng.uniform(0.10, 0.14) * self.radius
        self.brain = self.depth > self.skull_depth
        if self.brain.sum() < 16:
            self.brain = self.head
        self.soft_brain = ndimage.gaussian_filter(self.brain.astype(np.float32), side / 128)
        inside = v[self.brain] if self.brain.any() else v.ravel()
        self.lo, self.mid, self.hi = (float(q) for q in np.percentile(inside, [20, 55, 97]))
        self.hi = max(self.hi, self.mid + 1e-3)
        self.lo = min(self.lo, self.mid - 1e-3)
        self.n = np.clip((v - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        self.fluid = _smoothstep((v - self.mid) / (self.hi - self.mid))
        self.tissue = _smoothstep(v / max(self.lo, 1e-3))

    def likeness(self, v: np.ndarray, centre: float) -> np.ndarray:
        """Gaussian likeness ``exp(-((v - centre) / w)^2 / 2)``, ``w = 0.25 (hi - lo)``."""
        width = 0.25 * (self.hi - self.lo)
        return np.exp(-0.5 * ((v - centre) / width) ** 2)


def tissue_masks(v: np.ndarray, rng: np.random.Generator) -> TissueMasks:
    """Masks and tissue levels of the (S, S) grey image ``v`` in 0..1 (draws the skull depth from ``rng``)."""
    return TissueMasks(v, rng)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """``3 t^2 - 2 t^3`` of ``t = clip(x, 0, 1)``."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> (H, W) float32 in 0..1 (BT.601 luma for RGB; exact for R = G = B)."""
    if image.ndim == 2:
        return image.astype(np.float32) / 255.0
    luma = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    return (luma / 255.0).astype(np.float32)


def _to_uint8(v: np.ndarray) -> np.ndarray:
    """(H, W) float in 0..1 -> (H, W) uint8 (clipped, rounded half to even)."""
    return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def _ct_like(v: np.ndarray, masks: TissueMasks, rng: np.random.Generator) -> np.ndarray:
    """CT-like image from an MR-T2: bright skull rim, dark CSF, uniform grey soft tissue."""
    scalp_depth = rng.uniform(0.03, 0.05) * masks.radius
    scalp_level, skull_level = rng.uniform(0.25, 0.35), rng.uniform(0.88, 1.0)
    level, csf_drop = rng.uniform(0.30, 0.40), rng.uniform(0.12, 0.2)
    brain = level - csf_drop * masks.fluid + 0.05 * masks.likeness(v, masks.mid)
    brain = ndimage.gaussian_filter(brain * masks.tissue, v.shape[0] / 256)
    ct = np.where(masks.depth < scalp_depth, scalp_level, skull_level).astype(np.float32)
    ct = np.where(masks.brain, brain, ct) * masks.head
    return ct + rng.normal(0.0, 0.012, v.shape) * masks.head


def _t1_like(v: np.ndarray, masks: TissueMasks, rng: np.random.Generator) -> np.ndarray:
    """T1-like image from an MR-T2: monotone decreasing remap in the brain (white matter bright, CSF dark)."""
    base, span, gamma = rng.uniform(0.12, 0.2), rng.uniform(0.55, 0.7), rng.uniform(0.8, 1.25)
    brain = masks.tissue * (base + span * (1.0 - masks.n) ** gamma)
    outside = rng.uniform(0.7, 1.0) * v
    return masks.soft_brain * brain + (1.0 - masks.soft_brain) * outside


def _pd_like(v: np.ndarray, masks: TissueMasks, rng: np.random.Generator) -> np.ndarray:
    """PD-like image from an MR-T2: non-monotone remap that pulls CSF down to about the grey-matter level."""
    k = 1.0 - rng.uniform(0.8, 0.95) * masks.mid / masks.hi
    pd = v * (1.0 - k * masks.fluid * masks.soft_brain)
    top = np.percentile(pd[masks.head], 99) if masks.head.any() else pd.max()
    return pd / max(float(top), 1e-3)


DERIVED_ANATOMY: dict[str, Callable[[np.ndarray, TissueMasks, np.random.Generator], np.ndarray]] = {
    "CT-like": _ct_like,
    "MR-T1-like": _t1_like,
    "MR-PD-like": _pd_like,
}


def derive_anatomy(t2: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """(S, S) uint8 MR-T2 -> (name, (S, S) uint8 second anatomical contrast), kind drawn uniformly."""
    v = to_grey(t2)
    masks = tissue_masks(v, rng)
    name = sorted(DERIVED_ANATOMY)[int(rng.integers(len(DERIVED_ANATOMY)))]
    return name, _to_uint8(DERIVED_ANATOMY[name](v, masks, rng))


def t2_like_from_t1(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S, S) uint8 MR-T1 -> (S, S) uint8 MR-T2-like (CSF and grey matter bright, white matter dark)."""
    v = to_grey(t1)
    masks = tissue_masks(v, rng)
    base, span, gamma = rng.uniform(0.15, 0.25), rng.uniform(0.6, 0.75), rng.uniform(0.8, 1.25)
    brain = base + span * (1.0 - masks.n) ** gamma
    outside = rng.uniform(0.6, 0.9) * v
    return _to_uint8(masks.soft_brain * brain + (1.0 - masks.soft_brain) * outside)


def _lesions(brain: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S) multiplicative factor with 1-3 Gaussian hypo/hyper lesions centred on brain pixels."""
    rows, cols = np.nonzero(brain)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    factor = np.ones((side, side), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = int(rng.integers(rows.size))
        sigma = rng.uniform(0.02, 0.05) * side
        amplitude = -rng.uniform(0.5, 0.9) if rng.random() < 0.5 else rng.uniform(0.2, 0.5)
        factor *= 1.0 + amplitude * np.exp(-((yy - rows[centre]) ** 2 + (xx - cols[centre]) ** 2) / (2 * sigma**2))
    return factor


def derive_functional(t2: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """(S, S) uint8 MR-T2 -> (colour map name, (S, S, 3) uint8 perfusion-like functional image)."""
    v = to_grey(t2)
    side = v.shape[0]
    masks = tissue_masks(v, rng)
    perfusion = (masks.likeness(v, masks.mid) + 0.3 * masks.likeness(v, masks.lo)) * (1.0 - masks.fluid)
    field = ndimage.gaussian_filter(rng.standard_normal(v.shape).astype(np.float32), side / 10)
    perfusion = perfusion * masks.brain * np.clip(1.0 + 0.25 * field / max(float(field.std()), 1e-6), 0.0, None)
    perfusion = perfusion * _lesions(masks.brain, side, rng)
    perfusion = ndimage.gaussian_filter(perfusion, rng.uniform(0.012, 0.025) * side)
    peak = np.percentile(perfusion[masks.brain], 99.5)
    perfusion = perfusion * (rng.uniform(0.65, 0.8) / max(float(peak), 1e-6))
    name = MAPS[int(rng.integers(len(MAPS)))]
    halo = rng.uniform(*HALO_LEVELS[name]) * ndimage.gaussian_filter(masks.head.astype(np.float32), side / 64)
    return name, render_activity(np.clip(perfusion + halo, 0.0, 1.0), name)


def _warp(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One random flip/rotation/scale/shift for all (S, S, 3) uint8 images (bilinear, black border)."""
    side = images[0].shape[0]
    flip = rng.random() < 0.5
    angle, scale = rng.uniform(-10.0, 10.0), rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.03, 0.03, size=2) * side
    matrix = cv2.getRotationMatrix2D(((side - 1) / 2.0, (side - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    out = []
    for image in images:
        source = np.ascontiguousarray(image[:, ::-1]) if flip else image
        out.append(cv2.warpAffine(source, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)))
    return out


def _grey_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and in-head noise for one (S, S, 3) grey uint8 image -> (S, S, 3) uint8 grey."""
    v = to_grey(image) ** rng.uniform(0.75, 1.35)
    head = ndimage.gaussian_filter(v, v.shape[0] / 128) > HEAD_THRESHOLD
    soft_head = ndimage.gaussian_filter(head.astype(np.float32), v.shape[0] / 128)
    mean = float(v[head].mean()) if head.any() else float(v.mean())
    adjusted = mean + rng.uniform(0.85, 1.2) * (v - mean) + rng.normal(0.0, rng.uniform(0.0, 0.015), v.shape)
    return np.repeat(_to_uint8(v + soft_head * (adjusted - v))[..., None], 3, axis=2)


def _recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep a functional (S, S, 3) uint8 image (probability 1/2) or re-render its activity in a drawn map."""
    if rng.random() < 0.5:
        return image
    gamma, name = rng.uniform(0.8, 1.25), MAPS[int(rng.integers(len(MAPS)))]
    source_map = closest_map(image, MAX_MAP_DISTANCE)
    if source_map is None:
        return image
    return render_activity(activity_from_colours(image, source_map) ** gamma, name)


def augment_triplet(sources: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Augment three (S, S, 3) uint8 sources (grey, grey, functional) -> three (S, S, 3) uint8 images."""
    warped = _warp(sources, rng)
    return [_grey_intensity(warped[0], rng), _grey_intensity(warped[1], rng), _recolour(warped[2], rng)]
