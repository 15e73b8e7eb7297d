"""Helpers shared by the encoder modules: input checks, weight files, image transforms."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image


def check_shape(encoder: str, what: str, x: Any, expected: Sequence[int | str]) -> None:
    """Raise a one-line ValueError unless `x` is a tensor matching `expected` (str entries are free)."""
    if not isinstance(x, torch.Tensor):
        got = type(x).__name__
    elif x.dim() == len(expected) and all(
        isinstance(e, str) or x.shape[i] == e for i, e in enumerate(expected)
    ):
        return
    else:
        got = str(list(x.shape))
    raise ValueError(f"{encoder} expects {what} [{', '.join(map(str, expected))}], got {got}")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or torch file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often wrap the weights; DDP prefixes every key with "module.".
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _to_rgb(image: Image.Image) -> Image.Image:
    # A module-level function rather than a lambda so transforms pickle into DataLoader workers.
    return image.convert("RGB")


def simple_image_transform(image_size: int, mean: float = 0.5, std: float = 0.5) -> Any:
    """RGB, resize to a square `image_size`, to tensor, normalise: the from-scratch encoders' transform."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToTensor(),
            T.Normalize((mean,) * 3, (std,) * 3),
        ]
    )
