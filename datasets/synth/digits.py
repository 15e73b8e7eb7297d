"""`digits`: scikit-learn's bundled handwritten digits (1797 8x8 images), upscaled to RGB PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lamm.datasets.synth.common import KIND_CODES, KindResult, TaskSpec, make_sample

KIND = "digits"
DIGITS = tuple(str(d) for d in range(10))
TASKS = (TaskSpec("digit", "classification", "Which digit is this?", DIGITS, 1),)


def load() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: images `[1797, 8, 8]` with values 0..16 and targets `[1797]`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def render(image8: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 0..16 digit as a `[size, size, 3]` uint8 image (white ink on black, bilinear upscale)."""
    grey = Image.fromarray(np.round(image8 * (255 / 16)).astype(np.uint8), mode="L")
    return np.asarray(grey.resize((size, size), Image.BILINEAR).convert("RGB"))


def split_indices(seed: int, sizes: dict[str, int], total: int) -> dict[str, np.ndarray]:
    """Cut one seeded permutation: test from its front, train from its back, so neither split's
    samples depend on the other's size (callers keep the sum within `total`)."""
    order = np.random.default_rng([seed, KIND_CODES[KIND]]).permutation(total)
    out = {"test": order[: sizes.get("test", 0)], "train": order[::-1][: sizes.get("train", 0)]}
    return {split: out[split] for split in sizes}


def generate(root: Path, seed: int, sizes: dict[str, int], image_size: int = 64) -> KindResult:
    """Write `root/images/<split>/<i>.png`; sizes beyond the 1797 real digits are cut (test first)."""
    images, targets = load()
    budget = len(images)
    fitted = {}
    for split in sorted(sizes, key=lambda s: s != "test"):
        fitted[split] = min(sizes[split], budget)
        budget -= fitted[split]
    spec = TASKS[0]
    samples: dict[str, list[dict[str, Any]]] = {}
    for split, idx in split_indices(seed, fitted, len(images)).items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i, j in enumerate(idx.tolist()):
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(render(images[j], image_size)).save(root / rel)
            meta = {"sklearn_index": j, "image_size": image_size}
            rows.append(make_sample(f"{KIND}_{split}_{i:06d}", "image", rel, spec, str(int(targets[j])), meta))
        samples[split] = rows
    return KindResult(
        samples={s: samples[s] for s in sizes},
        media="image",
        tasks={t.task: t.describe() for t in TASKS},
        params={"image_size": image_size, "source": "sklearn.datasets.load_digits", "available": len(images)},
    )
