"""Interleaved documents: an ordered list of Text and Image segments, with JSONL and OBELICS-style I/O.

JSONL holds one document a line: ``{"segments": [{"text": "..."}, {"image": "path or data:image/...;base64,..."}]}``.
Relative image paths resolve against the JSONL file's folder. Rows come in four shapes (``row_parts``): our
``segments``; OBELICS-style ``{"texts": [...], "images": [...]}`` of equal length where each position holds
exactly one non-None entry; an image-caption pair ``{"image": ..., "caption" or "text": ...}``; and a text row
``{"text": ...}``. A bad row raises ``DocumentError`` naming the row, whose ``cause`` says what kind of problem
it is (ingestion counts skipped rows by it).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage

from fusion.files import atomic_path
from fusion.images import ImageError, open_image, png_ready, to_data_uri
from fusion.rows import (
    IMAGE_KIND,
    IMAGE_URL,
    INVALID_JSON,
    TEXT_KIND,
    DocumentError,
    Part,
    is_url,
    row_parts,
    strip_bom,
)

__all__ = ["IMAGE_KIND", "TEXT_KIND", "Document", "DocumentError", "Image", "Segment", "Text", "read_jsonl",
           "write_html", "write_jsonl"]

# A segment's kind: a part's tag, a JSONL segment's key, a run of ids (``tokenizers.grammar`` re-exports them).


@dataclass(frozen=True)
class Text:
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Text segment needs a str, got {type(self.text).__name__}")


@dataclass(frozen=True, eq=False)
class Image:
    image: PILImage.Image

    def __post_init__(self) -> None:
        if not isinstance(self.image, PILImage.Image):
            raise TypeError(f"Image segment needs a PIL.Image, got {type(self.image).__name__}")

    def __eq__(self, other: object) -> bool:
        """Pixel equality (mode, size and bytes), so round trips can be checked exactly."""
        return (isinstance(other, Image) and self.image.mode == other.image.mode
                and self.image.size == other.image.size and self.image.tobytes() == other.image.tobytes())


Segment = Text | Image


@dataclass
class Document:
    """An ordered sequence of Text and Image segments."""

    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def of(cls, *parts: str | PILImage.Image | Segment) -> Document:
        """Build from plain strings and PIL images (or segments): ``Document.of("A cat", img)``."""
        segs: list[Segment] = []
        for p in parts:
            if isinstance(p, (Text, Image)):
                segs.append(p)
            elif isinstance(p, str):
                segs.append(Text(p))
            elif isinstance(p, PILImage.Image):
                segs.append(Image(p))
            else:
                raise TypeError(f"a document part must be str, PIL.Image, Text or Image, got {type(p).__name__}")
        return cls(segs)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.segments if isinstance(s, Text)]

    @property
    def images(self) -> list[PILImage.Image]:
        return [s.image for s in self.segments if isinstance(s, Image)]

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def is_empty(self) -> bool:
        return not any(isinstance(s, Image) or s.text for s in self.segments)

    # ------------------------------------------------------------- JSON rows

    def to_json(self) -> dict:
        """The JSONL row; images become lossless PNG data URIs."""
        return {"segments": [{TEXT_KIND: s.text} if isinstance(s, Text) else {IMAGE_KIND: to_data_uri(s.image)}
                             for s in self.segments]}

    @classmethod
    def from_row(cls, row: dict, *, base_dir: str | os.PathLike | None = None, where: str = "row") -> Document:
        """A row of any shape (``fusion.rows``) -> Document, its images opened (relative paths from ``base_dir``)."""
        parts, _ = row_parts(row, where)
        return cls.from_parts(parts, base_dir=base_dir, where=where)

    @classmethod
    def from_parts(cls, parts: Sequence[Part], *, base_dir: str | os.PathLike | None = None,
                   where: str = "row") -> Document:
        """Checked ("text", str) / ("image", ref) parts -> Document; an image that cannot be opened raises."""
        return cls([Text(v) if kind == TEXT_KIND else Image(_open(v, base_dir, f"{where}, part {i}"))
                    for i, (kind, v) in enumerate(parts)])

    @classmethod
    def from_json(cls, row: dict, *, base_dir: str | os.PathLike | None = None, where: str = "row") -> Document:
        """Our JSONL row ``{"segments": [...]}``."""
        if not isinstance(row, dict) or "segments" not in row:
            raise DocumentError(f"{where}: expected an object with a 'segments' list")
        return cls.from_row(row, base_dir=base_dir, where=where)

    @classmethod
    def from_obelics(cls, row: dict, *, base_dir: str | os.PathLike | None = None, where: str = "row") -> Document:
        """An OBELICS-style row: parallel ``texts`` / ``images`` lists, one non-None entry per position."""
        if not isinstance(row, dict) or "texts" not in row:
            raise DocumentError(f"{where}: expected an object with 'texts' and 'images' lists")
        return cls.from_row(row, base_dir=base_dir, where=where)

    def to_obelics(self) -> dict:
        return {"texts": [s.text if isinstance(s, Text) else None for s in self.segments],
                "images": [to_data_uri(s.image) if isinstance(s, Image) else None for s in self.segments]}

    # -------------------------------------------------------------- viewing

    def to_html(self, path: str | os.PathLike | None = None, *, title: str = "fusion document") -> str:
        """A standalone HTML page (images inline as data URIs); written atomically if ``path`` is given."""
        page = _html_page(title, [self])
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(page)
        return page

    def to_markdown(self, directory: str | os.PathLike) -> Path:
        """Write ``document.md`` plus one PNG per image into ``directory``; return the markdown path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines, n = [], 0
        for s in self.segments:
            if isinstance(s, Text):
                lines.append(s.text)
            else:
                name = f"image_{n:03d}.png"
                png_ready(s.image).save(directory / name)
                lines.append(f"![image {n}]({name})")
                n += 1
        out = directory / "document.md"
        with atomic_path(out) as tmp:
            tmp.write_text("\n\n".join(lines) + "\n")
        return out


