"""Load raw media: images to RGB PIL, videos to uint8 [F, H, W, C], point clouds to float32 [P, 3+C].

Every failure becomes a `DataError` with a short, one-line cause; the caller adds sample id and field.
Media over the `MediaLimits` (pixels, frames, duration, points, file size) are refused before they are
decoded where the header tells, so one hostile file cannot exhaust memory.
"""
from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lamm.datasets.errors import DataError
from lamm.datasets.sample import MediaRef

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif")
POINT_EXTS = (".npy", ".ply", ".pcd")




@dataclass(frozen=True)
class MediaLimits:
    """The largest medium a loader accepts (the `data.media_limits` config node; null = no limit)."""

    max_pixels: int | None = 50_000_000  # below PIL's decompression-bomb warning (89.5 Mpx)
    max_frames: int | None = 1024  # decoded frames of one video
    max_video_seconds: float | None = 600.0
    max_points: int | None = 2_000_000
    max_file_bytes: int | None = 1 << 30  # 1 GiB per image, video or point-cloud file

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "MediaLimits":
        """Defaults overridden by `node`; an unknown key is refused (a typo would silently lift no limit)."""
        node = dict(node or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ValueError(f"unknown key(s) in data.media_limits: {', '.join(unknown)}; "
                             f"expected {', '.join(sorted(known))}")
        return cls(**node)


# One set per process: the loaders are called from the processor, eval scenarios and chat alike, so the
# limits are process-wide (DataLoader workers inherit them); `build_dataset` installs the data config's.
_LIMITS = [MediaLimits()]


def set_media_limits(limits: MediaLimits) -> None:
    """Use `limits` for every medium loaded from now on in this process (and workers it starts)."""
    _LIMITS[0] = limits


def media_limits() -> MediaLimits:
    """The limits in force."""
    return _LIMITS[0]


def _over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _check_file_size(ref: MediaRef, kind: str) -> None:
    limit = media_limits().max_file_bytes
    if limit is None or (ref.data is None and os.path.isdir(ref.path)):
        return
    size = len(ref.data) if ref.data is not None else os.path.getsize(ref.path)
    if size > limit:
        raise DataError(f"{kind} {ref.path} is {size:,} bytes, over data.media_limits.max_file_bytes={limit:,}",
                        reason="media_limit")


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
    _check_file_size(ref, "image")
    limit = media_limits().max_pixels
    try:
        src = io.BytesIO(ref.data) if ref.data is not None else ref.path
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's own bomb check, as an error
            with Image.open(src) as img:  # reads the header only: the size is known before decoding
                width, height = img.size
                if _over(width * height, limit):
                    raise DataError(f"image {ref.path} is {width}x{height} = {width * height:,} pixels, over "
                                    f"data.media_limits.max_pixels={limit:,}", reason="media_limit")
                img.load()
                return img.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {ref.path} refused as a decompression bomb ({_short(exc)})",
                        reason="media_limit") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {ref.path} (cannot identify image file)", reason="corrupt_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {ref.path} ({_short(exc)})", reason="corrupt_image") from None


def _frames_from_folder(path: Path) -> np.ndarray:

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"cannot read video {path} (frame folder has no images)", reason="unreadable_video")
    _check_frames(path, len(files))
    frames = []
    for f in files:
        frame = load_image(MediaRef("image", str(f), "video"))
        frames.append(np.asarray(frame, dtype=np.uint8))
    if len({fr.shape for fr in frames}) != 1:
        raise DataError(f"cannot read video {path} (frames differ in size)", reason="unreadable_video")
    return np.stack(frames)


def _check_frames(path: Any, frames: int) -> None:
    limit = media_limits().max_frames
    if _over(frames, limit):
        raise DataError(f"video {path} has over {limit:,} frames (data.media_limits.max_frames)", reason="media_limit")


def _check_duration(ref: MediaRef, container: Any, stream: Any) -> None:
    """Refuse a video longer than max_video_seconds, from the container's header (before decoding)."""
    limit = media_limits().max_video_seconds
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # PyAV: microseconds
    if seconds is not None and _over(seconds, limit):
        raise DataError(f"video {ref.path} lasts {seconds:.1f} s, over data.media_limits.max_video_seconds={limit:g}",
                        reason="media_limit")


def _frames_from_container(ref: MediaRef) -> np.ndarray:
    import av

    _check_file_size(ref, "video")
    src = io.BytesIO(ref.data) if ref.data is not None else ref.path
    try:
        with av.open(src) as container:
            if not container.streams.video:
                raise DataError(f"cannot read video {ref.path} (no video stream)", reason="unreadable_video")
            stream = container.streams.video[0]
            _check_duration(ref, container, stream)
            frames = []
            for frame in container.decode(stream):
                _check_frames(ref.path, len(frames) + 1)
                frames.append(frame.to_ndarray(format="rgb24"))
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
    _check_file_size(ref, "point cloud")
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
    limit = media_limits().max_points
    if _over(pts.shape[0], limit):
        raise DataError(f"point cloud {ref.path} has {pts.shape[0]:,} points, over data.media_limits.max_points={limit:,}",
                        reason="media_limit")
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
