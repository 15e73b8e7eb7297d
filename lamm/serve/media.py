"""`data:` URIs of `image_url` parts -> image bytes, within the server's limits.

Only `data:` URIs are decoded: the server never fetches a URL or opens a local path a client names
(no server-side request forgery, no file disclosure). The byte size is checked on the base64 text,
before decoding; pixel counts are checked by the data pipeline's loader (`lamm.datasets.media`) from
the image header, before the pixels are decoded.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from lamm.serve.schema import ApiError

DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),", re.ASCII)


@dataclass(frozen=True)
class UploadLimits:
    """The largest request body and image the server accepts."""

    max_body_bytes: int = 32 << 20
    max_image_bytes: int = 16 << 20
    max_image_pixels: int = 16_000_000


def decode_image_uri(url: str, param: str, limits: UploadLimits) -> bytes:
    """The bytes of a base64 `data:image/...` URI; ApiError naming `param` for anything else."""
    match = DATA_URI.match(url)
    if match is None:
        scheme = url.split(":", 1)[0].lower() + ":" if ":" in url[:16] else "a bare path"
        raise ApiError(400, f"{param}: only data: URIs are accepted (got {scheme}); this server never fetches URLs "
                       "or reads local files: send the image inline as data:image/png;base64,...", param)
    mime = match["mime"].lower()
    if mime.startswith("video/"):
        raise ApiError(400, f"{param}: a {mime} data URI in an image part; image_url takes images only", param)
    if not mime.startswith("image/"):
        raise ApiError(400, f"{param}: media type {mime or 'missing'!r} is not an image type "
                       "(image/png, image/jpeg, ...)", param)
    if ";base64" not in match["params"].lower():
        raise ApiError(400, f"{param}: the data URI must be base64-encoded (data:{mime};base64,...)", param)
    encoded = url[match.end():]
    size = len(encoded) * 3 // 4
    if size > limits.max_image_bytes:
        raise ApiError(413, f"{param}: the image is about {size:,} bytes, over this server's limit of "
                       f"{limits.max_image_bytes:,}", param)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: the data URI's payload is not valid base64", param) from None
    if not data:
        raise ApiError(400, f"{param}: the image is empty (0 bytes)", param)
    return data
