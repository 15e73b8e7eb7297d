"""`points`: point clouds of open3d primitives; class, count and relative-size questions.

Every primitive is built to fit the unit ball centred at its origin (bounding radius 1), rotated at
random, scaled by `scale` (so `scale` is its bounding radius) and moved to `centre`. Points are
sampled uniformly by area over the union of the meshes with open3d (seeded per sample), shuffled,
and saved as float32 `[P, 3]` .npy files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lamm.datasets.synth.common import (
    KindResult,
    TaskSpec,
    balanced_answer,
    make_sample,
    sample_rng,
    task_schedule,
)

KIND = "points"
PRIMITIVES = ("sphere", "box", "cylinder", "cone", "torus")
COUNTS = ("1", "2", "3")
GAP = 1.0  # minimum free space between the bounding balls of two objects in one cloud

TASKS = (
    TaskSpec("class3d", "classification3d", "What object is this?", PRIMITIVES, 2),
    TaskSpec("count3d", "counting", "How many objects are there?", COUNTS, 2),
    TaskSpec("size3d", "VQA", "Which object is larger, the left or the right one?", ("left", "right"), 2),
)


def unit_primitive(name: str):
    """An open3d TriangleMesh of the primitive, centred, with bounding radius 1."""
    import open3d as o3d

    tm = o3d.geometry.TriangleMesh
    if name == "sphere":
        return tm.create_sphere(radius=1.0, resolution=16)
    if name == "box":
        side = 2 / math.sqrt(3)
        return tm.create_box(side, side, side).translate((-side / 2, -side / 2, -side / 2))
    if name == "cylinder":
        return tm.create_cylinder(radius=0.6, height=1.6, resolution=24)
    if name == "cone":  # base rim at (0.8, z=-0.6) and apex at z=1.0 both lie on the unit sphere
        return tm.create_cone(radius=0.8, height=1.6, resolution=24).translate((0, 0, -0.6))
    if name == "torus":
        return tm.create_torus(torus_radius=0.7, tube_radius=0.3, radial_resolution=24, tubular_resolution=12)
    raise ValueError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")


def _object(rng: np.random.Generator, kind: str, scale: float, centre: list[float]) -> dict[str, Any]:
    angles = [round(float(a), 4) for a in rng.uniform(0, 2 * math.pi, size=3)]
    return {"type": kind, "scale": round(scale, 4), "centre": [round(c, 4) for c in centre], "rotation_xyz": angles}


def _scene(rng: np.random.Generator, task: str, target: str | None = None) -> list[dict[str, Any]]:
    """The objects of one cloud; `target` fixes the answer to `task`."""
    if task == "class3d":
        kind = target or PRIMITIVES[rng.integers(len(PRIMITIVES))]
        return [_object(rng, kind, float(rng.uniform(0.7, 1.0)), [0.0, 0.0, 0.0])]
    if task == "size3d":
        kind = PRIMITIVES[rng.integers(len(PRIMITIVES))]
        small = float(rng.uniform(0.4, 0.6))
        large = small * float(rng.uniform(1.6, 2.0))
        left_large = target == "left" if target else bool(rng.random() < 0.5)
        s_left, s_right = (large, small) if left_large else (small, large)
        jitter = rng.uniform(-0.3, 0.3, size=4)
        return [
            _object(rng, kind, s_left, [-(s_left + GAP / 2), float(jitter[0]), float(jitter[1])]),
            _object(rng, kind, s_right, [s_right + GAP / 2, float(jitter[2]), float(jitter[3])]),
        ]
    n = int(target or rng.integers(1, len(COUNTS) + 1))
    for _ in range(1000):
        objs: list[dict[str, Any]] = []
        for _ in range(n):
            s = float(rng.uniform(0.5, 0.8))
            c = [float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-0.5, 0.5))]
            if all(math.dist(c, o["centre"]) >= s + o["scale"] + GAP for o in objs):
                objs.append(_object(rng, PRIMITIVES[rng.integers(len(PRIMITIVES))], s, c))
            else:
                break
        if len(objs) == n:
            return objs
    raise RuntimeError(f"could not place {n} objects apart")


def sample_cloud(objects: list[dict[str, Any]], num_points: int, seed: int) -> np.ndarray:
    """float32 `[num_points, 3]` sampled uniformly over the objects' surfaces (deterministic per seed)."""
    import open3d as o3d

    mesh = None
    for o in objects:
        m = unit_primitive(o["type"])
        m.rotate(o3d.geometry.get_rotation_matrix_from_xyz(o["rotation_xyz"]), center=(0.0, 0.0, 0.0))
        m.scale(o["scale"], center=(0.0, 0.0, 0.0))
        m.translate(o["centre"])
        mesh = m if mesh is None else mesh + m
    o3d.utility.random.seed(seed)
    return np.asarray(mesh.sample_points_uniformly(number_of_points=num_points).points, dtype=np.float32)


def _answer(task: str, objects: list[dict[str, Any]]) -> str:
    if task == "class3d":
        return objects[0]["type"]
    if task == "count3d":
        return str(len(objects))
    left, right = objects
    return "left" if left["scale"] > right["scale"] else "right"


def generate(root: Path, seed: int, sizes: dict[str, int], num_points: int = 1024) -> KindResult:
    """Write `root/pcl/<split>/<i>.npy` and return the samples."""
    if num_points < 64:
        raise ValueError(f"points num_points must be >= 64, got {num_points}")
    schedule = task_schedule(TASKS)
    samples: dict[str, list[dict[str, Any]]] = {}
    for split, n in sizes.items():
        (root / "pcl" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            rng = sample_rng(seed, KIND, split, i)
            spec = schedule[i % len(schedule)]
            objects = _scene(rng, spec.task, balanced_answer(seed, KIND, split, i, schedule))
            cloud = sample_cloud(objects, num_points, int(rng.integers(2**31 - 1)))
            cloud = cloud[rng.permutation(num_points)]  # no object-by-object order for a model to exploit
            rel = f"pcl/{split}/{i:06d}.npy"
            np.save(root / rel, cloud)
            meta = {"num_points": num_points, "objects": objects}
            rows.append(make_sample(f"{KIND}_{split}_{i:06d}", "pcl", rel, spec, _answer(spec.task, objects), meta))
        samples[split] = rows
    return KindResult(
        samples=samples,
        media="pcl",
        tasks={t.task: t.describe() for t in TASKS},
        params={"num_points": num_points, "primitives": list(PRIMITIVES), "gap": GAP},
    )
