"""The performance switches around a noise network: channels_last memory format, autocast and torch.compile."""
from __future__ import annotations

import torch
from torch import nn

from core.config import PerformanceConfig

_AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NetRunner:
    """Calls a noise network with the performance switches: NHWC inputs, autocast, torch.compile.

    Same signature as the network, eps(condition, x_t, noise_level); always returns float32 noise. The wrapped
    module's parameters must already be in channels_last format when `channels_last` is set (`prepare_net`).
    """

    def __init__(self, net: nn.Module, perf: PerformanceConfig, device: torch.device) -> None:
        if perf.autocast == "fp16" and device.type != "cuda":
            raise ValueError(f"performance.autocast 'fp16' needs a CUDA device, but the model runs on {device}")
        self.module = net
        self.device_type = device.type
        self.channels_last = perf.channels_last
        self.dtype = _AUTOCAST_DTYPES[perf.autocast]
        self._call = torch.compile(net) if perf.compile else net

    def __call__(self, condition: torch.Tensor, x_t: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            condition = condition.contiguous(memory_format=torch.channels_last)
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            eps = self._call(condition, x_t, noise_level)
        return eps.float()


def prepare_net(net: nn.Module, perf: PerformanceConfig) -> nn.Module:
    """Put the parameters in the memory format the switches ask for (in place); returns `net`."""
    return net.to(memory_format=torch.channels_last) if perf.channels_last else net
