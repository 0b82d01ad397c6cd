"""The single resampling routine of the project (LR/SR pair generation and any image resize).

Rule, identical to SR3's ``data/prepare_data.py`` (which calls torchvision's ``resize`` on PIL images,
i.e. ``PIL.Image.resize``):

* the image is resampled **as an 8-bit PIL image** (mode ``RGB`` or ``L``), never as float;
* kernel: PIL ``Image.Resampling.BICUBIC``, the Keys cubic convolution with ``a = -0.5`` as PIL implements it;
* when downsampling PIL widens the kernel support by the scale factor, so the reduction is antialiased;
* each output value is rounded and clipped to ``0..255`` by PIL itself.

``degrade(hr, l)`` returns ``(lr, sr)``: ``lr`` is ``hr`` bicubically reduced to ``l x l`` and ``sr`` is ``lr``
bicubically enlarged back to the size of ``hr`` -- the ``*_lr_{l}`` and ``*_sr_{l}_{r}`` images of the
official TFS-Diff / SR3 data layout.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["resize_bicubic", "degrade"]


def resize_bicubic(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize an 8-bit PIL image with PIL bicubic (antialiased when shrinking).

    Args:
        img: PIL image in mode ``RGB`` or ``L`` (values 0..255).
        size: output side for a square result, or ``(width, height)`` as PIL orders it.

    Returns:
        A new PIL image of the requested size and the same mode.
    """
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"resize_bicubic expects an 8-bit 'RGB' or 'L' image, got mode {img.mode!r}")
    width, height = (size, size) if isinstance(size, int) else size
    if width <= 0 or height <= 0:
        raise ValueError(f"resize_bicubic: output size must be positive, got {size!r}")
    return img.resize((int(width), int(height)), resample=Image.Resampling.BICUBIC)


def degrade(hr: Image.Image, l_resolution: int) -> tuple[Image.Image, Image.Image]:
    """Make the (LR, SR) pair of a square HR image.

    Args:
        hr: square 8-bit PIL image of side ``r``.
        l_resolution: side ``l`` of the low-resolution image (``0 < l <= r``).

    Returns:
        ``(lr, sr)``: ``lr`` of size ``l x l`` (bicubic down), ``sr`` of size ``r x r`` (bicubic up of ``lr``).
    """
    if hr.width != hr.height:
        raise ValueError(f"degrade expects a square HR image, got {hr.width}x{hr.height}")
    if not 0 < l_resolution <= hr.width:
        raise ValueError(f"degrade: l_resolution must be in 1..{hr.width}, got {l_resolution}")
    lr = resize_bicubic(hr, l_resolution)
    sr = resize_bicubic(lr, hr.width)
    return lr, sr
