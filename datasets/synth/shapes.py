"""`shapes`: images of coloured shapes; colour, shape, count, position, caption and box questions."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lamm.datasets.synth.common import (
    KindResult,
    TaskSpec,
    balanced_answer,
    make_sample,
    sample_rng,
    seeded_followups,
    task_schedule,
)

KIND = "shapes"

# Far apart in RGB so a pixel's nearest palette entry survives the +-NOISE background/pixel noise.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIDES = ("left", "right")
COUNTS = ("1", "2", "3", "4")
BACKGROUND_MAX = 60  # background channels lie in [0, 60]; every shape colour has a channel >= 200
NOISE = 12  # "noisy" scenes add uniform integer noise in [-NOISE, NOISE] to every pixel
FOREGROUND_THRESHOLD = 120  # max channel above this = shape pixel, below = background (documented for tests)

TASKS = (
    TaskSpec("colour", "classification", "What colour is the shape?", tuple(COLOURS), 4),
    TaskSpec("shape", "classification", "What shape is this?", SHAPES, 4),
    TaskSpec("count", "counting", "How many shapes are there?", COUNTS, 4),
    TaskSpec("position", "VQA", "Is the shape on the left or the right?", SIDES, 3),
    TaskSpec(
        "caption",
        "description",
        "Describe the image.",
        tuple(f"a {c} {s} on the {p}" for c in COLOURS for s in SHAPES for p in SIDES),
        2,
    ),
    TaskSpec("bbox", "detection", "Where is the shape?", (), 3),
)
# Asked after a training image's first question: one image then supervises several answers, as in
# LLaVA's multi-turn instruction data.
FOLLOWUP_TASKS = ("colour", "shape", "position")


def shape_mask(shape: str, cx: int, cy: int, r: int, size: int) -> np.ndarray:
    """Boolean `[size, size]` mask of one shape whose points all lie within radius r of (cx, cy)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        h = round(0.75 * r)
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=255)
    elif shape == "cross":
        w = round(0.33 * r)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(img) > 0


