"""A corpus read leniently: each source's raw rows, parsed into text / image parts, bad ones skipped and counted.

``read_rows(source, report)`` yields ``(where, raw row)`` without opening images (JSONL lines, parquet / datasets
rows, text-file lines, synthetic Documents); ``parse_row`` checks a raw row's shape (``fusion.rows``) and returns
its parts, or None after counting why it was skipped. ``corpus_texts`` is what the BPE trainer reads; documents
and images (which need the image opener) come from ``fusion.data.opener``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusion.data.report import IngestReport, unknown_key
from fusion.data.spec import DEFAULT_SYNTHETIC_DOCS, SYNTHETIC, CorpusSpec, Source
from fusion.document import IMAGE_KIND, TEXT_KIND, Document, Text
from fusion.rows import INVALID_JSON, DocumentError, Part, row_parts

log = logging.getLogger(__name__)


def read_rows(source: Source, report: IngestReport | None = None) -> Iterator[tuple[str, Any]]:
    """``(where, raw row)`` of one source, images unopened; line-level repairs are counted in ``report``."""
    from fusion.data import readers

    report = report if report is not None else IngestReport()
    path = Path(source.path)
    if source.format == "jsonl":
        yield from readers.jsonl_rows(path, report)
    elif source.format == "text":
        yield from readers.text_rows(path, report)
    elif source.format == "parquet":
        yield from readers.parquet_rows(path)
    elif source.format == SYNTHETIC:
        from fusion.data.synthetic import SyntheticWorld

        docs = SyntheticWorld(seed=source.seed).documents(source.n or DEFAULT_SYNTHETIC_DOCS)
        yield from ((f"synthetic:{i}", doc) for i, doc in enumerate(docs))
    else:
        from fusion.data.hf import hf_rows

        yield from hf_rows(source)


def parse_row(raw: Any, where: str, report: IngestReport, renames: dict[str, str] | None = None) -> list[Part] | None:
    """A raw row's checked parts (columns renamed by ``renames`` first); None (counted by cause) when the row
    cannot be used. Unknown keys are ignored, counted, and logged once per key."""
    if isinstance(raw, Document):
        return [(TEXT_KIND, s.text) if isinstance(s, Text) else (IMAGE_KIND, s.image) for s in raw.segments]
    try:
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DocumentError(f"{where}: invalid JSON ({e.msg} at column {e.colno})", INVALID_JSON) from None
        if renames and isinstance(raw, dict):
            raw = {renames.get(k, k): v for k, v in raw.items()}
        parts, unknown = row_parts(raw, where)
    except DocumentError as e:
        report.skip(e.cause, str(e))
        return None
    for key in sorted(unknown):
        report.repair(unknown_key(key), f"{where}: unknown key {key!r}")
    return parts


def rows_of(spec: CorpusSpec, report: IngestReport) -> Iterator[tuple[Source, str, list[Part]]]:
    """``(source, where, parts)`` of every usable row of every source, in order; ``report.rows`` counts rows."""
    for source in spec.sources:
        for where, raw in read_rows(source, report):
            report.rows += 1
            parts = parse_row(raw, where, report, source.renames)
            if parts is not None:
                yield source, where, parts


def corpus_texts(spec: CorpusSpec, report: IngestReport) -> Iterator[str]:
    """The text of each usable row (its text parts joined; images are not opened): a BPE training corpus."""
    for _, _, parts in rows_of(spec, report):
        text = "".join(v for kind, v in parts if kind == TEXT_KIND)
        if text:
            report.kept += 1
            yield text
