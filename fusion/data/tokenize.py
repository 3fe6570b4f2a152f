"""A corpus -> token shards, streaming, one folder per source, keyed by a fingerprint of everything they depend on.

``OUT/<source name>-<fingerprint>/shard_NNNNN/`` holds raw rows ``[k * docs_per_shard, (k+1) * docs_per_shard)``
of that source; the fingerprint covers the source's spec, its files' sizes and mtimes (or hub revision), the
tokenizers' hashes and the shard size, so other data or tokenizers go to a fresh folder and old shards are never
reused by mistake. A re-run skips finished shards (a killed run resumes); ``source.json`` marks a source done.
``OUT/corpus.json`` lists the sources of the last run, their counts and what was skipped and why.

Memory stays bounded whatever the shard size: rows are read one by one, images decoded and shrunk one at a time
(``ImageOpener``) and VQ-encoded ``image_batch`` at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fusion.data.corpus import parse_row, read_rows
from fusion.data.fetch import FetchConfig
from fusion.data.fingerprint import digest, source_fingerprint, tokenizer_fingerprint
from fusion.data.opener import PREFETCH_ROWS, ImageOpener
from fusion.data.report import CORPUS_FILE, UNTOKENIZABLE, IngestReport, write_corpus_report
from fusion.data.shards import META_FILE, SHARD_GLOB, ShardWriter, shard_name
from fusion.data.spec import CorpusSpec, Source
from fusion.document import Document
from fusion.files import read_json, write_json
from fusion.tokenizers.mixed import MixedTokenizer

log = logging.getLogger(__name__)

SOURCE_DONE = "source.json"
LAYOUT = 2  # bump when the shard contents change meaning: old shards then get a new fingerprint
DOCS_PER_ENCODE = 64  # documents handed to the tokenizer at once (their images are capped by image_batch)


@dataclass(frozen=True)
class TokenizeOptions:
    """How a corpus is cut into shards and batched through the tokenizers (``tokenize_corpus``'s keywords)."""

    docs_per_shard: int = field(default=4096, metadata={"help": "raw rows per token shard (the unit of resuming)"})
    image_batch: int = field(default=16, metadata={"help": "images VQ-encoded at once; with one full-size image "
                                                            "decoded at a time, this bounds tokenizing's memory "
                                                            "(lower it for large VQ presets on a CPU)"})


def tokenize_corpus(spec: CorpusSpec | str | Sequence[str], tokenizer: MixedTokenizer, out_dir: str | os.PathLike,
                    *, docs_per_shard: int = 4096, image_batch: int = 16, fetch: FetchConfig | None = None,
                    progress: bool = True) -> dict:
    """Tokenize every source of ``spec`` into ``out_dir`` (finished shards kept); writes and returns
    ``corpus.json`` (spec, merged report, one record per source). A source none of whose rows can be used is an
    error that says why."""
    if docs_per_shard <= 0 or image_batch <= 0:
        raise ValueError(f"docs_per_shard and image_batch must be positive, got {docs_per_shard}, {image_batch}")
    spec = spec if isinstance(spec, CorpusSpec) else CorpusSpec.parse(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_fingerprint(tokenizer)
    opener = ImageOpener(spec, tokenizer.image, fetch=fetch)  # the rows bar shows progress; no nested bars
    records = []
    with logging_redirect_tqdm():
        for source in spec.sources:
            key = f"{source.name}-{source_key(source, tok, docs_per_shard)}"
            record = _tokenize_source(source, out / key, tokenizer, opener, docs_per_shard, image_batch, progress)
            records.append({**record, "source": source.to_dict()})  # this run's weight, not the first run's
    report = IngestReport()
    for r in records:
        report.merge(IngestReport.from_dict(r["report"]))
    write_corpus_report(out, spec, report, tokenizer=tok, sources=records)
    unused = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name not in {r["folder"] for r in records})
    if unused:
        log.info("%s: not used by this corpus (other data, tokenizers or shard size): %s", out, ", ".join(unused))
    return read_json(out / CORPUS_FILE)


def source_key(source: Source, tokenizer_hash: str, docs_per_shard: int) -> str:
    """The fingerprint of a source's shards (its mixture weight left out: reweighting needs no re-tokenizing)."""
    spec = {k: v for k, v in source.to_dict().items() if k != "weight"}
    return digest({"source": spec, "data": source_fingerprint(source), "tokenizer": tokenizer_hash,
                   "docs_per_shard": docs_per_shard, "layout": LAYOUT})


def _tokenize_source(source: Source, folder: Path, tokenizer: MixedTokenizer, opener: ImageOpener,
                     docs_per_shard: int, image_batch: int, progress: bool) -> dict:
    if (folder / SOURCE_DONE).is_file():
        log.info("%s: already tokenized in %s", source.path, folder)
        return read_json(folder / SOURCE_DONE)
    folder.mkdir(parents=True, exist_ok=True)
    lines, logged = IngestReport(), set()  # ``lines``: the reader's repairs of the row it just yielded
    builder, k, finished = None, -1, IngestReport()  # ``finished``: the counts of the shards written so far
    bar = tqdm(desc=f"tokenize {source.name}", unit="row", disable=not progress, dynamic_ncols=True)
    try:
        for i, (where, raw) in enumerate(read_rows(source, lines)):
            if i // docs_per_shard != k:  # a new shard starts
                if builder is not None:
                    finished.merge(builder.finish())
                k = i // docs_per_shard
                done = (folder / shard_name(k) / META_FILE).is_file()
                builder = None if done else _ShardBuilder(folder / shard_name(k), tokenizer, opener, source,
                                                          image_batch, IngestReport(logged))
            if builder is not None:
                builder.report.merge(lines)
                builder.add(where, raw)
                bar.set_postfix(kept=finished.kept + builder.report.kept, refresh=False,
                                skipped=sum(finished.skipped.values()) + sum(builder.report.skipped.values()))
            lines.clear()
            bar.update(1)
        if builder is not None:
            builder.finish()
    except BaseException:
        if builder is not None:
            builder.writer.discard()
        raise
    finally:
        bar.close()
    return _finish_source(source, folder)


def _finish_source(source: Source, folder: Path) -> dict:
    """Sum the shards' counts and reports into ``source.json``; refuse a source with nothing usable."""
    metas = [read_json(s / META_FILE) for s in sorted(folder.glob(SHARD_GLOB))]
    report = IngestReport()
    for m in metas:
        report.merge(IngestReport.from_dict(m["report"]))
    if report.kept == 0:
        raise ValueError(f"{source.path}: " + ("it has no rows" if report.rows == 0 else
                                               f"none of its {report.rows} rows could be used:\n"
                                               + report.summary(source.path)))
    record = {"source": source.to_dict(), "folder": folder.name, "documents": sum(m["documents"] for m in metas),
              "tokens": sum(m["tokens"] for m in metas), "report": report.to_dict()}
    write_json(folder / SOURCE_DONE, record)
    log.info("%s", report.summary(f"{source.path} -> {folder}"))
    return record


class _ShardBuilder:
    """Rows of one shard -> documents (images shrunk as opened) -> ids, written as they come."""

    def __init__(self, shard: Path, tokenizer: MixedTokenizer, opener: ImageOpener, source: Source,
                 image_batch: int, report: IngestReport) -> None:
        self.tokenizer, self.opener, self.source, self.image_batch = tokenizer, opener, source, image_batch
        self.report = report
        self.writer = ShardWriter(shard, tokenizer.vocab.size)
        self.rows: list[tuple[str, list]] = []  # parsed, waiting for their URLs to be fetched together
        self.docs: list[tuple[str, Document]] = []  # opened, waiting to be encoded together

    def add(self, where: str, raw) -> None:
        self.report.rows += 1
        parts = parse_row(raw, where, self.report, self.source.renames)
        if parts is not None:
            self.rows.append((where, parts))
        if len(self.rows) == PREFETCH_ROWS:
            self._open_rows()

    def _open_rows(self) -> None:
        self.opener.prefetch([parts for _, parts in self.rows])
        for where, parts in self.rows:
            doc = self.opener.document(parts, self.source.base_dir, where, self.report)
            if doc is not None:
                self.docs.append((where, doc))
                if sum(len(d.images) for _, d in self.docs) >= self.image_batch or len(self.docs) == DOCS_PER_ENCODE:
                    self._encode()
        self.rows.clear()

    def _encode(self) -> None:
        for ids in _encode(self.tokenizer, self.docs, self.report):
            self.writer.add(ids)
            self.report.kept += 1
        self.docs.clear()

    def finish(self) -> IngestReport:
        """Encode what is pending and write the shard; returns its report."""
        self._open_rows()
        self._encode()
        self.writer.finish({"vocab": self.tokenizer.vocab.to_dict(), "rows": self.report.rows,
                            "report": self.report.to_dict()})
        return self.report


def _encode(tokenizer: MixedTokenizer, docs: list[tuple[str, Document]], report: IngestReport) -> list[torch.Tensor]:
    """One batched encode; on failure, document by document so only the bad ones are dropped (and counted)."""
    try:
        return tokenizer.encode_batch([d for _, d in docs])
    except (ValueError, TypeError, OSError):
        out = []
        for where, doc in docs:
            try:
                out.append(tokenizer.encode(doc))
            except (ValueError, TypeError, OSError) as e:
                report.skip(UNTOKENIZABLE, f"{where}: {e}")
        return out
