"""Small helpers for tests and examples: dummy encoder transforms and writers of tiny real media files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lamm.batch import MediaSpec


def image_transform(img, size: int = 32) -> torch.Tensor:
    """PIL RGB -> float [3, size, size] in [0, 1]."""
    arr = np.asarray(img.resize((size, size)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def video_transform(frames: np.ndarray, num_frames: int = 4, size: int = 32) -> torch.Tensor:
    """uint8 [F, H, W, C] -> float [num_frames, 3, size, size], frames sampled uniformly."""
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255.0
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def point_transform(points: np.ndarray, num_points: int = 128) -> torch.Tensor:
    """[P, 3+C] -> [num_points, 3] xyz centred and scaled to the unit sphere, resampled with replacement."""
    xyz = points[:, :3]
    xyz = xyz - xyz.mean(0)
    xyz = xyz / max(float(np.linalg.norm(xyz, axis=1).max()), 1e-6)
    idx = np.random.default_rng(0).choice(len(xyz), num_points, replace=len(xyz) < num_points)
    return torch.from_numpy(xyz[idx].astype(np.float32))


def dummy_media_specs(projected_tokens: dict[str, int] | None = None) -> dict[str, MediaSpec]:
    """MediaSpecs for all three modalities with the dummy transforms above (and K projected tokens each)."""
    k = {"image": 4, "video": 6, "pointcloud": 3, **(projected_tokens or {})}
    return {
        "image": MediaSpec(image_transform, k["image"]),
        "video": MediaSpec(video_transform, k["video"]),
        "pointcloud": MediaSpec(point_transform, k["pointcloud"]),
    }


def write_image(path: Path, color: tuple[int, int, int] = (255, 0, 0), size: int = 16) -> Path:
    """A solid-colour PNG/JPEG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def write_video(path: Path, num_frames: int = 8, size: int = 32, fps: int = 8) -> Path:
    """A tiny real MPEG-4 video of a moving bright square (mpeg4 encodes offline everywhere)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = np.zeros((size, size, 3), dtype=np.uint8)
            frame[4:12, 2 + 2 * i: 10 + 2 * i] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_points(path: Path, num_points: int = 200, seed: int = 0, colors: bool = False) -> Path:
    """A point cloud as .npy, or .ply/.pcd through open3d."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(num_points, 3)).astype(np.float32)
    if path.suffix == ".npy":
        np.save(path, np.concatenate([pts, rng.random((num_points, 3), dtype=np.float32)], 1) if colors else pts)
        return path
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    if colors:
        cloud.colors = o3d.utility.Vector3dVector(rng.random((num_points, 3)))
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"open3d could not write {path}")
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def _colour_record(key: str, colour: str) -> dict:
    return {"id": key, "conversations": [{"from": "human", "value": "<image>\nWhat colour is the image?"},
                                         {"from": "gpt", "value": colour}]}


def write_colour_shards(folder: Path, num_shards: int, per_shard: int, stem: str = "train") -> list[str]:
    """WebDataset tar shards `<stem>-<i>.tar` of solid-colour images asked for their colour; returns
    every sample id (unique over the shards)."""
    import io
    import json
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names, ids = list(COLOURS), []
    for s in range(num_shards):
        with tarfile.open(folder / f"{stem}-{s}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"{stem}{s}_{j}"
                colour = names[(s + j) % len(names)]
                png = io.BytesIO()
                Image.new("RGB", (16, 16), COLOURS[colour]).save(png, format="PNG")
                for name, data in ((f"{key}.json", json.dumps(_colour_record(key, colour)).encode()),
                                   (f"{key}.png", png.getvalue())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                ids.append(key)
    return ids


def write_colour_jsonl_shards(folder: Path, num_shards: int, per_shard: int, stem: str = "train") -> list[str]:
    """JSONL shards `<stem>-<i>.jsonl` of the same colour records, images in `folder/images/`; returns the ids."""
    import json

    names, ids = list(COLOURS), []
    for colour in names:
        write_image(folder / "images" / f"{colour}.png", COLOURS[colour])
    for s in range(num_shards):
        lines = []
        for j in range(per_shard):
            key = f"{stem}{s}_{j}"
            colour = names[(s + j) % len(names)]
            lines.append(json.dumps({**_colour_record(key, colour), "image": f"images/{colour}.png"}))
            ids.append(key)
        (folder / f"{stem}-{s}.jsonl").write_text("\n".join(lines) + "\n")
    return ids
