"""Fold LoRA deltas into their base weights for inference, and restore the originals bit for bit.

Every adapted Linear costs five extra ops per decoded token (dropout, A, B, scale, add), each with
its own dispatch and weight read; at small batch sizes that is a measurable share of a step
(SmolLM2-135M, LoRA on q,v, batch 4: 3.51 s -> 3.15 s per 32-token generate). Folding `W + s*B@A`
into `W` for the length of one `generate()` removes them. peft's own `unmerge()` subtracts the delta
again, which leaves rounding drift in the frozen weights after every call, and merging into a copy of
`W` holds a second copy of every adapted weight while decoding. Here the sum is written into `W` in
place and undone exactly: subtracting by the same call gives back `W` except for the few elements
whose addition rounded (0.1-1%), which are saved at the merge and put back. Layers whose merge is not
a plain addition (DoRA and other variants, LoRA biases) merge into a copy and get the original back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

# merge="auto": only up to this many bytes of adapted weights. Merging costs a few passes over them per call
# (~40-50 ms for SmolLM2-135M's q,v) and saves per-token adapter ops that matter little beside a 7B's matmuls.
AUTO_LIMIT_BYTES = 1 << 30
_BLOCK_ELEMENTS = 1 << 20  # elements of W merged at a time: bounds the scratch buffers


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


class _Scratch:
    """Reusable buffers for the per-block temporaries: fresh temporaries per layer leave freshly touched
    pages resident layer after layer (docs/results.md, issue 22 memory)."""

    def __init__(self) -> None:
        self._flat: dict[tuple, torch.Tensor] = {}

    def like(self, slot: int, tensor: torch.Tensor) -> torch.Tensor:
        key = (slot, tensor.dtype, tensor.device)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < tensor.numel():
            flat = self._flat[key] = torch.empty(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        return flat[: tensor.numel()].view(tensor.shape)


def _row_blocks(layer: nn.Module, adapter: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(rows of W, the same rows of B, A), at most `_BLOCK_ELEMENTS` elements of W at a time."""
    weight = layer.get_base_layer().weight.data
    a = layer.lora_A[adapter].weight.detach().to(weight.dtype)
    b = layer.lora_B[adapter].weight.detach().to(weight.dtype)
    step = max(1, _BLOCK_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        yield weight[start:start + step], b[start:start + step], a


def _merge_in_place(layer: nn.Module, adapter: str, scratch: _Scratch) -> Callable[[_Scratch], None]:
    """`W += s * B @ A` in place; returns the exact undo: `W -= s * B @ A` by the same call, then the few
    elements whose rounding did not come back (0.1-1%) put back from the values saved at the merge. Interrupted
    part way (an error, Ctrl-C in lamm-chat), the blocks merged so far are undone before the error goes on."""
    scale = layer.scaling[adapter]
    done: list[tuple[torch.Tensor, torch.Tensor]] = []  # per merged block: where `(W + d) - d` misses W, and W there

    def undo(scratch: _Scratch) -> None:
        with torch.no_grad():
            for (block, b, a), (missed, values) in zip(_row_blocks(layer, adapter), done):
                block.copy_(torch.addmm(block, b, a, alpha=-scale, out=scratch.like(0, block)))
                block.view(-1)[missed] = values
        if adapter in layer.merged_adapters:
            layer.merged_adapters.remove(adapter)

    try:
        with torch.no_grad():
            for block, b, a in _row_blocks(layer, adapter):
                merged = torch.addmm(block, b, a, alpha=scale, out=scratch.like(0, block))
                back = torch.addmm(merged, b, a, alpha=-scale, out=scratch.like(1, block))
                missed = back.ne_(block).view(-1).nonzero().squeeze(1)
                values = block.view(-1)[missed]
                block.copy_(merged)
                done.append((missed, values))
    except BaseException:
        undo(scratch)
        raise
    layer.merged_adapters.append(adapter)  # peft's "merged" flag: forward skips the adapter
    return undo


def _merge_into_copy(layer: nn.Module) -> Callable[[_Scratch], None]:
    """peft's own merge, written into a copy of the base weight; returns the undo (the original storage back)."""
    weight = layer.get_base_layer().weight
    original = weight.data
    weight.data = original.clone()  # the merge writes into the copy, never the original
    layer.merge()

    def undo(_: _Scratch) -> None:
        weight.data = original
        layer.merged_adapters.clear()  # nothing to subtract

    return undo


@contextmanager
def merged_lora(module: nn.Module, enabled: bool | str = "auto") -> Iterator[int]:
    """Within the block, every active LoRA layer under `module` runs as one merged Linear.

    `enabled`: True, False, or "auto" (as True when the adapted weights take at most `AUTO_LIMIT_BYTES`,
    else nothing merges). Yields the number of merged layers.
    Only for inference: gradients would reach the merged weights, not the adapters.
    """
    layers = _lora_layers(module) if enabled else []
    if enabled == "auto" and sum(m.get_base_layer().weight.nbytes for m in layers) > AUTO_LIMIT_BYTES:
        layers = []
    undo: list[Callable[[_Scratch], None]] = []  # each merge's undo, registered as soon as it is done
    try:
        scratch = _Scratch()
        for layer in layers:
            if _in_place(layer):
                for adapter in list(layer.active_adapters):
                    undo.append(_merge_in_place(layer, adapter, scratch))
            else:
                undo.append(_merge_into_copy(layer))
        del scratch  # freed before decoding starts
        yield len(layers)
    finally:
        scratch = _Scratch()
        first_error: BaseException | None = None
        for step in reversed(undo):  # every layer is restored even if one undo fails
            try:
                step(scratch)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other layers
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
