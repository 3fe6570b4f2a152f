"""The images of parsed rows, opened one at a time and at once shrunk for the image tokenizer.

An image ref (path relative to the row's file, bytes, data URI, PIL image, or URL through the fetch cache) is
decoded, turned upright, and, when a tokenizer is given, resized by its policy at once, so only one full-size
decoded image is alive at a time whatever the batch or shard size. An image that cannot be used is dropped
from its document and counted by cause; a document left empty is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image as PILImage

from fusion.data.corpus import rows_of
from fusion.data.fetch import URL_FAILED, FetchConfig, Fetcher, ImageCache, default_cache
from fusion.data.report import ANIMATED, CROPPED, IngestReport
from fusion.data.spec import CorpusSpec
from fusion.document import IMAGE_KIND, TEXT_KIND, Document, Image, Text
from fusion.images import ImageError, load_image
from fusion.rows import EMPTY, Part, is_url
from fusion.tokenizers.image import MOSTLY_DROPPED, ImageTokenizer, kept_fraction

PREFETCH_ROWS = 64  # rows whose image URLs are fetched together (concurrently) before their images are opened


class ImageOpener:
    """Image refs -> PIL images (prepared for ``tokenizer`` when given); every failure counted in a report."""

    def __init__(self, spec: CorpusSpec, tokenizer: ImageTokenizer | None = None, *,
                 fetch: FetchConfig | None = None, progress: bool = False) -> None:
        cache = ImageCache(spec.image_cache or default_cache())
        self.fetcher = Fetcher(cache, fetch, enabled=spec.fetch, progress=progress)
        self.tokenizer = tokenizer

    def prefetch(self, rows: list[list[Part]]) -> None:
        """Fetch the image URLs of these rows that the cache lacks, concurrently."""
        self.fetcher.ensure(v for parts in rows for kind, v in parts if kind == IMAGE_KIND and is_url(v))

    def _resolve(self, url: str, where: str, report: IngestReport) -> Path | None:
        found = self.fetcher.status(url)
        if found is None:
            self.fetcher.ensure([url])
            found = self.fetcher.status(url)
        if isinstance(found, Path):
            return found
        report.skip(URL_FAILED, f"{where}: {url}: {found}")
        return None

    def open(self, ref, base_dir: Path | None, where: str, report: IngestReport) -> PILImage.Image | None:
        """The image (prepared when the opener has a tokenizer), or None after counting why it is unusable."""
        animated = False
        if not isinstance(ref, PILImage.Image):
            url = f"{ref}: " if is_url(ref) else ""
            source = self._resolve(ref, where, report) if url else ref
            if source is None:
                return None
            try:
                ref, animated = load_image(source, base_dir=base_dir)
            except ImageError as e:
                report.skip(e.cause, f"{where}: {url}{e}")
                return None
        if animated:
            report.repair(ANIMATED, f"{where}: an animated image")
        if self.tokenizer is None:
            return ref
        if kept_fraction(ref.size, self.tokenizer.cfg.resize) < MOSTLY_DROPPED:
            report.repair(CROPPED, f"{where}: {ref.width}x{ref.height}, the centre crop keeps "
                                   f"{kept_fraction(ref.size, self.tokenizer.cfg.resize):.0%} (resize='pad' keeps all)")
        small = self.tokenizer.prepare(ref)
        if small is not ref:
            ref.close()  # free the full-size pixels now, not whenever the last reference goes
        return small

    def document(self, parts: list[Part], base_dir: Path | None, where: str,
                 report: IngestReport) -> Document | None:
        """The row's Document, unusable images left out; None (counted) when nothing is left."""
        segments = []
        for i, (kind, value) in enumerate(parts):
            if kind == TEXT_KIND:
                segments.append(Text(value))
            elif (image := self.open(value, base_dir, f"{where}, part {i}", report)) is not None:
                segments.append(Image(image))
        doc = Document(segments)
        if doc.is_empty():
            report.skip(EMPTY, f"{where}: nothing is left once its unusable images are dropped")
            return None
        return doc


def corpus_images(spec: CorpusSpec, opener: ImageOpener, report: IngestReport) -> Iterator[PILImage.Image]:
    """Every usable image of the corpus, in order (URLs fetched ``PREFETCH_ROWS`` rows at a time)."""
    rows = rows_of(spec, report)
    while chunk := [row for _, row in zip(range(PREFETCH_ROWS), rows, strict=False)]:
        opener.prefetch([parts for _, _, parts in chunk])
        for source, where, parts in chunk:
            for i, (kind, value) in enumerate(parts):
                if kind == IMAGE_KIND:
                    image = opener.open(value, source.base_dir, f"{where}, part {i}", report)
                    if image is not None:
                        report.kept += 1
                        yield image
