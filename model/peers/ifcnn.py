"""IFCNN (Zhang, Liu, Sun, Yan, Zhao, Zhang, "IFCNN: A general image fusion framework based on convolutional
neural network", Information Fusion 54 (2020) 99-118), written from the paper and the authors' released code
(github uzeful/IFCNN, commit 8fe59c2), with the authors' IFCNN-MAX weights (`Code/snapshots/IFCNN-MAX.pth`).

Network (weights shared by every input): replicate padding of 3 and a 7x7 convolution 3 -> 64 without bias (the
first layer of ResNet-101, stride 1, and no normalisation or activation after it), then a block of replicate
padding 1, 3x3 convolution 64 -> 64 without bias, BatchNorm (running statistics) and ReLU. The feature maps of all
inputs are fused by their element-wise maximum; one more such block and a 1x1 convolution 64 -> 3 with bias
reconstruct the image. There is no output activation, so the result leaves [0, 1] (about [-0.4, 1.3]).

The authors' medical-image settings are used: every source is read as RGB (a grey image as R = G = B, the
pseudo-colour functional image as its RGB), scaled to [0, 1] with no normalisation (mean 0, std 1), and all the
sources go through the network at once (MAX over any number of inputs; the order does not matter).

Outputs:

- `fuse_raw`: the network output, float32 (H, W, 3) RGB, unclamped: what the golden `<case>_fused.npy` holds.
- `fuse`: the RGB output as the authors' code turns it into 8 bits (clamp to [0, 1], times 255, truncation to
  uint8): the golden `<case>_fused_rgb.png`. IFCNN outputs colour itself, so no colour recomposition is done.
- `fuse_grey`: what the authors' medical path saves (`is_gray`): the same 8-bit RGB image converted to grey with
  OpenCV's fixed-point BT.601 weights (0.299, 0.587, 0.114), as (H, W) uint8: the golden `<case>_fused.png`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import FUSION_METHODS
from model.peers import PeerWeights, as_rgb, weights_file

WEIGHTS = PeerWeights(method="IFCNN", relative_path="Code/snapshots/IFCNN-MAX.pth", size_bytes=337094,
                      sha256="6022b44c88a2f0367ba9b08fcdf0d663745d9a966fca0ee1f41867797b6ff53f")


class _PaddedConvBNReLU(nn.Module):
    """Replicate padding of 1, 3x3 convolution without bias, BatchNorm, ReLU (state-dict keys `conv`, `bn`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))))


class IFCNNMax(nn.Module):
    """IFCNN with element-wise MAX fusion; `forward(*images)` takes any number of (B, 3, H, W) images in [0, 1]
    and returns the fused (B, 3, H, W) image. State-dict keys and shapes are those of the authors' checkpoint."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, features, kernel_size=7, bias=False)
        self.conv2 = _PaddedConvBNReLU(features)
        self.conv3 = _PaddedConvBNReLU(features)
        self.conv4 = nn.Conv2d(features, 3, kernel_size=1, bias=True)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(F.pad(image, (3, 3, 3, 3), mode="replicate")))

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        if not images:
            raise ValueError("IFCNN needs at least one input image")
        fused = self.encode(images[0])
        for image in images[1:]:
            fused = torch.maximum(fused, self.encode(image))
        return self.conv4(self.conv3(fused))


def rgb_to_grey_cv2(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of a uint8 RGB image by OpenCV's fixed-point `cvtColor(RGB2GRAY)`: weights 9798, 19235,
    3735 over 2^15, rounded (bit-exact with the OpenCV that made the golden files; the older 14-bit weights differ
    by one level on about 0.1 % of pixels)."""
    x = rgb.astype(np.int64)
    return ((x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15).astype(np.uint8)


def to_8bit(raw: np.ndarray) -> np.ndarray:
    """The authors' 8-bit image of a raw output: clamp to [0, 1], times 255 in float32, truncation to uint8."""
    return (np.clip(np.asarray(raw, dtype=np.float32), 0, 1) * np.float32(255)).astype(np.uint8)



class IFCNNFusion:
    """The loaded method: `fuse_raw`, `fuse` and `fuse_grey` over registered uint8 sources of one size."""

    def __init__(self, network: IFCNNMax, device: torch.device) -> None:
        self.network = network.eval()
        self.device = device

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(np.ascontiguousarray(as_rgb(image))).to(self.device)
        return (rgb.permute(2, 0, 1).float() / 255.0).unsqueeze(0)

    def fuse_raw(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """Network output, float32 (H, W, 3) RGB, unclamped (about [-0.4, 1.3] on the [0, 1] scale)."""
        shapes = {np.asarray(s).shape[:2] for s in sources}
        if len(shapes) != 1:
            raise ValueError(f"sources must share one size, got {sorted(shapes)}")
        with torch.no_grad():
            fused = self.network(*(self._tensor(s) for s in sources))[0]
        return fused.permute(1, 2, 0).cpu().numpy().astype(np.float32)

    def fuse(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) RGB: the output clamped to [0, 1], times 255 and truncated, as the authors' code does."""
        return to_8bit(self.fuse_raw(sources))

    def fuse_grey(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W): the authors' saved medical result, `fuse` through OpenCV's RGB2GRAY (`rgb_to_grey_cv2`)."""
        return rgb_to_grey_cv2(self.fuse(sources))


def load_network(path: str | Path, device: torch.device | str = "cpu") -> IFCNNMax:
    """IFCNN-MAX with the plain state dict at `path` (strict keys and shapes), in eval mode on `device`."""
    network = IFCNNMax()
    network.load_state_dict(torch.load(path, map_location=device, weights_only=True), strict=True)
    return network.to(device).eval()


def load(peer_dir: str | Path | None, device: torch.device | str = "cpu") -> IFCNNFusion:
    """IFCNN-MAX with the authors' checked weights `Code/snapshots/IFCNN-MAX.pth` under `peer_dir`."""
    device = torch.device(device)
    return IFCNNFusion(load_network(weights_file(peer_dir, WEIGHTS), device), device)


FUSION_METHODS.register("ifcnn", needs_weights=True)(load)
