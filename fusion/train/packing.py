"""Packing: tokenized documents -> shuffled training sequences of ``seq_len + 1`` tokens, global batches split
over ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fusion.data.shards import TokenDocs
from fusion.kernels.doc_runs import run_index
from fusion.vocab import IGNORE_INDEX

PAD_DOC = -1  # doc id of padding positions
_CONDITION_STREAM = 0xC0DD  # the condition-dropout draws' own random stream, apart from the shuffle's


@dataclass(frozen=True)
class ConditionDropout:
    """With probability ``p`` per document and epoch, the text before its first image is dropped (bos kept), so
    the model also learns images without their caption: the unconditional branch classifier-free guidance needs
    (LlamaGen drops 10% of captions). Draws are keyed by (seed, epoch, document index): resumes stay exact.
    ``p`` is ``TrainConfig.condition_dropout``, whose range is checked there."""

    p: float
    bos_id: int
    boi_id: int

    def spans(self, docs: TokenDocs) -> tuple[np.ndarray, np.ndarray]:
        """Per document, (start, length) of the text before its first image: after a leading bos, up to the
        boi; length 0 for documents without an image or starting with one."""
        starts, lengths = [], []
        for i in range(len(docs)):
            doc = docs[i]
            first = 1 if len(doc) and doc[0] == self.bos_id else 0
            boi = np.flatnonzero(doc == self.boi_id)
            starts.append(first)
            lengths.append(int(boi[0]) - first if len(boi) else 0)
        return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)


class PackedDataset:
    """Documents packed into sequences of ``seq_len + 1`` tokens, shuffled per epoch, in global batches.

    Each epoch shuffles document order with ``(seed, epoch)``, concatenates, and cuts consecutive chunks, so
    every token appears exactly once per epoch (a long document continues in the next sequence, where its
    positions restart). With ``whole_documents`` a document that fits in one sequence never straddles two:
    documents are placed first-fit into the last few open sequences (``_first_fit``), and what a sequence
    cannot fill is padding (targets ignored); longer documents are cut into sequences of their own. Global
    batch i is sequences ``[i * batch_size, (i + 1) * batch_size)``; rank r takes the r-th of ``world_size``
    equal contiguous slices of it. Nothing depends on the world size but the slice, so the position (epoch,
    batch index) resumes on any number of ranks. ``drop_last`` drops the incomplete final global batch;
    otherwise it is filled with padding sequences (all targets ignored). Iteration never ends: it runs epoch
    after epoch.
    """

    def __init__(self, docs: TokenDocs, seq_len: int, batch_size: int, *, pad_id: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 condition_dropout: ConditionDropout | None = None, whole_documents: bool = False) -> None:
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} (sequences per global batch) does not split evenly over "
                             f"{world_size} processes; use a multiple of {world_size}")
        if len(docs) == 0 or int(docs.lengths.sum()) == 0:
            raise ValueError("no tokens to train on: the corpus is empty")
        self.docs, self.seq_len, self.batch_size = docs, seq_len, batch_size
        self.pad_id, self.seed, self.rank, self.world_size, self.drop_last = pad_id, seed, rank, world_size, drop_last
        self.whole_documents = whole_documents
        self.per_rank = batch_size // world_size
        # the corpus as the position knows it: resuming over other documents would silently train on other data
        self.fingerprint = hashlib.sha256(np.ascontiguousarray(docs.lengths, dtype=np.int64)).hexdigest()[:16]
        self.epoch, self.index = 0, 0  # the position: next batch is (epoch, index)
        self._order_epoch, self._dropped = -1, None
        # this epoch's layout: pieces of documents at [start, end) of the stream cut every seq_len + 1 tokens,
        # sorted by start; piece j holds tokens [skip, skip + end - start) of document doc
        self._starts = self._ends = self._piece_doc = self._piece_skip = None
        self._sequence_counts: dict[int, int] = {}  # whole-document packing: epoch -> sequences, once laid out
        # Dropped captions shorten an epoch. Cut packing still counts its sequences from the full corpus (the
        # epoch's last ones are padding), so every epoch has as many; whole-document packing counts each epoch's.
        self.condition_dropout = condition_dropout
        self._spans = condition_dropout.spans(docs) if condition_dropout and condition_dropout.p > 0 else None
        self._full_corpus_sequences = -(-int(docs.lengths.sum()) // (seq_len + 1))  # the last one is padded
        if self.batches_in(0) == 0:
            raise ValueError(f"the corpus makes {self.sequences_in(0)} sequences of {seq_len + 1} tokens, fewer "
                             f"than one global batch ({batch_size}); lower batch_size/seq_len or add data")

    # ------------------------------------------------------------ position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "num_sequences": self.sequences_in(0), "documents": len(self.docs),
                "fingerprint": self.fingerprint,
                "condition_dropout": self.condition_dropout.p if self.condition_dropout else 0.0}

    def load_state_dict(self, state: dict) -> None:
        """Take a saved position; refuses one from other data or another batching (naming the fields)."""
        mine = self.state_dict()
        state = {"condition_dropout": 0.0, **state}  # positions saved before the option existed had none
        differ = [k for k in ("seed", "seq_len", "batch_size", "num_sequences", "documents", "fingerprint",
                              "condition_dropout") if state.get(k) != mine[k]]
        if differ:
            raise ValueError("the data position does not fit this dataset (the training data or its batching "
                             "changed): " + ", ".join(f"data.{k}: saved {state.get(k)!r} != now {mine[k]!r}"
                                                     for k in differ))
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    # ------------------------------------------------------------ sequences

    def sequences_in(self, epoch: int) -> int:
        """Sequences of ``seq_len + 1`` tokens in ``epoch`` (the last one may be partly padding)."""
        if not self.whole_documents:
            return self._full_corpus_sequences
        if epoch not in self._sequence_counts:
            self._epoch_order(epoch)
        return self._sequence_counts[epoch]

    def batches_in(self, epoch: int) -> int:
        """Global batches in ``epoch``: ``drop_last`` drops an incomplete last one, else it is padded."""
        full, rest = divmod(self.sequences_in(epoch), self.batch_size)
        return full if self.drop_last else full + (rest > 0)

    def _epoch_order(self, epoch: int) -> None:
        if self._order_epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))
            lengths = self.docs.lengths
            if self._spans is not None:
                draws = np.random.default_rng([self.seed, epoch, _CONDITION_STREAM]).random(len(self.docs))
                self._dropped = (draws < self.condition_dropout.p) & (self._spans[1] > 0)
                lengths = lengths - np.where(self._dropped, self._spans[1], 0)
            lengths = lengths[order]
            if self.whole_documents:
                starts, lengths, which, self._piece_skip = _first_fit(lengths, self.seq_len + 1)
                self._piece_doc = order[which]
            else:
                starts, self._piece_doc = np.concatenate([[0], np.cumsum(lengths)[:-1]]), order
                self._piece_skip = np.zeros(len(order), dtype=np.int64)
            self._starts, self._ends = starts, starts + lengths
            self._sequence_counts[epoch] = -(-int(self._ends[-1]) // (self.seq_len + 1))
            self._order_epoch = epoch

    def _doc(self, i: int) -> np.ndarray:
        """Document ``i`` as this epoch sees it (its caption dropped when the draw says so)."""
        doc = self.docs[i]
        if self._dropped is not None and self._dropped[i]:
            start, length = self._spans[0][i], self._spans[1][i]
            doc = np.concatenate([doc[:start], doc[start + length:]])
        return doc

    def sequence(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Global sequence ``i`` of ``epoch``: (tokens [seq_len+1], doc ids [seq_len+1], -1 on padding)."""
        self._epoch_order(epoch)
        n = self.seq_len + 1
        tokens = np.full(n, self.pad_id, dtype=np.int64)
        doc_ids = np.full(n, PAD_DOC, dtype=np.int64)
        first, end = i * n, (i + 1) * n
        j = int(np.searchsorted(self._ends, first, side="right"))  # the first piece ending inside
        while j < len(self._starts) and self._starts[j] < end:
            lo, a, b = int(self._starts[j]), max(int(self._starts[j]), first), min(int(self._ends[j]), end)
            if b > a:
                skip, doc = int(self._piece_skip[j]) - lo, int(self._piece_doc[j])
                tokens[a - first:b - first] = self._doc(doc)[skip + a:skip + b]
                doc_ids[a - first:b - first] = doc
            j += 1
        return tokens, doc_ids

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """This rank's slice of global batch ``index``: ids, targets, doc_ids [per_rank, seq_len] and ``sample``
        [per_rank], each row's global sequence index in the epoch (what per-sample randomness is keyed by)."""
        first = index * self.batch_size + self.rank * self.per_rank
        samples = range(first, first + self.per_rank)
        seqs = [self.sequence(epoch, i) for i in samples]
        tokens = torch.from_numpy(np.stack([s[0] for s in seqs]))
        docs = torch.from_numpy(np.stack([s[1] for s in seqs]))
        targets = tokens[:, 1:].clone()
        # a target in another document (or padding) is not predictable from this one
        targets[(docs[:, 1:] != docs[:, :-1]) | (docs[:, 1:] == PAD_DOC)] = IGNORE_INDEX
        # doc ids renumbered per row from 0 so they stay small; equality is all attention needs
        return {"ids": tokens[:, :-1].contiguous(), "targets": targets, "doc_ids": run_index(docs[:, :-1]),
                "sample": torch.tensor(samples, dtype=torch.long)}

    def epoch_batches(self, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over an epoch (for evaluation); does not move the position."""
        for index in range(self.batches_in(epoch)):
            yield self.batch(epoch, index)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        out = self.batch(self.epoch, self.index)
        self.index += 1
        if self.index == self.batches_in(self.epoch):
            self.epoch, self.index = self.epoch + 1, 0
        return out


OPEN_SEQUENCES = 8  # whole-document packing: sequences still open to a document that fits


def _first_fit(lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Whole-document layout of documents of ``lengths`` (in shuffled order) in sequences of ``n`` tokens.

    Each document goes into the first of the last ``OPEN_SEQUENCES`` sequences with room for it, else into a
    new one (the oldest open one then closes: its free tail is padding), so order stays close to the shuffle.
    A document longer than ``n`` fills sequences of its own and its tail is placed like any document. Returns
    pieces sorted by stream position: (start, length, the document's place in ``lengths``, its tokens skipped
    before the piece). Linear in documents (times ``OPEN_SEQUENCES``), so laying out an epoch is cheap next to
    training it (figures: benchmarks/RESULTS.md, "Figures moved out of code comments").
    """
    pieces: list[tuple[int, int, int, int]] = []
    used: dict[int, int] = {}  # open sequence -> tokens placed, oldest first
    fresh = 0
    for k, length in enumerate(lengths.tolist()):
        skip = 0
        if length > n:
            full = (length - 1) // n
            pieces += [((fresh + i) * n, n, k, i * n) for i in range(full)]
            fresh, skip, length = fresh + full, full * n, length - full * n
        seq = next((s for s, u in used.items() if u + length <= n), fresh)
        if seq == fresh:
            used[seq], fresh = 0, fresh + 1
        pieces.append((seq * n + used[seq], length, k, skip))
        used[seq] += length
        if used[seq] == n:
            del used[seq]
        while len(used) > OPEN_SEQUENCES:
            del used[next(iter(used))]
    out = np.array(sorted(pieces), dtype=np.int64).reshape(-1, 4)
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3]
