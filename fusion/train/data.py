"""Training data: interleaved corpora -> token shards on disk -> packed, shuffled, rank-sharded batches.

Sources are JSONL files (our ``segments`` rows or OBELICS-style ``texts``/``images`` rows), parquet files,
folders written by ``datasets.save_to_disk`` and image folders with ``metadata.jsonl`` captions. A shard is
a folder ``shard_NNNNN/`` holding ``tokens.bin`` (flat uint16/uint32), ``offsets.npy`` (document starts, plus
the end) and ``meta.json``; it appears by one atomic rename, so a re-run skips finished shards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.document import Document, DocumentError
from fusion.io import read_json, write_json
from fusion.tokenizers.mixed import MixedTokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PAD_DOC = -1  # doc id of padding positions
SHARD_GLOB = "shard_[0-9][0-9][0-9][0-9][0-9]"
MAX_LOGGED_ERRORS = 20  # per shard; the count in meta.json is always complete


# ---------------------------------------------------------------- raw rows


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


# ------------------------------------------------------------- shard writing


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


# ----------------------------------------------------------------- packing


class PackedDataset:
    """Documents packed into sequences of ``seq_len + 1`` tokens, shuffled per epoch, sharded by rank.

    Each epoch shuffles document order with ``seed + epoch``, concatenates, and cuts consecutive chunks, so
    every token appears exactly once per epoch (a long document continues in the next sequence, where its
    positions restart). Rank r takes global sequences r, r + world_size, ...; a global batch is
    ``world_size * batch_size`` sequences. ``drop_last`` drops the incomplete final global batch; otherwise
    it is filled with padding sequences (all targets ignored). Iteration never ends: it runs epoch after epoch.
    """

    def __init__(self, docs: TokenDocs, seq_len: int, batch_size: int, *, pad_id: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if len(docs) == 0 or int(docs.lengths.sum()) == 0:
            raise ValueError("no tokens to train on: the corpus is empty")
        self.docs, self.seq_len, self.batch_size = docs, seq_len, batch_size
        self.pad_id, self.seed, self.rank, self.world_size, self.drop_last = pad_id, seed, rank, world_size, drop_last
        total = int(docs.lengths.sum())
        self.num_sequences = -(-total // (seq_len + 1))  # the last one is padded
        per_global = world_size * batch_size
        full, rest = divmod(self.num_sequences, per_global)
        self.batches_per_epoch = full if drop_last else full + (rest > 0)
        if self.batches_per_epoch == 0:
            raise ValueError(f"the corpus makes {self.num_sequences} sequences of {seq_len + 1} tokens, fewer than "
                             f"one global batch ({per_global}); lower batch_size/seq_len or add data")
        self.epoch, self.index = 0, 0  # the position: next batch is (epoch, index)
        self._order_epoch, self._starts, self._order = -1, None, None

    # ------------------------------------------------------------ position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size,
                "num_sequences": self.num_sequences}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [k for k in ("seed", "seq_len", "batch_size", "world_size", "num_sequences") if state[k] != mine[k]]
        if differ:
            raise ValueError("data position does not fit this dataset: "
                             + ", ".join(f"{k} saved {state[k]} != now {mine[k]}" for k in differ))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    # ------------------------------------------------------------ sequences

    def _epoch_order(self, epoch: int) -> None:
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(len(self.docs))
            self._starts = np.concatenate([[0], np.cumsum(self.docs.lengths[self._order])])
            self._order_epoch = epoch

    def sequence(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Global sequence ``i`` of ``epoch``: (tokens [seq_len+1], doc ids [seq_len+1], -1 on padding)."""
        self._epoch_order(epoch)
        n = self.seq_len + 1
        tokens = np.full(n, self.pad_id, dtype=np.int64)
        doc_ids = np.full(n, PAD_DOC, dtype=np.int64)
        if i >= self.num_sequences:
            return tokens, doc_ids
        pos, end = i * n, min((i + 1) * n, int(self._starts[-1]))
        j = int(np.searchsorted(self._starts, pos, side="right")) - 1
        while pos < end:
            lo, hi = int(self._starts[j]), int(self._starts[j + 1])
            take = min(hi, end) - pos
            doc = self.docs[int(self._order[j])]
            tokens[pos - i * n:pos - i * n + take] = doc[pos - lo:pos - lo + take]
            doc_ids[pos - i * n:pos - i * n + take] = self._order[j]
            pos += take
            j += 1
        return tokens, doc_ids

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """This rank's share of global batch ``index``: ids, targets, doc_ids, each [batch_size, seq_len]."""
        first = index * self.world_size * self.batch_size
        seqs = [self.sequence(epoch, first + b * self.world_size + self.rank) for b in range(self.batch_size)]
        tokens = torch.from_numpy(np.stack([s[0] for s in seqs]))
        docs = torch.from_numpy(np.stack([s[1] for s in seqs]))
        targets = tokens[:, 1:].clone()
        # a target in another document (or padding) is not predictable from this one
        targets[(docs[:, 1:] != docs[:, :-1]) | (docs[:, 1:] == PAD_DOC)] = IGNORE_INDEX
        # doc ids renumbered per row from 0 so they stay small; equality is all attention needs
        local = docs[:, :-1]
        starts = torch.ones_like(local, dtype=torch.bool)
        starts[:, 1:] = local[:, 1:] != local[:, :-1]
        return {"ids": tokens[:, :-1].contiguous(), "targets": targets, "doc_ids": starts.long().cumsum(1) - 1}

    def epoch_batches(self, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over an epoch (for evaluation); does not move the position."""
        for index in range(self.batches_per_epoch):
            yield self.batch(epoch, index)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        out = self.batch(self.epoch, self.index)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return out
