"""Built-in offline data: seeded synthetic scenes plus scikit-learn's digits, in LAMM's JSON format.

    from lamm.datasets.synth import generate
    manifest = generate("data/synth", seed=0)                      # every kind, default sizes
    generate("data/synth", seed=1, sizes={"train": 200, "test": 50}, kinds=("shapes",))

Layout written under `out_dir` (media paths in the JSON are relative to the JSON's folder):

    manifest.json                      seed, sizes, files, per-task options and chance level
    shapes/{train,test}.json           shapes/images/<split>/<i>.png
    video/{train,test}.json            video/videos/<split>/<i>.mp4
    points/{train,test}.json           points/pcl/<split>/<i>.npy   (float32 [P, 3])
    digits/{train,test}.json           digits/images/<split>/<i>.png

Each sample asks one question whose gpt answer is exactly one of `options` (detection boxes are
open-ended: `options` is empty) and carries the scene's ground truth under `meta`. Training shapes
and video samples then ask follow-up questions about the same medium (shapes: colour, shape,
left/right; video: the other two questions) as further turns; `turn_tasks` lists every question's
task, `task`/`answer` are the first's. In the manifest a task's `counts` are samples whose first
question it is, `questions` every turn asking it. The same seed
and arguments give byte-identical files; sample i of a split does not depend on the split's size,
and the test split never depends on the train size.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamm.datasets.synth.common import SPLITS, KindResult, write_json

GENERATOR = "lamm.datasets.synth"
FORMAT_VERSION = 3  # 2: training shapes samples carry follow-up questions (turn_tasks); 3: video too
KINDS = ("shapes", "video", "points", "digits")
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "shapes": {"train": 12000, "test": 400},
    "video": {"train": 600, "test": 100},
    "points": {"train": 600, "test": 100},
    "digits": {"train": 1400, "test": 397},
}

__all__ = ["DEFAULT_SIZES", "FORMAT_VERSION", "KINDS", "generate", "main", "parse_sizes", "read_manifest",
           "resolve_sizes"]


def parse_sizes(text: str) -> dict[str, int]:
    """Parse `train=2000,test=200,shapes.train=100` into `{"train": 2000, ...}`."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"bad size {item!r}: expected SPLIT=N or KIND.SPLIT=N, e.g. train=2000,test=200")
        out[key.strip()] = int(value)
    return out


def resolve_sizes(sizes: Mapping[str, Any] | None, kinds: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per-kind split sizes from defaults overridden by `{"train": N}`, `{"shapes.train": N}` or `{"shapes": {"train": N}}`."""
    out = {k: dict(DEFAULT_SIZES[k]) for k in kinds}
    for key, value in (sizes or {}).items():
        if isinstance(value, Mapping):
            targets = [(key, split, n) for split, n in value.items()]
        elif "." in key:
            kind, _, split = key.partition(".")
            targets = [(kind, split, value)]
        else:
            targets = [(kind, key, value) for kind in kinds]
        for kind, split, n in targets:
            if kind not in KINDS:
                raise ValueError(f"unknown synth kind {kind!r} in sizes; known: {', '.join(KINDS)}")
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r} in sizes; known: {', '.join(SPLITS)}")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"size of {kind}.{split} must be an integer >= 0, got {n!r}")
            if kind in out:
                out[kind][split] = n
    return out


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The folder's manifest.json if this generator wrote it, else None (missing, unreadable or foreign)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def _run_kind(kind: str, root: Path, seed: int, sizes: dict[str, int], image_size: int, num_frames: int,
              num_points: int) -> KindResult:
    # Imported per kind so generating images never loads open3d or PyAV.
    if kind == "shapes":
        from lamm.datasets.synth import shapes

        return shapes.generate(root, seed, sizes, image_size=image_size)
    if kind == "video":
        from lamm.datasets.synth import video

        return video.generate(root, seed, sizes, image_size=image_size, num_frames=num_frames)
    if kind == "points":
        from lamm.datasets.synth import points

        return points.generate(root, seed, sizes, num_points=num_points)
    from lamm.datasets.synth import digits

    return digits.generate(root, seed, sizes, image_size=image_size)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    sizes: Mapping[str, Any] | None = None,
    kinds: Sequence[str] = KINDS,
    *,
    image_size: int = 64,
    num_frames: int = 8,
    num_points: int = 1024,
) -> dict[str, Any]:
    """Write the chosen kinds under `out_dir` and return the manifest (also written as manifest.json).

    A kind's folder is replaced only if an earlier run of this generator wrote it (it is listed in
    `out_dir/manifest.json`); any other existing folder of that name is an error, never deleted.
    """
    kinds = tuple(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown synth kinds {unknown or '(none given)'}; known: {', '.join(KINDS)}")
    per_kind = resolve_sizes(sizes, kinds)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(root)
    ours = set((previous or {}).get("kinds", {}))
    for kind in kinds:
        target = root / kind
        if target.exists() and any(target.iterdir()) and kind not in ours:
            raise FileExistsError(
                f"{target} exists and was not written by {GENERATOR} (not in {root / 'manifest.json'}); "
                "choose another --out or remove it"
            )

    entries: dict[str, Any] = {}
    for kind in kinds:
        target = root / kind
        partial = root / f".{kind}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        result = _run_kind(kind, partial, seed, per_kind[kind], image_size, num_frames, num_points)
        files = {}
        for split, rows in result.samples.items():
            write_json(partial / f"{split}.json", rows)
            files[split] = f"{kind}/{split}.json"
        tasks = {}
        for name, desc in result.tasks.items():
            counts = {split: sum(r["task"] == name for r in rows) for split, rows in result.samples.items()}
            asked = {split: sum(r["turn_tasks"].count(name) for r in rows) for split, rows in result.samples.items()}
            tasks[name] = {**desc, "counts": counts, "questions": asked}
        entries[kind] = {
            "format_version": FORMAT_VERSION,  # per kind: kinds kept from an earlier run keep theirs
            "seed": seed,
            "media": result.media,
            "files": files,
            "sizes": {split: len(rows) for split, rows in result.samples.items()},
            "params": result.params,
            "tasks": tasks,
        }
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)

    kept = {k: v for k, v in (previous or {}).get("kinds", {}).items() if k not in entries and (root / k).is_dir()}
    all_entries = {k: ({**kept, **entries})[k] for k in KINDS if k in kept or k in entries}
    seeds = {e["seed"] for e in all_entries.values()}
    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seeds.pop() if len(seeds) == 1 else None,
        "kinds": all_entries,
    }
    write_json(root / "manifest.json", manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lamm.datasets.synth --out DIR ...` (the same arguments as `lamm synth`)."""
    import argparse

    from lamm.datasets.synth.cli import add_arguments, run

    parser = argparse.ArgumentParser(prog="lamm synth", description=run.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
