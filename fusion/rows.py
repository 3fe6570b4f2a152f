"""Raw rows of a corpus and their four shapes, read into ordered text / image parts without opening any image.

- ``{"segments": [{"text": "..."}, {"image": ref}, ...]}``: our JSONL rows;
- ``{"texts": [...], "images": [...]}``: OBELICS-style, equal lengths, exactly one non-None entry per position;
- ``{"image": ref, "caption" or "text": "..."}``: an image-caption pair (caption first; no caption: the image);
- ``{"text": "..."}``: a text document.

An image ``ref`` is a path, a URL, a ``data:image/...;base64,`` URI, bytes, a PIL image, or a ``datasets`` image
dict (``{"bytes": ..., "path": ...}``). A bad row raises ``DocumentError`` naming the row; its ``cause`` says
what kind of problem it is, so ingestion can count skipped rows by cause.
"""

from __future__ import annotations

from typing import Any

from PIL import Image as PILImage

# why a row could not be used (``DocumentError.cause``)
INVALID_JSON = "invalid JSON"
NULL_VALUE = "null value"
WRONG_TYPE = "wrong type"
MALFORMED = "malformed row"
EMPTY = "empty document"
IMAGE_URL = "image URL not fetched"
URL_SCHEMES = ("http://", "https://")

TEXT_KIND, IMAGE_KIND = "text", "image"  # a part's kind, also its key in a JSONL segment
Part = tuple[str, Any]  # (TEXT_KIND, str) or (IMAGE_KIND, a str path / URL / data URI, bytes or a PIL image)
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark


def strip_bom(line: bytes) -> tuple[bytes, bool]:
    """A JSONL line without a leading byte-order mark, and whether it had one. Any line may: files joined with
    ``cat`` carry one at each join, not only on their first line."""
    return (line[len(BOM):], True) if line.startswith(BOM) else (line, False)


class DocumentError(ValueError):
    """A document or row that cannot be read; the message names the row, ``cause`` the kind of problem."""

    def __init__(self, message: str, cause: str = MALFORMED) -> None:
        super().__init__(message)
        self.cause = cause


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(URL_SCHEMES)


def row_parts(row: Any, where: str) -> tuple[list[Part], set[str]]:
    """A raw row -> its ordered ("text", str) / ("image", ref) parts and the keys it has but no shape uses."""
    if not isinstance(row, dict):
        raise DocumentError(f"{where}: expected an object, got {type(row).__name__}", WRONG_TYPE)
    if "segments" in row:
        parts, used = _segments(row["segments"], where), {"segments"}
    elif "texts" in row or "images" in row:
        parts, used = _obelics(row.get("texts"), row.get("images"), where), {"texts", "images"}
    elif "image" in row:
        caption = row.get("caption", row.get("text"))
        image = [_part(IMAGE_KIND, row["image"], where)]
        parts = image if caption is None else [_part(TEXT_KIND, caption, where), *image]
        used = {"image", "caption", "text"}
    elif "text" in row:
        parts, used = [_part(TEXT_KIND, row["text"], where)], {"text"}
    else:
        raise DocumentError(f"{where}: no 'segments', 'texts'/'images', 'image' or 'text' column "
                            f"(keys: {sorted(row)[:8]})")
    if not any(kind == IMAGE_KIND or value for kind, value in parts):
        raise DocumentError(f"{where}: the document is empty", EMPTY)
    return parts, set(row) - used


def _segments(segments: Any, where: str) -> list[Part]:
    if not isinstance(segments, list):
        raise DocumentError(f"{where}: 'segments' must be a list, got {type(segments).__name__}",
                            NULL_VALUE if segments is None else WRONG_TYPE)
    parts = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or len(seg) != 1 or next(iter(seg)) not in (TEXT_KIND, IMAGE_KIND):
            raise DocumentError(f"{where}, segment {i}: expected {{'text': ...}} or {{'image': ...}}, got {seg!r:.80}")
        (kind, value), = seg.items()
        parts.append(_part(kind, value, f"{where}, segment {i}"))
    return parts


def _obelics(texts: Any, images: Any, where: str) -> list[Part]:
    if texts is None or images is None:
        raise DocumentError(f"{where}: 'texts' and 'images' must both be set", NULL_VALUE)
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        raise DocumentError(f"{where}: 'texts' and 'images' must be lists of equal length")
    parts = []
    for i, (t, im) in enumerate(zip(texts, images, strict=True)):
        if (t is None) == (im is None):
            raise DocumentError(f"{where}, position {i}: exactly one of texts[{i}] / images[{i}] must be set")
        parts.append(_part(TEXT_KIND, t, f"{where}, position {i}") if t is not None
                     else _part(IMAGE_KIND, im, f"{where}, position {i}"))
    return parts


def _part(kind: str, value: Any, where: str) -> Part:
    """A checked part: text must be a str; an image ref is unwrapped from a ``datasets`` dict."""
    if kind == IMAGE_KIND and isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        value = value.get("bytes") or value.get("path")
    if value is None or (kind == IMAGE_KIND and value in ("", b"")):
        raise DocumentError(f"{where}: the {kind} is null", NULL_VALUE)
    if kind == TEXT_KIND and not isinstance(value, str):
        raise DocumentError(f"{where}: text must be a string, got {type(value).__name__}", WRONG_TYPE)
    if kind == IMAGE_KIND and not isinstance(value, (str, bytes, PILImage.Image)):
        raise DocumentError(f"{where}: an image must be a path, URL, data URI, bytes or PIL image, got "
                            f"{type(value).__name__}", WRONG_TYPE)
    return kind, value
