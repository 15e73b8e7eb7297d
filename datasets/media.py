"""Load raw media: images to RGB PIL, videos to uint8 [F, H, W, C], point clouds to float32 [P, 3+C].

Every failure becomes a `DataError` with a short, one-line cause; the caller adds sample id and field.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from lamm.datasets.errors import DataError
from lamm.datasets.sample import MediaRef

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif")
POINT_EXTS = (".npy", ".ply", ".pcd")


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _short(exc: BaseException) -> str:
    # PIL and PyAV repeat the path in their messages; keep the cause short and on one line.
    text = str(exc).split(":")[0] if isinstance(exc, OSError) and getattr(exc, "filename", None) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _missing(ref: MediaRef) -> DataError | None:
    if ref.data is None and not os.path.exists(ref.path):
        return DataError(f"missing file {ref.path}", reason="missing_file")
    return None


def load_image(ref: MediaRef):
    """An RGB PIL image (forces decoding so truncated files fail here, not in the transform)."""
    from PIL import Image, UnidentifiedImageError

    if (err := _missing(ref)) is not None:
        raise err
    try:
        src = io.BytesIO(ref.data) if ref.data is not None else ref.path
        with Image.open(src) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {ref.path} (cannot identify image file)", reason="corrupt_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {ref.path} ({_short(exc)})", reason="corrupt_image") from None


def _frames_from_folder(path: Path) -> np.ndarray:

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"cannot read video {path} (frame folder has no images)", reason="unreadable_video")
    frames = []
    for f in files:
        frame = load_image(MediaRef("image", str(f), "video"))
        frames.append(np.asarray(frame, dtype=np.uint8))
    if len({fr.shape for fr in frames}) != 1:
        raise DataError(f"cannot read video {path} (frames differ in size)", reason="unreadable_video")
    return np.stack(frames)


def _frames_from_container(ref: MediaRef) -> np.ndarray:
    import av

    src = io.BytesIO(ref.data) if ref.data is not None else ref.path
    try:
        with av.open(src) as container:
            if not container.streams.video:
                raise DataError(f"cannot read video {ref.path} (no video stream)", reason="unreadable_video")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except DataError:
        raise
    except Exception as exc:  # PyAV raises many error types (InvalidDataError, EOFError, ...)
        raise DataError(f"cannot read video {ref.path} ({_short(exc)})", reason="unreadable_video") from None
    if not frames:
        raise DataError(f"cannot read video {ref.path} (no frames decoded)", reason="unreadable_video")
    return np.stack(frames).astype(np.uint8, copy=False)


def load_video(ref: MediaRef) -> np.ndarray:
    """All frames as uint8 [F, H, W, C] from a video file (PyAV) or a folder of frame images.

    Every frame is decoded; the encoder's transform does the uniform frame sampling.
    """
    if (err := _missing(ref)) is not None:
        raise err
    if ref.data is None and os.path.isdir(ref.path):
        return _frames_from_folder(Path(ref.path))
    return _frames_from_container(ref)


def _read_open3d(path: str) -> np.ndarray:
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(path)  # returns an empty cloud (not an error) on failure
    pts = np.asarray(cloud.points, dtype=np.float32)
    if pts.size == 0:
        raise ValueError("no points read")
    if cloud.has_colors():
        pts = np.concatenate([pts, np.asarray(cloud.colors, dtype=np.float32)], axis=1)
    return pts


def load_pointcloud(ref: MediaRef) -> np.ndarray:
    """Points as float32 [P, 3+C] from .npy, .ply or .pcd (colours, if any, become the extra columns)."""
    if (err := _missing(ref)) is not None:
        raise err
    ext = _ext(ref.path)
    try:
        if ext == ".npy":
            src = io.BytesIO(ref.data) if ref.data is not None else ref.path
            pts = np.load(src, allow_pickle=False)
        elif ext in (".ply", ".pcd"):
            if ref.data is None:
                pts = _read_open3d(ref.path)
            else:  # open3d reads only from files
                with tempfile.TemporaryDirectory() as tmp:
                    tmp_path = os.path.join(tmp, "cloud" + ext)
                    Path(tmp_path).write_bytes(ref.data)
                    pts = _read_open3d(tmp_path)
        else:
            raise ValueError(f"unsupported extension {ext!r}, expected one of {', '.join(POINT_EXTS)}")
    except Exception as exc:
        raise DataError(f"cannot read point cloud {ref.path} ({_short(exc)})", reason="bad_pointcloud") from None
    pts = np.asarray(pts)
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[0] == 0:
        raise DataError(f"bad point cloud {ref.path} (expected shape [P, 3+C], found {list(pts.shape)})",
                        reason="bad_pointcloud")
    if not np.issubdtype(pts.dtype, np.number):
        raise DataError(f"bad point cloud {ref.path} (dtype {pts.dtype} is not numeric)", reason="bad_pointcloud")
    pts = pts.astype(np.float32, copy=False)
    bad = ~np.isfinite(pts)
    if bad.any():
        raise DataError(f"bad point cloud {ref.path} ({int(bad.any(1).sum())} points have NaN/inf values)",
                        reason="bad_pointcloud")
    return pts


LOADERS = {"image": load_image, "video": load_video, "pointcloud": load_pointcloud}


def load_media(ref: MediaRef):
    """Load one medium with its modality's loader."""
    return LOADERS[ref.modality](ref)
