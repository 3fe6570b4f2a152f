"""Token shards on disk: a corpus tokenized once into ``shard_NNNNN/`` folders, read back memory-mapped.

A shard holds ``tokens.bin`` (flat uint16/uint32), ``offsets.npy`` (document starts, plus the end) and
``meta.json``; it appears by one atomic rename, so a re-run skips finished shards. Rows that cannot be read or
tokenized are skipped and counted in the shard's meta.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusion.data.corpus import read_rows, to_document
from fusion.document import Document, DocumentError
from fusion.files import read_json, write_json
from fusion.tokenizers.mixed import MixedTokenizer

log = logging.getLogger(__name__)

SHARD_GLOB = "shard_[0-9][0-9][0-9][0-9][0-9]"
MAX_LOGGED_ERRORS = 20  # per shard; the count in meta.json is always complete


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenize_corpus(sources: Sequence[str | os.PathLike], tokenizer: MixedTokenizer, out_dir: str | os.PathLike,
                    *, docs_per_shard: int = 4096, batch_size: int = 64) -> list[Path]:
    """Tokenize ``sources`` into ``out_dir/shard_NNNNN/``; finished shards are skipped. Returns all shard dirs.

    Shard k holds raw rows ``[k * docs_per_shard, (k+1) * docs_per_shard)`` of the concatenated sources, so
    shard boundaries do not depend on which rows turn out to be corrupt.
    """
    if docs_per_shard <= 0 or batch_size <= 0:
        raise ValueError(f"docs_per_shard and batch_size must be positive, got {docs_per_shard}, {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.vocab.to_dict()
    shards, chunk, k = [], [], 0

    def flush() -> None:
        nonlocal k
        shard = out_dir / f"shard_{k:05d}"
        if (shard / "meta.json").is_file():
            if read_json(shard / "meta.json")["vocab"] != vocab:
                raise ValueError(f"{shard} was written with another vocabulary; use a fresh output folder")
            log.info("%s: already done, skipped", shard)
        else:
            _write_shard(shard, chunk, tokenizer, batch_size)
        shards.append(shard)
        chunk.clear()
        k += 1

    for source in sources:
        base_dir = Path(source).parent
        for where, raw in read_rows(source):
            chunk.append((where, raw, base_dir))
            if len(chunk) == docs_per_shard:
                flush()
    if chunk:
        flush()
    return shards


def _write_shard(shard: Path, rows: list, tokenizer: MixedTokenizer, batch_size: int) -> None:
    docs, errors = [], []
    for where, raw, base_dir in rows:
        try:
            docs.append(to_document(raw, where=where, base_dir=base_dir))
        except DocumentError as e:
            errors.append(str(e))
    encoded = []
    for i in range(0, len(docs), batch_size):
        encoded += _encode(tokenizer, docs[i:i + batch_size], errors)
    for msg in errors[:MAX_LOGGED_ERRORS]:
        log.warning("skipped corrupt row: %s", msg)
    if errors:
        log.warning("%s: skipped %d corrupt row(s) of %d", shard.name, len(errors), len(rows))
    dtype = token_dtype(tokenizer.vocab.size)
    lengths = np.array([len(t) for t in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = torch.cat(encoded).numpy().astype(dtype) if encoded else np.empty(0, dtype)

    tmp = shard.with_name(f".{shard.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokens.tofile(tmp / "tokens.bin")
        np.save(tmp / "offsets.npy", offsets)
        write_json(tmp / "meta.json", {"vocab": tokenizer.vocab.to_dict(), "dtype": dtype.name,
                                       "documents": len(encoded), "tokens": int(offsets[-1]), "rows": len(rows),
                                       "skipped": len(errors), "skipped_examples": errors[:MAX_LOGGED_ERRORS]})
        os.replace(tmp, shard)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode(tokenizer: MixedTokenizer, docs: list[Document], errors: list[str]) -> list[torch.Tensor]:
    """One batched encode; on failure, document by document so only the bad ones are dropped (and counted)."""
    try:
        return tokenizer.encode_batch(docs)
    except (ValueError, TypeError, OSError):
        out = []
        for doc in docs:
            try:
                out.append(tokenizer.encode(doc))
            except (ValueError, TypeError, OSError) as e:
                errors.append(f"cannot tokenize a document: {e}")
        return out


# -------------------------------------------------------------- token docs


class TokenDocs:
    """Random access to tokenized documents, from shard folders (memory-mapped) or from in-memory arrays."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]], vocab_size: int | None = None,
                 index: np.ndarray | None = None) -> None:
        self.parts = list(parts)  # (flat tokens, offsets with n+1 entries) per shard
        self.vocab_size = vocab_size
        lengths = np.concatenate([np.diff(off) for _, off in self.parts] or [np.empty(0, np.int64)])
        counts = np.array([len(off) - 1 for _, off in self.parts], dtype=np.int64)
        self._part_start = np.concatenate([[0], np.cumsum(counts)])
        self._index = index  # a selection of documents (see split), None = all
        self.lengths = lengths if index is None else lengths[index]

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> TokenDocs:
        """All ``shard_NNNNN`` folders under ``directory`` (in name order)."""
        shards = sorted(Path(directory).glob(SHARD_GLOB))
        if not shards:
            raise FileNotFoundError(f"{directory}: no token shards (shard_NNNNN/) found; run tokenize first")
        parts, vocab_size = [], None
        for shard in shards:
            meta = read_json(shard / "meta.json")
            if vocab_size not in (None, meta["vocab"]["size"]):
                raise ValueError(f"{shard}: vocabulary size {meta['vocab']['size']} differs from {vocab_size}")
            vocab_size = meta["vocab"]["size"]
            tokens = (np.memmap(shard / "tokens.bin", dtype=meta["dtype"], mode="r") if meta["tokens"]
                      else np.empty(0, meta["dtype"]))
            parts.append((tokens, np.load(shard / "offsets.npy")))
        return cls(parts, vocab_size)

    @classmethod
    def from_arrays(cls, docs: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
                    vocab_size: int | None = None) -> TokenDocs:
        arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        flat = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
        return cls([(flat, offsets)], vocab_size)

    def split(self, eval_fraction: float) -> tuple[TokenDocs, TokenDocs]:
        """(train, held-out) by document: every ``round(1 / eval_fraction)``-th document is held out."""
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
        every = max(2, round(1 / eval_fraction))
        held = np.zeros(len(self), dtype=bool)
        held[every - 1::every] = True
        base = np.arange(len(self)) if self._index is None else self._index
        return (TokenDocs(self.parts, self.vocab_size, base[~held]),
                TokenDocs(self.parts, self.vocab_size, base[held]))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._index is not None:
            i = int(self._index[i])
        p = int(np.searchsorted(self._part_start, i, side="right")) - 1
        tokens, off = self.parts[p]
        j = i - self._part_start[p]
        return np.asarray(tokens[off[j]:off[j + 1]], dtype=np.int64)
