"""Reading images from anywhere, and converting any PIL mode: to 8-bit RGB for the tokenizer, to a mode PNG can
hold for output, in one place.

Reading: EXIF orientation is applied (phone photos come upright); an animated image keeps its first frame and
says so (``load_image`` returns whether it was animated). Zero-size images, images over ``MAX_PIXELS`` and
files PIL cannot decode raise ``ImageError``, whose ``cause`` names the kind of failure.

Documented conversions to RGB (never a silent drop):
- L / 1 / P / CMYK / YCbCr / LAB / HSV: converted by PIL to RGB (palette images via RGBA first).
- LA / RGBA / PA / P with transparency: alpha-blended on white.
- I;16* / I / F (16-bit, 32-bit, float grayscale): scaled by the type's range to 8 bits.
Output (``to_data_uri``, ``png_ready``): modes PNG holds stay as they are; modes with alpha become RGBA, deep
grayscale becomes 16-bit, the rest (CMYK, YCbCr, LAB, HSV) RGB.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192: larger images are refused, not silently thumbnailed
DATA_URI_PREFIX = "data:image/"
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})
# why an image could not be used (``ImageError.cause``); ingestion counts skipped images by these
IMAGE_MISSING = "image missing"
IMAGE_UNREADABLE = "image unreadable"
IMAGE_UNDECODABLE = "image undecodable"
IMAGE_OVERSIZED = "image oversized"


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, undecodable, empty or too large (see ``cause``)."""

    def __init__(self, message: str, cause: str = IMAGE_UNDECODABLE) -> None:
        super().__init__(message)
        self.cause = cause


def check_size(image: PILImage.Image, what: str = "image") -> None:
    w, h = image.size
    if w == 0 or h == 0:
        raise ImageError(f"{what} has zero size ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS}", IMAGE_OVERSIZED)


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
        return _deep_gray(image, 8).convert("RGB")
    if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        rgba = _to_rgba(image)
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_rgba(image: PILImage.Image) -> PILImage.Image:
    """Any mode with alpha -> RGBA (PIL converts premultiplied La only to LA)."""
    return (image.convert("LA") if image.mode == "La" else image).convert("RGBA")


def _deep_gray(image: PILImage.Image, bits: int) -> PILImage.Image:
    """16/32-bit or float grayscale -> L (8 bits) or I;16, scaled by the range the values use (16-bit, 8-bit or
    [0, 1])."""
    arr = np.asarray(image, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    top = 65535.0 if image.mode.startswith("I;16") or peak > 255 else (255.0 if peak > 1 else 1.0)
    if bits == 8:
        return PILImage.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))  # L
    return PILImage.fromarray(np.clip(arr / top * 65535.0 + 0.5, 0, 65535).astype(np.uint16))  # I;16


def png_ready(image: PILImage.Image) -> PILImage.Image:
    """The image in a mode PNG can hold: itself if it can; RGBA for modes with alpha; I;16 for deep grayscale;
    RGB otherwise (CMYK, YCbCr, LAB, HSV)."""
    mode = image.mode
    if mode in PNG_MODES:
        return image
    if mode in ("PA", "La", "RGBa"):
        return _to_rgba(image)
    if mode.startswith("I") or mode == "F":
        return _deep_gray(image, 16)
    return to_rgb(image)


def _stream(source: str | os.PathLike | bytes, base_dir: str | os.PathLike | None) -> tuple[io.IOBase, str]:
    """A readable binary stream for a path, a ``data:image/...;base64,`` URI or raw bytes, and its name."""
    if isinstance(source, bytes):
        return io.BytesIO(source), "<bytes>"
    if isinstance(source, str) and source.startswith(DATA_URI_PREFIX):
        header, _, payload = source.partition(",")
        if not header.endswith(";base64"):
            raise ImageError(f"data URI {header[:40]!r} is not base64")
        try:
            return io.BytesIO(base64.b64decode(payload, validate=True)), header
        except ValueError as e:
            raise ImageError(f"data URI has invalid base64: {e}") from None
    path = Path(source)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        raise ImageError(f"image file not found: {path}", IMAGE_MISSING)
    try:
        return open(path, "rb"), str(path)
    except OSError as e:  # a folder, no permission
        raise ImageError(f"cannot read image file {path}: {e.strerror or e}", IMAGE_UNREADABLE) from None


def load_image(source: str | os.PathLike | bytes, *,
               base_dir: str | os.PathLike | None = None) -> tuple[PILImage.Image, bool]:
    """``(image, animated)`` from a path, data URI or raw bytes: decoded fully so errors surface now, EXIF
    orientation applied, the first frame of an animated image (``animated`` says it had more)."""
    stream, name = _stream(source, base_dir)
    try:
        with stream:
            image = PILImage.open(stream)
            check_size(image, name)
            animated = bool(getattr(image, "is_animated", False))  # leaves the image at its first frame
            image.load()
    except ImageError:
        raise
    except PILImage.DecompressionBombError as e:
        raise ImageError(f"image {name} is too large: {e}", IMAGE_OVERSIZED) from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot decode image {name}: not in an image format PIL reads") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "corrupt" or "truncated"
        raise ImageError(f"cannot decode image {name}: {e}") from None
    ImageOps.exif_transpose(image, in_place=True)
    return image, animated


def open_image(source: str | os.PathLike | bytes, *, base_dir: str | os.PathLike | None = None) -> PILImage.Image:
    """``load_image``'s image; an animated image's first frame with a warning."""
    image, animated = load_image(source, base_dir=base_dir)
    if animated:
        log.warning("%.80s is animated: its first frame is used", source if isinstance(source, (str, Path))
                    else "an image given as bytes")
    return image


def to_data_uri(image: PILImage.Image) -> str:
    """Lossless PNG data URI of ``png_ready(image)`` (exact round trip through ``open_image`` for PNG modes)."""
    buf = io.BytesIO()
    png_ready(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
