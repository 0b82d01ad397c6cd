"""MATR: multiscale adaptive transformer for medical image fusion (Tang, He, Liu, Duan, IEEE TIP 31 (2022)
5134-5149), re-implemented from the paper and the authors' released code (github tthinking/MATR @b427644d) and
pinned to golden outputs of that code. Research reference use only (the repository states no licence).

Network (13,422 parameters, `models/model_10.pth`): two grey inputs in [0, 1] stacked as channels (the
functional/other image first, the MRI second) -> a 3x3 "adaptive" convolution 2->16 + BatchNorm + ReLU (`convInput`)
-> one 3x3 adaptive convolution block 16->16 (`conv`) applied 1, 2 and 3 times for three scales -> one shared stack
of three transformer blocks (`basicLayer`) per scale -> `conv` once more per scale -> sum of the three scales -> 1x1
convolution 16->1 without bias -> tanh. BatchNorm runs in eval mode.

- Adaptive convolution (the authors' layer): a 3x3 kernel (no bias, zero padding 1) modulated per image by a sigmoid
  gate built from the input's 3x3 adaptive average pool: a shared spatial projection 9->5 (`ce`), two BatchNorm1d +
  ReLU branches, a channel mixing `ci` and two projections 5->9 (`gd` spatial per input channel, `gd2` per output
  channel). The authors apply the gated kernel with unfold + matrix product; this module uses the same kernel in a
  grouped `conv2d` (one group per image), the same sums in another order (differences ~3e-7) and faster.
- Transformer blocks: window size 1, so each window holds one token; softmax over one key is exactly 1 and the
  attention is `proj(v(LayerNorm(x)))` (the query, key and relative-position bias have no effect and are not
  computed here); then an MLP 16->64->16 with exact GELU; pre-LayerNorm with residuals.

Quirks of the released code, reproduced by default:

- The transformer reads the NCHW feature map with a raw reshape (`view(B, H, W, C)`) where a permute to NHWC was
  meant, and writes it back the same way, so each "token" is 16 consecutive memory elements (16 neighbouring pixels
  of one channel, mostly), not the 16 channels of one pixel. `load(..., permute_fix=True)` gives the corrected
  variant (a real NHWC permute), which is not what the authors' weights were run with.
- The authors' script saves the grey result as `(out * 255).astype(uint8)`: truncation, no clamp. In series the next
  step reads that 8-bit file back, so this truncation sits between the two steps too.
- The authors' code only runs on square images (its convolution reshapes to sqrt(H*W)); this one accepts any size.

Tri-modal use (dual-modal method in series, as the golden runs did): step 1 fuses the anatomical image (network
input 1) with the MR-T2 (input 2) and truncates to 8 bits; step 2 fuses the functional image (input 1) with that
8-bit step-1 image (input 2). Grey inputs are PIL's `convert('L')` of the RGB sources,
L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (exactly R for a grey image), divided by 255 (float32).

Colour (`fuse`): the network sees grey only; the authors' README points to their DPCN-Fusion for colour, i.e. YUV
recomposition: Y = the truncated 8-bit fused grey, U and V of the functional RGB image by
rgb->yuv [[0.299, 0.587, 0.114], [-0.147, -0.289, 0.436], [0.615, -0.515, -0.100]], back by
yuv->rgb [[1, 0, 1.1398], [1, -0.3946, -0.5805], [1, 2.0320, -0.0005]], rounded and clipped to [0, 255]. This
reproduces the colour results that the authors ship to within 1 grey level.

`fuse_raw` returns the step-2 tanh output, float32 (H, W), observed range about [0, 0.9].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import FUSION_METHODS
from model.peers import PeerWeights, check_sources, weights_file

WEIGHTS = PeerWeights(method="MATR", relative_path="models/model_10.pth", size_bytes=87176,
                      sha256="523f6be0ef0330a84c473a7ad2e037a7eb1a98584021c4772dfd317c1c0ddaab")

RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.147, -0.289, 0.436], [0.615, -0.515, -0.100]])
YUV_TO_RGB = np.array([[1.0, 0.0, 1.1398], [1.0, -0.3946, -0.5805], [1.0, 2.0320, -0.0005]])


def pil_grey(rgb: np.ndarray) -> np.ndarray:
    """PIL's `Image.convert('L')` of a uint8 RGB (H, W, 3) array (ITU-R 601-2 luma in 16-bit fixed point);
    a 2-D array is taken as already grey."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8, copy=False)
    c = rgb.astype(np.int64)
    return ((19595 * c[..., 0] + 38470 * c[..., 1] + 7471 * c[..., 2] + 32768) >> 16).astype(np.uint8)


