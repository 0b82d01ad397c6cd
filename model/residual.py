"""The residual parametrisation (`model.diffusion.residual_base` / `residual_scale`), in one place for training and
fusing.

A residual model does not diffuse the fused image x0 but the scaled residual r = s (x0 - base), where `base` is the
rule's image of the same case (`FusionBatch.base` in training, the rule applied to the whole bicubic-upsampled
sources when fusing) and s = `residual_scale`. Training compares base + x0_hat / s with the target; a sampled
residual becomes the image r / s + base, clipped to [-1, 1]. With `clip: "image"` each sampling step clips x0 to the
bounds s (-1 - base) .. s (1 - base), so that base + x0 / s lies in [-1, 1].

Without a rule (`base` None) every function returns its input unchanged. The operations and their order are the ones
training and sampling have always used, so the numbers are bit-identical to theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config import DiffusionConfig


@dataclass(frozen=True)
class Residual:
    """`rule` (None: the model diffuses the image itself) and `scale` of a model's residual parametrisation."""

    rule: str | None = None
    scale: float = 1.0

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> Residual:
        return cls(cfg.residual_base, cfg.residual_scale)

    def to_residual(self, x0: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """What the diffusion models for the image x0: s (x0 - base), or x0 without a base."""
        return x0 if base is None else (x0 - base) * self.scale

    def from_residual(self, r: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """The image of a residual r: r / s + base (not clipped; the training loss sees it so), or r without a base."""
        return r if base is None else r / self.scale + base

    def to_image(self, r: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """A sampled residual as a fused image: `from_residual` clipped to [-1, 1]; a sample without a base as is."""
        return r if base is None else self.from_residual(r, base).clamp(-1.0, 1.0)

    def clip_bounds(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel (low, high) for x0 such that base + x0 / s lies in [-1, 1] (`SamplerConfig.clip` "image")."""
        return self.scale * (-1.0 - base), self.scale * (1.0 - base)