def _place(rng: np.random.Generator, n: int, rmin: int, rmax: int, size: int, gap: int) -> list[tuple[int, int, int]]:
    """n non-overlapping (cx, cy, r) discs inside the image, at least `gap` px apart."""
    for attempt in range(400):
        hi = max(rmin, rmax - attempt // 50)  # shrink the radii if the scene is crowded
        discs: list[tuple[int, int, int]] = []
        for _ in range(n):
            r = int(rng.integers(rmin, hi + 1))
            cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
            if all(math.hypot(cx - x, cy - y) >= r + q + gap for x, y, q in discs):
                discs.append((cx, cy, r))
            else:
                break
        if len(discs) == n:
            return discs
    raise RuntimeError(f"could not place {n} shapes of radius {rmin}-{rmax} in a {size}px image")


def render(objects: list[dict[str, Any]], size: int, background: tuple[int, int, int], noise: int,
           rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw the objects; returns the uint8 image and the objects with their pixel boxes filled in."""
    img = np.empty((size, size, 3), np.int16)
    img[:] = background
    out = []
    for obj in objects:
        mask = shape_mask(obj["shape"], *obj["centre"], obj["radius"], size)
        img[mask] = COLOURS[obj["colour"]]
        ys, xs = np.nonzero(mask)
        # Pixel box, x2/y2 exclusive: normalised coordinates are then box / size.
        out.append({**obj, "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    if noise:
        img += rng.integers(-noise, noise + 1, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8), out


def _targets(task: str, answer: str | None) -> dict[str, Any]:
    """The scene attributes a task's balanced answer fixes."""
    if answer is None:
        return {}
    if task == "caption":
        colour, shape, _, _, side = answer.split(" ")[1:]
        return {"colour": colour, "shape": shape, "side": side}
    return {{"colour": "colour", "shape": "shape", "count": "n", "position": "side"}[task]: answer}


def _scene(rng: np.random.Generator, task: str, size: int, fixed: dict[str, Any]) -> list[dict[str, Any]]:
    k = size / 64
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    colour = fixed.get("colour") or list(COLOURS)[rng.integers(len(COLOURS))]
    if task == "count":
        n = int(fixed.get("n") or rng.integers(1, len(COUNTS) + 1))
        discs = _place(rng, n, round(8 * k), round(12 * k), size, gap=max(3, round(3 * k)))
        return [{"shape": shape, "colour": colour, "centre": [cx, cy], "radius": r} for cx, cy, r in discs]
    r = int(rng.integers(round(10 * k), round(18 * k) + 1))
    # Keep the centre clearly off the vertical midline so "left"/"right" is never ambiguous.
    band = max(4, round(6 * k))
    side = fixed.get("side") or SIDES[rng.integers(2)]
    lo, hi = (r + 1, size // 2 - band) if side == "left" else (size // 2 + band, size - r - 1)
    cx = int(rng.integers(lo, hi + 1))
    cy = int(rng.integers(r + 1, size - r - 1))
    return [{"shape": shape, "colour": colour, "centre": [cx, cy], "radius": r, "side": side}]


def _answer(task: str, objects: list[dict[str, Any]], size: int) -> str:
    o = objects[0]
    if task == "colour":
        return o["colour"]
    if task == "shape":
        return o["shape"]
    if task == "count":
        return str(len(objects))
    if task == "position":
        return o["side"]
    if task == "caption":
        return f"a {o['colour']} {o['shape']} on the {o['side']}"
    if task == "bbox":
        coords = ", ".join(f"{v / size:.2f}" for v in o["box"])
        return f"{o['colour']} {o['shape']} [{coords}]"
    raise ValueError(task)


def _followups(task: str, objects: list[dict[str, Any]], size: int,
               rng: np.random.Generator) -> list[tuple[TaskSpec, str]]:
    """The other closed questions a training scene answers without skewing their answer balance, in a
    seeded order: colour and shape always (every object shares them, and they are drawn uniformly
    unless the first question fixed them), left/right for single-shape scenes. Count is never a
    follow-up: every non-count scene has one shape, so it would mostly answer "1"."""
    extra = [t for t in TASKS if t.task in FOLLOWUP_TASKS and t.task != task
             and not (t.task == "position" and task == "count")]
    return seeded_followups(rng, extra, lambda t: _answer(t, objects, size))


def generate(root: Path, seed: int, sizes: dict[str, int], image_size: int = 64) -> KindResult:
    """Write `root/images/<split>/<i>.png` and return the samples: one question per test image; a
    training image asks its question first, then the follow-ups its scene answers (`_followups`)."""
    if image_size < 32:
        raise ValueError(f"shapes image_size must be >= 32, got {image_size}")
    schedule = task_schedule(TASKS)
    samples: dict[str, list[dict[str, Any]]] = {}
    for split, n in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            rng = sample_rng(seed, KIND, split, i)
            spec = schedule[i % len(schedule)]
            target = balanced_answer(seed, KIND, split, i, schedule)
            objects = _scene(rng, spec.task, image_size, _targets(spec.task, target))
            background = tuple(int(v) for v in rng.integers(0, BACKGROUND_MAX + 1, size=3))
            noise = NOISE if rng.random() < 0.5 else 0
            pixels, objects = render(objects, image_size, background, noise, rng)
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(pixels).save(root / rel)
            meta = {"image_size": image_size, "background": list(background), "noise": noise, "objects": objects}
            followups = _followups(spec.task, objects, image_size, rng) if split == "train" else []
            rows.append(make_sample(f"{KIND}_{split}_{i:06d}", "image", rel, spec,
                                    _answer(spec.task, objects, image_size), meta, followups=followups))
        samples[split] = rows
    return KindResult(
        samples=samples,
        media="image",
        tasks={t.task: t.describe() for t in TASKS},
        params={"image_size": image_size, "colours": {k: list(v) for k, v in COLOURS.items()},
                "foreground_threshold": FOREGROUND_THRESHOLD, "noise": NOISE},
    )
