"""Corpora as raw rows, and raw rows as Documents: JSONL, parquet, ``datasets`` folders and imagefolders.

Sources are JSONL files (our ``segments`` rows or OBELICS-style ``texts``/``images`` rows), parquet files,
folders written by ``datasets.save_to_disk`` and image folders with ``metadata.jsonl`` captions. Rows are read
without decoding images; ``to_document`` decodes one row and names it in any error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusion.document import Document, DocumentError


def read_rows(source: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_row)`` without decoding images; ``to_document`` turns a raw row into a Document."""
    path = Path(source)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{lineno}", line
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", row
    elif path.is_dir():
        yield from _read_hf_dir(path)
    else:
        raise ValueError(f"{path}: unsupported data source (expected .jsonl, .parquet, a datasets "
                         "save_to_disk folder or an imagefolder with metadata.jsonl)")


def _read_hf_dir(path: Path) -> Iterator[tuple[str, Any]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach for the network
    import datasets

    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
    elif (path / "metadata.jsonl").is_file():
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    else:
        raise ValueError(f"{path}: a folder must be a datasets save_to_disk folder or an imagefolder "
                         "with metadata.jsonl")
    for i, row in enumerate(ds):
        yield f"{path}:row {i}", row


def to_document(raw: Any, *, where: str, base_dir: str | os.PathLike | None = None) -> Document:
    """A raw row (JSON line or dict) -> Document; any problem raises DocumentError naming ``where``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DocumentError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise DocumentError(f"{where}: expected an object, got {type(raw).__name__}")
    if "segments" in raw:
        return Document.from_json(raw, base_dir=base_dir, where=where)
    if "texts" in raw:
        return Document.from_obelics(raw, base_dir=base_dir, where=where)
    caption = raw.get("caption", raw.get("text"))
    if "image" in raw and isinstance(caption, str):  # an image-caption pair: caption first, then the image
        return Document.from_obelics({"texts": [caption, None], "images": [None, raw["image"]]},
                                     base_dir=base_dir, where=where)
    raise DocumentError(f"{where}: no 'segments', 'texts'/'images' or 'image'/'caption' columns "
                        f"(keys: {sorted(raw)[:8]})")
