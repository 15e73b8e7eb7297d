"""`video`: short clips of one shape moving; direction, speed and colour-change questions.

Clips are MPEG-4 Part 2 (FFmpeg's built-in `mpeg4`, fixed quantiser 2, yuv420p) in .mp4, encoded
single-threaded with the bit-exact flags, so a seed gives byte-identical files for a given FFmpeg
build. libx264 is only the fallback: measured here, it produced different (equally decodable) bytes for
about one clip in a few thousand between runs even single-threaded, which breaks byte-identity. Without any usable encoder the clip is written as a folder
of PNG frames instead and the sample's "video" path names that folder.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lamm.datasets.synth.common import (
    KindResult,
    TaskSpec,
    balanced_answer,
    make_sample,
    sample_rng,
    seeded_followups,
    task_schedule,
)
from lamm.datasets.synth.shapes import BACKGROUND_MAX, COLOURS, SHAPES, shape_mask

KIND = "video"
DIRECTIONS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
SPEEDS = {"slow": (1.5, 2.5), "fast": (4.0, 5.0)}  # pixels per frame at 64 px, scaled with the size
FPS = 8

TASKS = (
    TaskSpec("direction", "classification", "Which way does the shape move?", tuple(DIRECTIONS), 1),
    TaskSpec("colour_change", "VQA", "Does the shape change colour?", ("yes", "no"), 1),
    TaskSpec("speed", "classification", "Does the shape move slow or fast?", tuple(SPEEDS), 1),
)


@lru_cache(maxsize=1)
def video_codec() -> str | None:
    """The first encoder among mpeg4, libx264 that works offline here, or None."""
    import av

    for name in ("mpeg4", "libx264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # missing from this FFmpeg build
            continue
    return None


def write_mp4(path: Path, frames: list[np.ndarray], codec: str) -> None:
    """Encode RGB uint8 frames `[H, W, 3]` reproducibly, at high quality, into an .mp4 file."""
    import av

    opts = {"crf": "12", "preset": "medium"} if codec == "libx264" else {}
    with av.open(str(path), "w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=FPS, options=opts)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # multi-threaded encoders may split frames differently
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "mpeg4":  # constant quantiser 2 (near-lossless); 118 is FFmpeg's FF_QP2LAMBDA
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.global_quality = 2 * 118
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path) -> list[np.ndarray]:
    """Decode a clip written by this module (an .mp4 or a folder of PNG frames) to RGB uint8 frames."""
    if path.is_dir():
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.glob("*.png"))]
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _clip(
    rng: np.random.Generator, size: int, num_frames: int, task: str = "", target: str | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One clip's RGB frames and ground truth; `target` fixes the answer to `task`."""
    k = size / 64
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    speed_name = list(SPEEDS)[rng.integers(len(SPEEDS))]
    changes = bool(rng.random() < 0.5)
    if target is not None:
        direction = target if task == "direction" else direction
        speed_name = target if task == "speed" else speed_name
        changes = target == "yes" if task == "colour_change" else changes
    lo, hi = SPEEDS[speed_name]
    rmax = round(11 * k)
    r = int(rng.integers(round(8 * k), rmax + 1))
    dx, dy = DIRECTIONS[direction]
    # Long clips slow every speed down by one factor, so "slow" and "fast" stay apart and in frame.
    fit = min(1.0, (size - 2 * rmax - 4) / (SPEEDS["fast"][1] * k * (num_frames - 1)))
    speed = float(rng.uniform(lo * k * fit, hi * k * fit))
    travel = speed * (num_frames - 1)
    # Start so that the whole path stays inside the frame.
    along = float(rng.uniform(r + 2, size - r - 2 - travel))
    across = float(rng.integers(r + 2, size - r - 2))
    if dx:
        x0, y0 = (along if dx > 0 else size - 1 - along), across
    else:
        x0, y0 = across, (along if dy > 0 else size - 1 - along)
    change_frame = int(rng.integers(2, num_frames - 1)) if changes else None
    new_colour = names[(names.index(colour) + 1 + rng.integers(len(names) - 1)) % len(names)] if changes else colour
    background = tuple(int(v) for v in rng.integers(0, BACKGROUND_MAX + 1, size=3))
    frames, centres, colours = [], [], []
    for t in range(num_frames):
        cx, cy = round(x0 + dx * speed * t), round(y0 + dy * speed * t)
        c = new_colour if change_frame is not None and t >= change_frame else colour
        img = np.empty((size, size, 3), np.uint8)
        img[:] = background
        img[shape_mask(shape, cx, cy, r, size)] = COLOURS[c]
        frames.append(img)
        centres.append([cx, cy])
        colours.append(c)
    meta = {
        "image_size": size, "frames": num_frames, "fps": FPS, "background": list(background),
        "shape": shape, "radius": r, "direction": direction, "speed": speed_name,
        "speed_px_per_frame": round(speed, 3), "change_frame": change_frame,
        "centres": centres, "colours": colours,
    }
    return frames, meta


def _answer(task: str, meta: dict[str, Any]) -> str:
    if task == "direction":
        return meta["direction"]
    if task == "colour_change":
        return "yes" if meta["change_frame"] is not None else "no"
    return meta["speed"]


def generate(root: Path, seed: int, sizes: dict[str, int], image_size: int = 64, num_frames: int = 8) -> KindResult:
    """Write `root/videos/<split>/<i>.mp4` and return the samples: one question per test clip; a
    training clip asks its question first, then the other two (follow-ups)."""
    if num_frames < 4:
        raise ValueError(f"video num_frames must be >= 4, got {num_frames}")
    if image_size < 32 or image_size % 2:
        raise ValueError(f"video image_size must be even and >= 32 (yuv420p), got {image_size}")
    codec = video_codec()
    schedule = task_schedule(TASKS)
    samples: dict[str, list[dict[str, Any]]] = {}
    for split, n in sizes.items():
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            rng = sample_rng(seed, KIND, split, i)
            spec = schedule[i % len(schedule)]
            frames, meta = _clip(rng, image_size, num_frames, spec.task, balanced_answer(seed, KIND, split, i, schedule))
            if codec is None:
                rel = f"videos/{split}/{i:06d}"
                (root / rel).mkdir()
                for t, f in enumerate(frames):
                    Image.fromarray(f).save(root / rel / f"{t:03d}.png")
            else:
                rel = f"videos/{split}/{i:06d}.mp4"
                write_mp4(root / rel, frames, codec)
            # Every clip answers all three questions (each drawn uniformly unless the first fixed it).
            ordered = seeded_followups(rng, TASKS, lambda t: _answer(t, meta)) if split == "train" else []
            followups = [(t, a) for t, a in ordered if t is not spec]
            rows.append(make_sample(f"{KIND}_{split}_{i:06d}", "video", rel, spec, _answer(spec.task, meta), meta,
                                    followups=followups))
        samples[split] = rows
    return KindResult(
        samples=samples,
        media="video",
        tasks={t.task: t.describe() for t in TASKS},
        params={"image_size": image_size, "frames": num_frames, "fps": FPS, "codec": codec or "png-frames"},
    )
