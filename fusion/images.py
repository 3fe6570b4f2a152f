"""Reading images from anywhere and turning any PIL mode into 8-bit RGB, in one place.

Documented conversions (never a silent drop):
- L / 1 / P / CMYK / YCbCr / LAB / HSV: converted by PIL to RGB (palette images via RGBA first).
- LA / RGBA / PA / P with transparency: alpha-blended on white.
- I;16* / I / F (16-bit, 32-bit, float grayscale): scaled by the type's range to 8 bits.
Zero-size images, images over ``MAX_PIXELS`` and files PIL cannot decode raise ``ImageError``.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192: larger images are refused, not silently thumbnailed
DATA_URI_PREFIX = "data:image/"


class ImageError(ValueError):
    """An image that cannot be used: unreadable, empty, or too large."""


def check_size(image: PILImage.Image, what: str = "image") -> None:
    w, h = image.size
    if w == 0 or h == 0:
        raise ImageError(f"{what} has zero size ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS}")


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL mode -> 8-bit RGB (alpha blended on white, high bit depths scaled)."""
    check_size(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _deep_gray_to_rgb(image)
    if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _deep_gray_to_rgb(image: PILImage.Image) -> PILImage.Image:
    """16/32-bit or float grayscale -> RGB, scaled by the range the values use (16-bit, 8-bit or [0, 1])."""
    arr = np.asarray(image, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    top = 65535.0 if image.mode.startswith("I;16") or peak > 255 else (255.0 if peak > 1 else 1.0)
    arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return PILImage.fromarray(arr, "L").convert("RGB")


def open_image(source: str | os.PathLike | bytes, *, base_dir: str | os.PathLike | None = None) -> PILImage.Image:
    """Open a path, ``data:image/...;base64,`` URI or raw bytes; decode fully so errors surface now."""
    if isinstance(source, bytes):
        stream, name = io.BytesIO(source), "<bytes>"
    elif isinstance(source, str) and source.startswith(DATA_URI_PREFIX):
        header, _, payload = source.partition(",")
        if not header.endswith(";base64"):
            raise ImageError(f"data URI {header[:40]!r} is not base64")
        try:
            stream, name = io.BytesIO(base64.b64decode(payload, validate=True)), header
        except ValueError as e:
            raise ImageError(f"data URI has invalid base64: {e}") from None
    else:
        path = Path(source)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        stream, name = open(path, "rb"), str(path)
    try:
        with stream:
            image = PILImage.open(stream)
            check_size(image, name)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"cannot decode image {name}: {e}") from None
    except PILImage.DecompressionBombError as e:
        raise ImageError(f"image {name} is too large: {e}") from None
    return image


def to_data_uri(image: PILImage.Image) -> str:
    """Lossless PNG data URI (exact round trip through ``open_image``)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