def truncate_to_u8(x: np.ndarray) -> np.ndarray:
    """`(x * 255).astype(uint8)` of a float32 array as the authors' script does it: the product in float32, then
    truncation toward zero; out-of-range values wrap modulo 256 as numpy's cast does on x86 (tanh keeps the product
    within (-255, 255), and the observed outputs are positive)."""
    scaled = np.trunc(x.astype(np.float32) * np.float32(255)).astype(np.int64)
    return (scaled & 0xFF).astype(np.uint8)


def yuv_colour(grey_u8: np.ndarray, functional_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DPCN-Fusion colour recomposition: (RGB float64 before rounding, uint8 RGB) with Y = `grey_u8` and U, V of
    `functional_rgb`."""
    yuv = functional_rgb.astype(np.float64) @ RGB_TO_YUV.T
    yuv[..., 0] = grey_u8.astype(np.float64)
    rgb = yuv @ YUV_TO_RGB.T
    return rgb, np.clip(np.round(rgb), 0, 255).astype(np.uint8)


class AdaptiveConv3x3(nn.Module):
    """The authors' gated 3x3 convolution (no bias, zero padding 1, stride 1). Parameter names and shapes follow
    their checkpoint: `weight` (oc, ic, 3, 3), `ce` (5, 9), `ce_bn` and `ci_bn2` (ic), `ci` (oc / (ic / g), g) with
    g = 16 when ic >= 16 else ic, `ci_bn` (oc), `gd` and `gd2` (9, 5)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.taps = 9
        latent = self.taps // 2 + 1
        self.group = 16 if in_channels >= 16 else in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.ce = nn.Linear(self.taps, latent, bias=False)
        self.ce_bn = nn.BatchNorm1d(in_channels)
        self.ci_bn2 = nn.BatchNorm1d(in_channels)
        self.ci = nn.Linear(self.group, out_channels // (in_channels // self.group), bias=False)
        self.ci_bn = nn.BatchNorm1d(out_channels)
        self.gd = nn.Linear(latent, self.taps, bias=False)
        self.gd2 = nn.Linear(latent, self.taps, bias=False)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def gated_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image kernel (B, oc, ic * 9): the weight times the sigmoid gate computed from `x`."""
        b, c = x.shape[:2]
        pooled = F.adaptive_avg_pool2d(x, 3).reshape(b, c, self.taps)
        latent = self.ce(pooled)  # (B, ic, 5)
        spatial = self.gd(F.relu(self.ce_bn(latent)))  # (B, ic, 9)
        n_groups = c // self.group
        mixed = F.relu(self.ci_bn2(latent)).reshape(b, n_groups, self.group, -1).transpose(2, 3)
        per_out = self.ci(mixed).transpose(2, 3).reshape(b, self.out_channels, -1)  # (B, oc, 5)
        per_out = self.gd2(F.relu(self.ci_bn(per_out)))  # (B, oc, 9)
        gate = torch.sigmoid(spatial.reshape(b, 1, c, 3, 3) + per_out.reshape(b, self.out_channels, 1, 3, 3))
        return (gate * self.weight.unsqueeze(0)).reshape(b, self.out_channels, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kernel = self.gated_kernel(x).reshape(b * self.out_channels, c, 3, 3)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernel, padding=1, groups=b)
        return out.reshape(b, self.out_channels, h, w)


class ConvBlock(nn.Module):
    """Adaptive 3x3 convolution, BatchNorm2d, ReLU (the authors' `Basic3x3`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = AdaptiveConv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class OutputHead(nn.Module):
    """1x1 convolution without bias, then tanh (the authors' `Basic1x1`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv1(x))


class TokenAttention(nn.Module):
    """Window attention with one token per window: softmax over a single key is 1, so the output is
    `proj(v)`; `qkv`, `proj` and the (ineffective) relative-position table keep the checkpoint's names."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.relative_position_bias_table = nn.Parameter(torch.zeros(1, num_heads))
        self.register_buffer("relative_position_index", torch.zeros(1, 1, dtype=torch.int64))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        value = F.linear(tokens, self.qkv.weight[2 * self.dim:], self.qkv.bias[2 * self.dim:])
        return self.proj(value)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block on tokens (N, dim): x + attn(LN1 x), then + MLP(LN2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class TransformerStack(nn.Module):
    """The shared stack of transformer blocks (the authors' `BasicLayer`), on an NCHW map. With `permute_fix`
    False (the released behaviour) the tokens are consecutive groups of C memory elements of the NCHW tensor."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_hidden: int, permute_fix: bool) -> None:
        super().__init__()
        self.permute_fix = permute_fix
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_hidden) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(-1, c) if self.permute_fix else x.contiguous().view(-1, c)
        for block in self.blocks:
            tokens = block(tokens)
        if self.permute_fix:
            return tokens.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return tokens.view(b, c, h, w)


class UnusedPatchNorm(nn.Module):
    """Holds the checkpoint's `patch_embed.norm` (LayerNorm(96)); the authors' forward never uses it."""

    def __init__(self, dim: int = 96) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class MATRNet(nn.Module):
    """The MATR network; state-dict keys and shapes match `models/model_10.pth`. Input (B, 2, H, W) in [0, 1]
    (functional/other image, MRI), output (B, 1, H, W) tanh."""

    def __init__(self, in_channels: int = 2, width: int = 16, depth: int = 3, num_heads: int = 8,
                 mlp_ratio: int = 4, permute_fix: bool = False) -> None:
        super().__init__()
        self.convInput = ConvBlock(in_channels, width)
        self.conv = ConvBlock(width, width)
        self.convolutional_out = OutputHead(width, 1)
        self.patch_embed = UnusedPatchNorm()
        self.basicLayer = TransformerStack(width, depth, num_heads, mlp_ratio * width, permute_fix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The authors recompute conv(convInput), conv(conv(convInput)) for each scale; the results are identical, so
        # they are computed once here, and the three scales then go through the transformer and the last shared
        # convolution as one batch (every step is per image, so batching changes nothing).
        b = x.shape[0]
        feature = self.convInput(x)
        scales = []
        for _ in range(3):
            feature = self.conv(feature)
            scales.append(feature)
        out = self.conv(self.basicLayer(torch.cat(scales, 0)))
        first, second, third = out[:b], out[b:2 * b], out[2 * b:]
        return self.convolutional_out(first + second + third)


class MATR:
    """MATR loaded with the authors' weights; `fuse`, `fuse_raw`, and the in-series steps (`series`)."""

    name = "MATR"

    def __init__(self, net: MATRNet, device: torch.device) -> None:
        self.net, self.device = net, device

    @torch.no_grad()
    def fuse_pair(self, first_grey: np.ndarray, mri_grey: np.ndarray) -> np.ndarray:
        """The authors' dual-modal fusion of two uint8 grey images (H, W) (functional/other first, MRI second):
        the raw tanh output, float32 (H, W)."""
        pair = np.stack([first_grey, mri_grey]).astype(np.float32) / np.float32(255)
        out = self.net(torch.from_numpy(pair).unsqueeze(0).to(self.device))
        return out[0, 0].float().cpu().numpy()

    def series(self, sources: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The tri-modal run in series, with its intermediates: `step1_anat` (raw) and `step1_anat_u8` (the 8-bit
        image step 2 reads), `fused` (raw step-2 output), `fused_grey` (its truncated 8 bits), `fused_rgb_float` and
        `fused_rgb` (colour recomposition before and after rounding)."""
        anatomical, mri, functional = check_sources(sources)
        step1 = self.fuse_pair(pil_grey(anatomical), pil_grey(mri))
        step1_u8 = truncate_to_u8(step1)
        fused = self.fuse_pair(pil_grey(functional), step1_u8)
        grey = truncate_to_u8(fused)
        rgb_float, rgb = yuv_colour(grey, functional)
        return dict(step1_anat=step1, step1_anat_u8=step1_u8, fused=fused, fused_grey=grey,
                    fused_rgb_float=rgb_float, fused_rgb=rgb)

    def fuse_raw(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """Step-2 raw tanh output, float32 (H, W)."""
        return self.series(sources)["fused"]

    def fuse(self, sources: Sequence[np.ndarray]) -> np.ndarray:
        """The fused colour image, uint8 RGB (H, W, 3) (fused grey as Y, U and V of the functional image)."""
        return self.series(sources)["fused_rgb"]



def load_state_dict(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The authors' checkpoint, a plain state dict of tensors (read with `weights_only=True`)."""
    return torch.load(path, map_location=device, weights_only=True)


def load(peer_dir: str | Path | None, device: torch.device | str = "cpu", permute_fix: bool = False) -> MATR:
    """MATR with the authors' weights from `peer_dir` (checked by size and SHA-256), in eval mode on `device`.
    `permute_fix=True`: the corrected NHWC permute in the transformer instead of the released raw reshape."""
    device = torch.device(device)
    net = MATRNet(permute_fix=permute_fix)
    net.load_state_dict(load_state_dict(weights_file(peer_dir, WEIGHTS), device), strict=True)
    return MATR(net.to(device).eval(), device)


FUSION_METHODS.register("matr", needs_weights=True)(load)
