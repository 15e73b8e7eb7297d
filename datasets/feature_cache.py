"""The frozen-feature cache: a frozen encoder's outputs computed once, read by training instead of the tower.

Layout of a cache folder (`lamm cache-features` writes it, `data.feature_cache=DIR` reads it):
- `manifest.json`: per modality the encoder fingerprint, feature shape and dtype, and which shard holds
  the features of each medium (keyed by the sha256 of the medium's bytes); plus, per media file, the
  (size, mtime) its hash was taken at, so a later run re-hashes only files that changed.
- `<modality>-<n>.safetensors`: shards of features [S, D], one tensor per medium, named by its hash.

The encoder fingerprint hashes the encoder's class, weights, token count and transform, so features of
another encoder, other weights or another transform are refused, never used. A random transform
(augmentation) would freeze one draw into the cache, so building refuses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from lamm.datasets.media import load_media
from lamm.datasets.sample import MediaRef

FORMAT = "lamm-feature-cache/1"
MANIFEST = "manifest.json"
SHARD_ENTRIES = 1024  # media per shard file
REBUILD = "rerun `lamm cache-features` with this run's overrides"


class FeatureCacheError(ValueError):
    """A feature cache that cannot serve this run (other encoder, changed media, unreadable folder)."""


# -- fingerprints -----------------------------------------------------------------------------------------

def describe_transform(transform: Callable[..., Any]) -> str:
    """A process-independent description of a transform (torchvision reprs name every step and setting)."""
    func = getattr(transform, "func", None)  # functools.partial
    if func is not None:
        text = f"{getattr(func, '__qualname__', func)}{getattr(transform, 'args', ())}{getattr(transform, 'keywords', {})}"
    else:
        text = repr(transform)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 of what determines an encoder's features: class, weights, token count and transform."""
    digest = hashlib.sha256()
    kind = type(encoder)
    digest.update(f"{kind.__module__}.{kind.__qualname__}|{encoder.num_tokens()}|"
                  f"{getattr(encoder, 'frames_per_medium', 1)}|{describe_transform(encoder.transform)}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_hash(ref: MediaRef) -> str:
    """sha256 of a medium's bytes: in-memory data, a file, or a folder of frame files (names and bytes)."""
    digest = hashlib.sha256()
    if ref.data is not None:
        digest.update(ref.data)
        return digest.hexdigest()
    path = Path(ref.path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(f"|{file.name}|".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def check_deterministic(transform: Callable[[Any], Any], raw: Any, modality: str) -> None:
    """Refuse a transform whose output differs between two calls on the same medium (random augmentation)."""
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(1)
        first = torch.as_tensor(transform(raw))
        torch.manual_seed(2)
        second = torch.as_tensor(transform(raw))
    finally:
        torch.set_rng_state(rng)
    text = describe_transform(transform)
    if not torch.equal(first, second) or "Random" in text:
        raise FeatureCacheError(
            f"the {modality} encoder's transform is random ({text[:120]}); cached features would freeze one "
            "augmentation draw, so train without data.feature_cache")


# -- what a dataset references --------------------------------------------------------------------------

def media_references(dataset: Any) -> Iterator[tuple[str, MediaRef]]:
    """(sample id, medium) of every medium a map-style dataset references (through mixtures too)."""
    if hasattr(dataset, "samples"):
        for sample in dataset.samples:
            for ref in sample.media:
                yield sample.id, ref
    elif hasattr(dataset, "sources"):
        for source in dataset.sources:
            yield from media_references(source)
    else:
        raise FeatureCacheError(f"data.feature_cache: the {type(dataset).__name__} dataset does not list its media "
                                "up front; use a map-style format (lamm, llava, mmgpt, interleaved, mixture)")


# -- reading ----------------------------------------------------------------------------------------------

def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, None when the folder has none; FeatureCacheError when unreadable."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatureCacheError(f"data.feature_cache: cannot read {path} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FeatureCacheError(f"data.feature_cache: {path} is not a lamm feature cache (format {FORMAT})")
    return manifest


@dataclass
class CachedFeatures:
    """One modality's features in a cache folder; called with a medium, returns its features [S, D]."""

    folder: str
    modality: str
    entries: dict[str, str]  # content hash -> shard file name
    known: dict[str, list]  # media path -> [size, mtime_ns, content hash] when cached
    hashes: dict[str, str] = field(default_factory=dict)  # media path -> content hash, checked by `check`
    _shards: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = {}  # open shard handles stay in their process (DataLoader workers open their own)
        return state

    def hash_of(self, ref: MediaRef) -> str:
        if ref.data is None and ref.path in self.hashes:
            return self.hashes[ref.path]
        if ref.data is None:
            seen = self.known.get(ref.path)
            if seen is not None and seen[:2] == _stat_key(ref.path):
                return seen[2]
        return content_hash(ref)

    def check(self, references: Iterable[tuple[str, MediaRef]]) -> int:
        """Refuse (one line naming file and sample) a medium the cache has no features for; returns the count."""
        count = 0
        for sample_id, ref in references:
            if ref.modality != self.modality:
                continue
            if ref.data is None and not os.path.exists(ref.path):
                raise FeatureCacheError(f"data.feature_cache: missing {ref.modality} file {ref.path} (sample {sample_id!r})")
            digest = self.hash_of(ref)
            if digest not in self.entries:
                raise FeatureCacheError(
                    f"data.feature_cache={self.folder} has no features for {ref.path} (sample {sample_id!r}): the "
                    f"file changed or is new since the cache was built; {REBUILD}")
            if ref.data is None:
                self.hashes[ref.path] = digest
            count += 1
        return count

    def __call__(self, ref: MediaRef) -> torch.Tensor:
        digest = self.hash_of(ref)
        shard = self.entries.get(digest)
        if shard is None:
            raise FeatureCacheError(f"data.feature_cache={self.folder} has no features for {ref.path}; {REBUILD}")
        handle = self._shards.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = self._shards[shard] = safe_open(str(Path(self.folder) / shard), framework="pt")
        return handle.get_tensor(digest)


def open_cached_features(folder: str | Path, modality: str, encoder: torch.nn.Module) -> CachedFeatures:
    """The cache's features of `modality`, refused (one line) when they were made by another encoder/transform."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise FeatureCacheError(f"data.feature_cache={folder} is not a feature cache (no {MANIFEST}); build it with "
                                "`lamm cache-features <the run's overrides> --out DIR`")
    entry = manifest["modalities"].get(modality)
    if entry is None:
        raise FeatureCacheError(f"data.feature_cache={folder} holds no {modality} features; {REBUILD}")
    fingerprint = encoder_fingerprint(encoder)
    if entry["encoder"] != fingerprint:
        raise FeatureCacheError(
            f"data.feature_cache={folder} was built by another {modality} encoder, weights or transform "
            f"({entry['encoder_class']} {entry['encoder'][:12]}, this run {type(encoder).__name__} {fingerprint[:12]}); "
            f"{REBUILD} --out NEW_DIR")
    return CachedFeatures(str(folder), modality, dict(entry["entries"]), dict(manifest.get("files", {})))


# -- writing ----------------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    modality: str
    media: int  # distinct media referenced
    computed: int  # of them computed now (the rest were in the cache already)


def build_cache(folder: str | Path, references: list[tuple[str, MediaRef]], encoders: dict[str, torch.nn.Module],
                batch_size: int = 32) -> list[BuildReport]:
    """Compute the features of every referenced medium missing from `folder` (created if needed).

    New shards are written beside the existing ones and the manifest is replaced last, in one rename,
    so an interrupted build leaves the previous cache intact. A folder built by another encoder is refused.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FeatureCacheError(f"--out {folder} is a file, not a folder")
    manifest = read_manifest(folder) if folder.exists() else None
    if manifest is None and folder.exists() and any(folder.iterdir()):
        raise FeatureCacheError(f"--out {folder} is a non-empty folder without a feature cache; choose an empty or new one")
    manifest = manifest or {"format": FORMAT, "modalities": {}, "files": {}}
    folder.mkdir(parents=True, exist_ok=True)
    reports = []
    for modality, encoder in encoders.items():
        refs = [(sid, ref) for sid, ref in references if ref.modality == modality]
        fingerprint = encoder_fingerprint(encoder)
        entry = manifest["modalities"].get(modality)
        if entry is not None and entry["encoder"] != fingerprint:
            raise FeatureCacheError(f"--out {folder} holds {modality} features of another encoder, weights or transform "
                                    f"({entry['encoder_class']} {entry['encoder'][:12]}); choose a new folder")
        entry = entry or {"encoder": fingerprint, "encoder_class": type(encoder).__name__, "entries": {}}
        todo: dict[str, MediaRef] = {}
        distinct = set()
        for _, ref in refs:
            digest = content_hash(ref)
            distinct.add(digest)
            if ref.data is None:
                manifest["files"][ref.path] = [*(_stat_key(ref.path) or [0, 0]), digest]
            if digest not in entry["entries"]:
                todo.setdefault(digest, ref)
        if todo:
            check_deterministic(encoder.transform, load_media(next(iter(todo.values()))), modality)
        shard_index = sum(1 for _ in folder.glob(f"{modality}-*.safetensors"))
        items = list(todo.items())
        encoder.eval()
        for start in range(0, len(items), SHARD_ENTRIES):
            chunk = items[start:start + SHARD_ENTRIES]
            tensors = {}
            for b in range(0, len(chunk), batch_size):
                part = chunk[b:b + batch_size]
                data = torch.stack([torch.as_tensor(encoder.transform(load_media(ref))) for _, ref in part])
                with torch.inference_mode():
                    features = encoder(data)
                for (digest, _), feats in zip(part, features):
                    tensors[digest] = feats.contiguous().clone()
            name = f"{modality}-{shard_index:05d}.safetensors"
            shard_index += 1
            save_file(tensors, str(folder / name))
            for digest in tensors:
                entry["entries"][digest] = name
            entry["shape"] = list(next(iter(tensors.values())).shape)
            entry["dtype"] = str(next(iter(tensors.values())).dtype)
        manifest["modalities"][modality] = entry
        reports.append(BuildReport(modality, len(distinct), len(todo)))
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return reports


def with_feature_cache(folder: str | Path, media_specs: dict[str, Any], encoders: dict[str, torch.nn.Module]
                       ) -> tuple[dict[str, Any], list[CachedFeatures]]:
    """Media specs whose modalities read features from `folder` instead of loading media; only frozen
    encoders qualify (a trained encoder changes its features every step)."""
    import dataclasses

    specs, caches = dict(media_specs), []
    for modality, encoder in encoders.items():
        if any(p.requires_grad for p in encoder.parameters()):
            raise FeatureCacheError(f"data.feature_cache needs a frozen encoder, but the {modality} encoder trains "
                                    "(set model.policy.encoder=frozen, e.g. model/policy=align)")
        cached = open_cached_features(folder, modality, encoder)
        specs[modality] = dataclasses.replace(specs[modality], features=cached)
        caches.append(cached)
    return specs, caches
