"""Raw rows of local files: JSONL and plain text read line by line as bytes, parquet in record batches.

A line's bytes are decoded alone, so a byte that is not UTF-8 costs only itself: it is dropped, the line and
the rest of the file are kept, and the repair is counted. A UTF-8 byte-order mark is removed wherever a line
starts with one (files concatenated from editors' output carry them mid-file too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusion.data.report import BOM, NON_UTF8, IngestReport
from fusion.rows import strip_bom

PARQUET_BATCH = 64  # rows decoded from parquet at a time (OBELICS rows may embed image bytes)


def _line(raw: bytes, where: str, report: IngestReport) -> str:
    raw, had_bom = strip_bom(raw)
    if had_bom:
        report.repair(BOM, f"{where}: a UTF-8 byte-order mark")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        report.repair(NON_UTF8, f"{where}: {e.reason} at byte {e.start}")
        return raw.decode("utf-8", errors="ignore")


def jsonl_rows(path: Path, report: IngestReport) -> Iterator[tuple[str, str]]:
    """``(where, JSON text)`` of each non-blank line; parsing is left to the row's consumer."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _line(raw, where, report)
            if line.strip():
                yield where, line


def text_rows(path: Path, report: IngestReport) -> Iterator[tuple[str, dict]]:
    """Each non-blank line of a plain-text file as a text row ``{"text": line}`` (newline removed)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _line(raw, where, report).rstrip("\r\n")
            if line.strip():
                yield where, {"text": line}


def parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row
