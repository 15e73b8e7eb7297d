"""RICES (retrieval-based in-context example selection): demonstrations are the support samples whose
images are nearest to the query's, by cosine similarity of an image encoder's features.

The encoder is the evaluated model's own (`encoder: model`) or one built from the encoder registry
(`encoder: {name: open_clip, ...}`). Features are mean-pooled encoder tokens, L2-normalised, and are
cached on disk once per scenario, split and encoder (`<cache_dir>/<scenario>-<split>-<key>.safetensors`,
the key hashing the encoder's config and weights and the split's sample ids), so a second evaluation
with the same encoder -- another shot count, seed or model sharing it -- computes none.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lamm.benchmarks.base import EvalSample

log = logging.getLogger(__name__)

FEATURES_KEY = "features"


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ImageFeaturizer:
    """Media -> one L2-normalised feature row per sample (its first image), in batches."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], transform: Callable[[Any], Any],
                 identity: dict[str, Any] | Callable[[], dict[str, Any]], batch_size: int = 32) -> None:
        self.encode, self.transform, self.batch_size = encode, transform, batch_size
        self._identity = identity

    @property
    def identity(self) -> dict[str, Any]:
        """What the features depend on (the cache key): the encoder's config and a digest of its weights."""
        if callable(self._identity):  # hashing weights costs a pass over them: only when caching
            self._identity = self._identity()
        return self._identity

    @classmethod
    def of_model(cls, model: Any, modality: str = "image", batch_size: int = 32) -> "ImageFeaturizer":
        """The evaluated model's own encoder for `modality`."""
        specs = model.media_specs()
        if modality not in specs:
            raise ValueError(f"retrieval by {modality} features with the model's own encoder needs a model with an "
                             f"{modality} encoder (it has: {', '.join(sorted(specs)) or 'none'})")
        encoder = model.encoders[modality]
        return cls(lambda x: model.media_features(modality, x), specs[modality].transform,
                   lambda: {"encoder": "model", "class": type(encoder).__name__, "weights": weights_digest(encoder)},
                   batch_size)

    @classmethod
    def of_config(cls, cfg: dict[str, Any]) -> "ImageFeaturizer":
        """An encoder from the registry (`{name: ..., ...}`), built with a fixed seed so random parts repeat."""
        from lamm.components import build_component
        from lamm.registry import ENCODERS

        with torch.random.fork_rng():
            torch.manual_seed(0)
            encoder = build_component(ENCODERS, dict(cfg), "benchmark.fewshot.rices.encoder").eval()
        identity = {"encoder": cfg, "weights": weights_digest(encoder)}
        return cls(encoder, encoder.transform, identity)

    @torch.no_grad()
    def __call__(self, samples: Sequence[EvalSample]) -> torch.Tensor:
        from lamm.datasets.media import load_media

        rows = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            for s in chunk:
                if not s.media:
                    raise ValueError(f"retrieval by media features needs media; sample {s.id!r} has none")
            x = torch.stack([torch.as_tensor(self.transform(load_media(s.media[0]))) for s in chunk])
            rows.append(self.encode(x).float().mean(1))
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1) if rows else torch.zeros(0, 0)


def ids_digest(samples: Sequence[EvalSample]) -> str:
    return hashlib.sha256("\n".join(s.id for s in samples).encode()).hexdigest()


def cache_path(cache_dir: str | Path, scenario: str, split: str, samples: Sequence[EvalSample],
               identity: dict[str, Any]) -> Path:
    """Where the features of `samples` (one scenario split) under one encoder are cached."""
    key = hashlib.sha256(json.dumps({"scenario": scenario, "split": split, "ids": ids_digest(samples),
                                     "encoder": identity}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{scenario}-{split}")
    return Path(cache_dir) / f"{safe}-{key}.safetensors"


def cached_features(featurize: ImageFeaturizer, samples: Sequence[EvalSample], cache_dir: str | Path | None,
                    scenario: str, split: str) -> torch.Tensor:
    """The features of `samples`, read from the cache when present, else computed once and written."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return featurize(samples)
    path = cache_path(cache_dir, scenario, split, samples, featurize.identity)
    if path.is_file():
        feats = load_file(str(path))[FEATURES_KEY]
        if len(feats) == len(samples):
            return feats
        log.warning("%s holds %d rows for %d samples; computing the features again", path, len(feats), len(samples))
    feats = featurize(samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({FEATURES_KEY: feats.contiguous()}, str(tmp),
              metadata={"scenario": scenario, "split": split, "n": str(len(samples)), "ids_sha256": ids_digest(samples)})
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache behind
    log.info("RICES: cached %d image features of %s/%s in %s", len(samples), scenario, split, path)
    return feats


def nearest(query: torch.Tensor, support: torch.Tensor, k: int, exclude: Sequence[int] = ()) -> list[int]:
    """Indices of the `k` support rows most similar to `query` (cosine; rows are normalised), ordered with
    the most similar LAST -- nearest to the query in the prompt, as OpenFlamingo's RICES orders them.
    Ties go to the earlier support row."""
    sims = (support @ query).double()
    if exclude:
        sims[list(exclude)] = float("-inf")
    k = min(k, int(torch.isfinite(sims).sum()))
    order = torch.sort(-sims, stable=True).indices[:k].tolist()
    return order[::-1]
