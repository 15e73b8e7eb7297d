"""Fold LoRA deltas into their base weights for inference, and restore the originals bit for bit.

Every adapted Linear costs five extra ops per decoded token (dropout, A, B, scale, add), each with
its own dispatch and weight read; at small batch sizes that is a measurable share of a step
(SmolLM2-135M, LoRA on q,v, batch 4: 3.51 s -> 3.15 s per 32-token generate). Folding `W + s*B@A`
into `W` for the length of one `generate()` removes them. peft's own `unmerge()` subtracts the delta
again, which leaves rounding drift in the frozen weights after every call. Here the sum is written
into `W` in place and undone exactly: `(W + d) - d` gives back `W` except for the few elements whose
addition rounded (about 0.1-1% in fp32), and those are saved at the merge and put back afterwards,
so no copy of the weights is held while decoding. Layers whose merge is not a plain addition (DoRA
and other variants, LoRA biases) merge into a copy of `W` and get the original storage back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

AUTO_LIMIT_BYTES = 1 << 30  # merge="auto": weight copies (layers not merged in place) only up to this much memory
_BLOCK_ELEMENTS = 1 << 16  # rows of W merged at a time: small transients, reused block after block


def _lora_layers(module: nn.Module) -> list[nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: nothing can be adapted
        return []
    return [m for m in module.modules() if isinstance(m, LoraLayer) and not m.merged and m.active_adapters]


def _in_place(layer: nn.Module) -> bool:
    """The layer is a plain LoRA Linear (`W += s * B @ A` per adapter, no variant, no LoRA bias) on a contiguous W."""
    from peft.tuners.lora import Linear

    variants = getattr(layer, "lora_variant", {})
    biases = getattr(layer, "lora_bias", {})
    weight = layer.get_base_layer().weight
    return (isinstance(layer, Linear) and not layer.fan_in_fan_out and weight.dim() == 2 and weight.is_contiguous()
            and all(a not in variants and not biases.get(a, False) for a in layer.active_adapters))


def _row_deltas(layer: nn.Module, adapter: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """`s * B @ A` in blocks of rows of the weight (in its dtype), each block small enough to stay in cache."""
    weight = layer.get_base_layer().weight
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):  # slow half matmuls on CPU
        a, b = a.float(), b.float()
    step = max(1, _BLOCK_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        rows = slice(start, start + step)
        yield rows, (b[rows] @ a).mul_(layer.scaling[adapter]).to(weight.dtype)


def _merge_in_place(layer: nn.Module, adapter: str) -> Callable[[], None]:
    """Add the adapter's delta into the base weight in place, block by block; returns the exact undo."""
    weight = layer.get_base_layer().weight.data
    rounded, saved = [], []  # per block: where `(W + d) - d` misses W, and W there
    with torch.no_grad():
        for rows, delta in _row_deltas(layer, adapter):
            block = weight[rows]
            merged = block + delta
            missed = ((merged - delta) != block).view(-1).nonzero().squeeze(1)
            rounded.append(missed)
            saved.append(block.reshape(-1)[missed])
            block.copy_(merged)
    layer.merged_adapters.append(adapter)  # peft's "merged" flag: forward skips the adapter

    def undo() -> None:
        with torch.no_grad():
            for (rows, delta), missed, values in zip(_row_deltas(layer, adapter), rounded, saved):
                block = weight[rows]
                block.sub_(delta)
                block.view(-1)[missed] = values
        layer.merged_adapters.remove(adapter)

    return undo


def _merge_into_copy(layer: nn.Module) -> Callable[[], None]:
    """peft's own merge, written into a copy of the base weight; returns the undo (the original storage back)."""
    weight = layer.get_base_layer().weight
    original = weight.data
    weight.data = original.clone()  # the merge writes into the copy, never the original
    layer.merge()

    def undo() -> None:
        weight.data = original
        layer.merged_adapters.clear()  # nothing to subtract

    return undo


@contextmanager
def merged_lora(module: nn.Module, enabled: bool | str = "auto") -> Iterator[int]:
    """Within the block, every active LoRA layer under `module` runs as one merged Linear.

    `enabled`: True, False, or "auto" (as True, except that layers merging into weight copies are
    left unmerged when the copies would need more than 1 GiB). Yields the number of merged layers.
    Only for inference: gradients would reach the merged weights, not the adapters.
    """
    layers = _lora_layers(module) if enabled else []
    copied = [m for m in layers if not _in_place(m)]
    if enabled == "auto" and sum(m.get_base_layer().weight.nbytes for m in copied) > AUTO_LIMIT_BYTES:
        layers = [m for m in layers if _in_place(m)]
    undo: list[Callable[[], None]] = []
    try:
        for layer in layers:
            if _in_place(layer):
                undo += [_merge_in_place(layer, adapter) for adapter in list(layer.active_adapters)]
            else:
                undo.append(_merge_into_copy(layer))
        yield len(layers)
    finally:
        for step in reversed(undo):
            step()
