"""Pieces every importer uses: target shapes from a module built on the meta device, checkpoint keys
mapped onto them with every shape checked, and tensors handed to the folder writer lazily."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

from lamm.zoo.state import CheckpointKeyError, StateReader


def meta_module(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module `build` makes, on the meta device: its tree and shapes, no memory."""
    with torch.device("meta"):
        return build()


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{state-dict name: shape} of `module`."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of the module `build` makes, built on the meta device (no memory)."""
    return state_shapes(meta_module(build))


def check_shape(state: StateReader, key: str, shape: tuple[int, ...]) -> None:
    """One line naming `key`, the file and both shapes when the checkpoint's tensor has another shape."""
    got = state.shape(key)
    if tuple(got) != tuple(shape):
        raise CheckpointKeyError(f"key '{key}' in {state.source} has shape {list(got)}, expected {list(shape)}")


def checked_mapping(state: StateReader, keys: Mapping[str, str], target: Mapping[str, tuple[int, ...]],
                    what: str, optional: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """{target name: checkpoint key} with each key's shape checked; `keys` proposes a key per target name.
    A name whose key the checkpoint lacks (unless `optional(name)`) is one line naming the key and `what`."""
    mapping = {}
    for name, shape in target.items():
        key = keys.get(name)
        if key is None or key not in state:
            if optional(name):
                continue
            missing = f"key '{key}'" if key is not None else f"key for '{name}'"
            raise CheckpointKeyError(f"missing {missing} in {state.source} (the {what} needs it)")
        check_shape(state, key, shape)
        mapping[name] = key
    return mapping


def streamed(state: StateReader, mapping: Mapping[str, str]) -> Iterable[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, loader) pairs that read each checkpoint tensor only when its shard is written."""
    for name, key in mapping.items():
        yield name, (lambda key=key: state.take(key))
