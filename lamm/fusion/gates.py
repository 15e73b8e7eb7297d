"""Tanh gates frozen at 0 (`x + tanh(g) * branch(x)`): which trainable parameters they cut off from
every gradient, since d/d(branch) = tanh(0) = 0."""
from __future__ import annotations

from typing import Callable

from torch import nn

# A gated cross-attention block's gates and the parameter names of the branch each one scales: the
# attention branch is everything but the feed-forward's `ff_*` parameters.
BRANCHES: dict[str, Callable[[str], bool]] = {
    "attn_gate": lambda name: not name.startswith("ff_"),
    "ff_gate": lambda name: name.startswith("ff_"),
}


def is_shut(gate: nn.Parameter) -> bool:
    """A gate that passes nothing and never will: frozen, and exactly 0 everywhere."""
    return not gate.requires_grad and not bool(gate.detach().ne(0).any())


def zero_gated(blocks: nn.ModuleDict, media_modules: dict[str, nn.Module | None]) -> tuple[list[str], bool]:
    """(names of trainable parameters behind a shut gate, `blocks.<i>.<name>` and `<media module>.<name>`;
    whether every attention gate is shut, so nothing reaches the text from the media: then the
    `media_modules` on the way and everything before them get no gradient either)."""
    silenced: list[str] = []
    media_open = False
    for key, block in blocks.items():
        for gate_name, in_branch in BRANCHES.items():
            if not is_shut(getattr(block, gate_name)):
                media_open |= gate_name == "attn_gate"
                continue
            silenced += [f"blocks.{key}.{name}" for name, p in block.named_parameters()
                         if p.requires_grad and name not in BRANCHES and in_branch(name)]
    if not media_open:
        for prefix, module in media_modules.items():
            if module is not None:
                silenced += [f"{prefix}.{name}" for name, p in module.named_parameters() if p.requires_grad]
    return silenced, not media_open
