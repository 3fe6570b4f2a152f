"""Fingerprints that say whether token shards still match their inputs, without reading the data: files by size
and modification time, hub datasets by revision, tokenizers by the hashes of their saved files."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fusion.data.spec import HF_PREFIX, Source
from fusion.files import file_record

log = logging.getLogger(__name__)


def digest(obj: object) -> str:
    """A short sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stat(paths: Iterable[Path], root: Path | None = None) -> dict:
    """Count, total size, and a hash of every file's (name, size, mtime): any edit, addition or removal shows."""
    lines, total = [], 0
    for p in sorted(paths):
        st = p.stat()
        total += st.st_size
        lines.append(f"{p.relative_to(root) if root else p}\t{st.st_size}\t{st.st_mtime_ns}")
    return {"files": len(lines), "bytes": total, "stat": digest(lines)}


def _walk(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(folder) for f in files]


def source_fingerprint(source: Source) -> dict:
    """What a source's token shards depend on besides its spec: its files' sizes and mtimes, or a hub revision."""
    if source.format in ("jsonl", "parquet", "text"):
        return _stat([Path(source.path)])
    if source.format in ("saved", "imagefolder"):
        return _stat(_walk(Path(source.path)), Path(source.path))
    if source.format == "hf" and (source.data_files or source.data_dir):
        files = [Path(p) for p in glob.glob(source.data_files)] if source.data_files else []
        return _stat(files + (_walk(Path(source.data_dir)) if source.data_dir else []))
    if source.format == "hf":
        return {"revision": source.revision or _hub_revision(source)}
    return {}  # synthetic: its spec (n, seed) says it all


def _hub_revision(source: Source) -> str | None:
    """The commit a hub dataset's default branch is at (None offline: the shards then trust the name)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.path.removeprefix(HF_PREFIX)).sha
    except Exception as e:  # noqa: BLE001 - offline, private or unknown: the warning says what to do
        log.warning("%s: cannot read its hub revision (%s); pass ?revision=COMMIT to pin the data its token "
                    "shards are checked against", source.path, type(e).__name__)
        return None


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizers' saved files (text model, VQ config and weights) and the vocabulary layout."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: file_record(p)["sha256"] for p in sorted(Path(tmp).iterdir())}
    return digest({"files": files, "vocab": tokenizer.vocab.to_dict()})
