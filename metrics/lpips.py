"""LPIPS (Zhang et al. 2018, v0.1, AlexNet trunk) from local files only, with the AlexNet file verified by SHA-256.

LPIPS needs two sets of weights: the linear calibration layers, which ship inside the ``lpips`` wheel, and the AlexNet
trunk, torchvision's ``alexnet-owt-7be5be79.pth`` (ImageNet, ``AlexNet_Weights.IMAGENET1K_V1``), which does not.
Nothing is downloaded: the trunk is read from torchvision's cache, :func:`alexnet_weights_path`
(``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` by default; ``TORCH_HOME`` moves it). A file there
whose SHA-256 is not :data:`ALEXNET_SHA256` is an error, so a randomly initialised or truncated network is never
reported as LPIPS. Without the file LPIPS is unavailable and the tables show n/a.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from core.hashing import sha256_file

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
# The file name carries the first 8 hex digits of this digest (torchvision's convention).
ALEXNET_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"


def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights LPIPS needs: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def verify_sha256(path: Path, expected: str) -> None:
    """ValueError naming the file and both digests when the SHA-256 of ``path`` is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path} has SHA-256 {actual}, expected {expected} (torchvision's {ALEXNET_FILE} from "
                         f"{ALEXNET_URL}); replace or remove the file")


class Lpips:
    """LPIPS v0.1 (AlexNet) built from local files only: the AlexNet trunk from ``weights`` (torchvision's
    checkpoint file, not verified here: see :func:`load_lpips`), the linear layers from inside the ``lpips`` wheel."""

    def __init__(self, weights: Path) -> None:
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        self._load_backbone(weights)
        self.model.eval()

    def _load_backbone(self, weights: Path) -> None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise ValueError(f"cannot read the AlexNet weights {weights}: {err}") from err
        mapped = {}
        for name in self.model.net.state_dict():
            _, index, param = name.split(".")
            key = f"features.{index}.{param}"
            if key not in state:
                raise ValueError(f"{weights} is not torchvision's AlexNet checkpoint: it has no {key!r}")
            mapped[name] = state[key]
        self.model.net.load_state_dict(mapped, strict=True)

    @staticmethod
    def _tensor(img: np.ndarray) -> torch.Tensor:
        rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0

    @torch.no_grad()
    def __call__(self, img: np.ndarray, ref: np.ndarray) -> float:
        """LPIPS distance of two (H, W, 3) RGB (or (H, W) grey) uint8 images, values 0..255; lower is closer."""
        if ref.shape != img.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {img.shape} vs {ref.shape}")
        return float(self.model(self._tensor(ref), self._tensor(img)).item())


def load_lpips(expected_sha256: str = ALEXNET_SHA256) -> Lpips | None:
    """The LPIPS scorer from :func:`alexnet_weights_path`, or None when no file is there.

    Raises ValueError when the file is there but its SHA-256 is not ``expected_sha256``.
    """
    path = alexnet_weights_path()
    if not path.is_file():
        return None
    verify_sha256(path, expected_sha256)
    return Lpips(path)


def missing_weights_note() -> str:
    """What to do when :func:`load_lpips` returns None: the file, where it goes and its digest."""
    path = alexnet_weights_path()
    return (f"LPIPS: n/a. Its AlexNet trunk weights are not at {path}; place torchvision's {ALEXNET_FILE} "
            f"({ALEXNET_URL}, SHA-256 {ALEXNET_SHA256}) there (the torch hub cache; TORCH_HOME moves it). "
            "Nothing is downloaded.")
