"""Token shards on disk: ``shard_NNNNN/`` folders written as documents arrive, read back memory-mapped.

A shard holds ``tokens.bin`` (flat uint16/uint32), ``offsets.npy`` (document starts, plus the end) and
``meta.json`` (the vocabulary, counts, and what reading its rows skipped and why); it is built under a temp
name and appears by one atomic rename, so a killed run leaves only whole shards. ``fusion.data.tokenize``
writes them; ``TokenDocs`` reads them (and mixes several corpora's by index, see ``fusion.data.mixture``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusion.files import read_json, write_json

SHARD_GLOB = "shard_[0-9][0-9][0-9][0-9][0-9]"
TOKENS_FILE, OFFSETS_FILE, META_FILE = "tokens.bin", "offsets.npy", "meta.json"


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """One shard built in a temp folder beside it: documents appended as they come, offsets and meta at the end,
    then one rename (``discard`` drops an unfinished one)."""

    def __init__(self, shard: Path, vocab_size: int) -> None:
        self.shard, self.dtype = shard, token_dtype(vocab_size)
        self.tmp = shard.with_name(f".{shard.name}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._file = open(self.tmp / TOKENS_FILE, "wb")
        self.lengths: list[int] = []

    def add(self, tokens: torch.Tensor) -> None:
        self._file.write(tokens.numpy().astype(self.dtype).tobytes())
        self.lengths.append(len(tokens))

    def finish(self, meta: dict) -> None:
        """Write offsets and ``meta`` (plus dtype and counts), then rename the shard into place."""
        self._file.close()
        offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int64)
        np.save(self.tmp / OFFSETS_FILE, offsets)
        write_json(self.tmp / META_FILE, {**meta, "dtype": self.dtype.name, "documents": len(self.lengths),
                                          "tokens": int(offsets[-1])})
        os.replace(self.tmp, self.shard)

    def discard(self) -> None:
        self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


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
            meta = read_json(shard / META_FILE)
            if vocab_size not in (None, meta["vocab"]["size"]):
                raise ValueError(f"{shard}: vocabulary size {meta['vocab']['size']} differs from {vocab_size}")
            vocab_size = meta["vocab"]["size"]
            tokens = (np.memmap(shard / TOKENS_FILE, dtype=meta["dtype"], mode="r") if meta["tokens"]
                      else np.empty(0, meta["dtype"]))
            parts.append((tokens, np.load(shard / OFFSETS_FILE)))
        return cls(parts, vocab_size)

    @classmethod
    def from_arrays(cls, docs: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
                    vocab_size: int | None = None) -> TokenDocs:
        arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        flat = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
        return cls([(flat, offsets)], vocab_size)

    @classmethod
    def concat(cls, many: Sequence[TokenDocs]) -> TokenDocs:
        """The documents of ``many``, one after the other (their shards shared, not copied)."""
        sizes = {d.vocab_size for d in many} - {None}
        if len(sizes) > 1:
            raise ValueError(f"cannot join token documents of different vocabulary sizes {sorted(sizes)}")
        index, offset = [], 0
        for d in many:
            index.append(d._positions() + offset)
            offset += int(d._part_start[-1])
        return cls([p for d in many for p in d.parts], sizes.pop() if sizes else None,
                   np.concatenate(index) if index else np.empty(0, np.int64))

    def _positions(self) -> np.ndarray:
        """Which stored documents this selection holds, in order."""
        return np.arange(int(self._part_start[-1])) if self._index is None else self._index

    def subset(self, picks: np.ndarray) -> TokenDocs:
        """Documents ``picks`` of this selection, in that order (a document may be picked more than once)."""
        return TokenDocs(self.parts, self.vocab_size, self._positions()[np.asarray(picks, dtype=np.int64)])

    def split(self, eval_fraction: float) -> tuple[TokenDocs, TokenDocs]:
        """(train, held-out) by document: every ``round(1 / eval_fraction)``-th document is held out."""
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
        every = max(2, round(1 / eval_fraction))
        held = np.zeros(len(self), dtype=bool)
        held[every - 1::every] = True
        return self.subset(np.flatnonzero(~held)), self.subset(np.flatnonzero(held))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._index is not None:
            i = int(self._index[i])
        p = int(np.searchsorted(self._part_start, i, side="right")) - 1
        tokens, off = self.parts[p]
        j = i - self._part_start[p]
        return np.asarray(tokens[off[j]:off[j + 1]], dtype=np.int64)
