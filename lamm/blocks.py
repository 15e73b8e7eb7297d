"""Repeated blocks of a module: the units a sharded strategy wraps one by one (lamm/training/fsdp.py)."""
from __future__ import annotations

from torch import nn


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of the longest ModuleList or Sequential of two or more same-class modules inside `module`
    (a ViT's transformer blocks, a CLIP tower's resblocks), found without a per-family table; [] if none."""
    best: list[nn.Module] = []
    for candidate in module.modules():
        if not isinstance(candidate, (nn.ModuleList, nn.Sequential)) or len(candidate) < 2:
            continue
        children = list(candidate)
        # Container children (a ModuleList of ModuleLists) are never called, so hooks on them never run.
        if len({type(c) for c in children}) == 1 and not isinstance(children[0], (nn.ModuleList, nn.ModuleDict)):
            if len(children) > len(best):
                best = children
    return best
