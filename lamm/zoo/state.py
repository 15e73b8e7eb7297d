"""Read a published checkpoint's tensors safely and strictly: never unpickle, load lazily, and name
every missing, unexpected or mis-shaped key."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch

SAFETENSORS = ".safetensors"
TORCH_FILES = (".bin", ".pt", ".pth", ".ckpt")
# Wrappers training scripts put around a state dict (`torch.save({"model_state_dict": sd}, ...)`).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


class CheckpointKeyError(ValueError):
    """A checkpoint does not match the layout its format promises (one line naming key, file and shapes)."""


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


class StateReader:
    """The tensors of one checkpoint (a file or a folder of shards), loaded only when taken.

    Importers `take` every tensor they map and call `finish()`, so a tensor nobody consumed is an
    error rather than silently dropped weights.
    """

    def __init__(self, source: Path, shapes: dict[str, tuple[int, ...]], load: Callable[[str], torch.Tensor]) -> None:
        self.source = source
        self._shapes = shapes
        self._load = load
        self.consumed: set[str] = set()

    def keys(self) -> list[str]:
        return sorted(self._shapes)

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        self._require(key)
        return self._shapes[key]

    def _require(self, key: str) -> None:
        if key not in self._shapes:
            raise CheckpointKeyError(f"missing key '{key}' in {self.source}")

    def take(self, key: str, shape: Iterable[int] | None = None) -> torch.Tensor:
        """The tensor `key` (marked consumed); `shape` is checked before anything is loaded."""
        self._require(key)
        if shape is not None and tuple(int(d) for d in shape) != tuple(self._shapes[key]):
            raise CheckpointKeyError(f"key '{key}' in {self.source} has shape {_shape(self._shapes[key])}, "
                                     f"expected {_shape(shape)}")
        self.consumed.add(key)
        return self._load(key)

    def take_prefix(self, prefix: str, strip: bool = True) -> dict[str, torch.Tensor]:
        """Every tensor under `prefix` (names without it when `strip`)."""
        keys = [k for k in self.keys() if k.startswith(prefix)]
        return {(k[len(prefix):] if strip else k): self.take(k) for k in keys}

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return [k for k in self.keys() if k.startswith(prefix)]

    def skip(self, keys: Iterable[str]) -> None:
        """Mark keys as deliberately unused (e.g. buffers a format saves but never reads)."""
        self.consumed.update(k for k in keys if k in self._shapes)

    def finish(self) -> None:
        """Fail when a tensor of the checkpoint was not consumed."""
        left = [k for k in self.keys() if k not in self.consumed]
        if left:
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            raise CheckpointKeyError(f"unexpected key '{left[0]}'{more} in {self.source}: this format does not use it")


def _safetensors_files(folder: Path) -> list[Path]:
    index = next(iter(sorted(folder.glob("*.safetensors.index.json"))), None)
    if index is not None:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def _open_safetensors(files: list[Path], source: Path) -> StateReader:
    from safetensors import safe_open

    handles, shapes, where = [], {}, {}
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise CheckpointKeyError(f"cannot read {file} as safetensors ({str(exc).splitlines()[0]})") from None
        handles.append(handle)
        for key in handle.keys():
            shapes[key] = tuple(handle.get_slice(key).get_shape())
            where[key] = handle
    return StateReader(source, shapes, lambda key: where[key].get_tensor(key))


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    """A `.bin`/`.pt` state dict, never unpickling arbitrary objects (memory-mapped where possible)."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncation: torch's message, shortened to its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointKeyError(f"cannot read {file} safely (weights only, no pickled objects): {first}") from None
    if isinstance(state, dict):
        for wrapper in _WRAPPER_KEYS:
            if isinstance(state.get(wrapper), dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise CheckpointKeyError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointKeyError(f"key '{key}' in {file} is a {type(value).__name__}, not a tensor")
    return state


def _open_torch(files: list[Path], source: Path) -> StateReader:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_torch_load(file))
    return StateReader(source, {k: tuple(v.shape) for k, v in state.items()}, state.__getitem__)


def open_state(path: str | Path) -> StateReader:
    """A checkpoint file (`.safetensors`, or `.bin`/`.pt`/`.pth`/`.ckpt` read with `weights_only`) or a
    folder of them (sharded HF checkpoints included), ready for strict, lazy reading."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(2, "no such checkpoint file or folder", str(path))
    if path.is_dir():
        files = _safetensors_files(path)
        if files:
            return _open_safetensors(files, path)
        files = sorted(f for f in path.iterdir() if f.suffix in TORCH_FILES and f.is_file())
        if not files:
            raise CheckpointKeyError(f"{path} holds no checkpoint file (*.safetensors, *.bin, *.pt)")
        return _open_torch(files, path)
    if path.suffix == SAFETENSORS:
        return _open_safetensors([path], path)
    if path.suffix in TORCH_FILES:
        return _open_torch([path], path)
    raise CheckpointKeyError(f"{path}: unknown checkpoint file type {path.suffix!r} "
                             f"(expected {SAFETENSORS} or one of {', '.join(TORCH_FILES)})")
