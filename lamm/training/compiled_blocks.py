"""Regional compilation for training (`compile=true`): torch.compile each repeated block of the model (its
`wrap_modules()`: decoder layers, gated cross-attention blocks, perceiver layers, encoder blocks) and run
the compiled blocks inside training steps only.

Why blocks and not the whole model: the blocks of one kind share their code, so inductor compiles each kind
once (a decoder layer forward and backward: ~30 s on 2 CPU cores, then reused by all 30 layers), where a
whole-model graph would take many minutes and break on the fusion's Python. Why only inside training
steps: evaluation, held-out generation and export call the same blocks with other shapes, grad modes and
KV caches, each of which would be another compile; they run eager. A frozen encoder's blocks run eager too:
they take no part in backward, where the time goes, and torch's fused inference path of
`nn.TransformerEncoderLayer` (taken under no_grad) does not compile.

The blocks keep their parameters and state-dict keys (the compiled callable is an instance attribute, not
a wrapper module), so checkpoints, exports and resume are the same with and without compilation.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


def outermost(units: list[nn.Module]) -> list[nn.Module]:
    """`units` without those inside another unit (compiling the outer one covers them)."""
    inner = {id(m) for u in units for m in u.modules() if m is not u}
    seen: set[int] = set()
    out = []
    for unit in units:
        if id(unit) not in inner and id(unit) not in seen:
            seen.add(id(unit))
            out.append(unit)
    return out


class CompiledBlocks:
    """The model's repeated blocks with a compiled forward each, switched on for the span of `active()`."""

    def __init__(self, model: nn.Module, skip: nn.Module | None = None, **compile_options: Any) -> None:
        skipped = {id(m) for m in skip.modules()} if skip is not None else set()
        self.units = [u for u in outermost(model.wrap_modules()) if id(u) not in skipped]
        # Dropout draws from aten's generator as in eager mode: the same masks with and without compile, and
        # inductor's in-kernel CPU random measured slower than aten's bernoulli (docs/results.md).
        options = {"fallback_random": True, **compile_options.pop("options", {})}
        # One compiled callable per block; blocks of one class share inductor's compiled code.
        self._compiled = [torch.compile(unit.forward, options=options, **compile_options) for unit in self.units]

    @contextmanager
    def active(self) -> Iterator[None]:
        for unit, compiled in zip(self.units, self._compiled):
            unit.forward = compiled  # an instance attribute shadows the class's forward for this block only
        try:
            yield
        finally:
            for unit in self.units:
                unit.__dict__.pop("forward", None)

    def __len__(self) -> int:
        return len(self.units)


def compiled_blocks(model: nn.Module) -> CompiledBlocks:
    """The training blocks of a MultimodalLM to compile: all but a frozen encoder's (see the module doc)."""
    policy = getattr(model, "policy", None)
    frozen_encoders = policy is not None and policy.encoder == "frozen"
    return CompiledBlocks(model, skip=model.encoders if frozen_encoders else None)