def _open(source, base_dir, where: str) -> PILImage.Image:
    if isinstance(source, PILImage.Image):
        return source
    if is_url(source):
        raise DocumentError(f"{where}: {source} is a URL; read the corpus through fusion.data, which fetches image "
                            f"URLs into a cache (or run `fusion fetch-images CORPUS --cache DIR` first)", IMAGE_URL)
    try:
        return open_image(source, base_dir=base_dir)
    except ImageError as e:
        raise DocumentError(f"{where}: {e}", e.cause) from None


def _html_page(title: str, docs: Sequence[Document], captions: Sequence[str] | None = None) -> str:
    body = []
    for i, doc in enumerate(docs):
        parts = [f"<h3>{html.escape(captions[i])}</h3>"] if captions else []
        for s in doc.segments:
            if isinstance(s, Text):
                parts.append(f"<span class='t'>{html.escape(s.text)}</span>")
            else:
                parts.append(f"<img src='{to_data_uri(s.image)}' width='{max(96, s.image.width)}'>")
        body.append("<div class='doc'>" + "".join(parts) + "</div>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto} .doc{border-bottom:1px solid #ccc;"
             "padding:.6em 0} .t{white-space:pre-wrap} img{image-rendering:pixelated;vertical-align:middle;"
             "margin:0 .3em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


def write_html(path: str | os.PathLike, docs: Sequence[Document], *, title: str = "fusion",
               captions: Sequence[str] | None = None) -> None:
    """Many documents on one HTML page, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(_html_page(title, docs, captions))


# ------------------------------------------------------------------ JSONL files


def read_jsonl(path: str | os.PathLike) -> Iterator[Document]:
    """Yield documents from a JSONL file (rows of any shape); a bad line raises DocumentError naming its line.

    Strict: one bad line stops the reading. ``fusion.data`` reads corpora leniently (bad rows skipped, counted).
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = strip_bom(raw)[0].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DocumentError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DocumentError(f"{where}: invalid JSON ({e.msg})", INVALID_JSON) from None
            yield Document.from_row(row, base_dir=path.parent, where=where)


def write_jsonl(path: str | os.PathLike, docs: Iterable[Document]) -> int:
    """Write documents atomically, one JSON object a line; returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc.to_json()) + "\n")
            n += 1
    return n
