"""Inference matmuls through oneDNN instead of MKL, for the few-row products of decoding on CPU.

A decode step multiplies a handful of rows by every weight of the model once, so its speed is how
fast the weights stream from memory. At 1-16 rows MKL's fp32 GEMM streams them at about half the
rate of oneDNN's matmul on the same plain weights (measured in docs/results.md); no copy or
re-layout of any weight is made. Both compute the same fp32 products but sum in a different order
(last-bit differences), so generation is tested to give the same tokens with and without it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def available() -> bool:
    """oneDNN is built into this torch and its linear kernel is registered."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_forward(layer: nn.Linear):
    linear = torch.ops.mkldnn._linear_pointwise

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, layer.weight, layer.bias)
        return linear(x, layer.weight, layer.bias, "none", [], "")

    return forward


@contextmanager
def onednn_linears(module: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every fp32 CPU `nn.Linear` under `module` runs on oneDNN when no gradient is
    recorded (elsewhere: `F.linear` as always). Yields the number of layers switched."""
    layers = []
    if enabled and available():
        layers = [m for m in module.modules() if type(m) is nn.Linear
                  and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 and "forward" not in vars(m)]
    try:
        for layer in layers:
            layer.forward = _onednn_forward(layer)  # an instance attribute shadows nn.Linear.forward
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
