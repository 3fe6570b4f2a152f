"""Packing tokenized documents into training sequences (corpus reading and token shards: tests/data)."""

import json

import numpy as np
import pytest
import torch

from fusion.data.shards import TokenDocs
from fusion.train.packing import OPEN_SEQUENCES, PackedDataset
from fusion.vocab import IGNORE_INDEX

# ---------------------------------------------------------------- packing


def unique_docs(lengths, seed=0):
    """Documents whose tokens are all distinct, so each token names its document and position."""
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(sum(lengths)) + 10
    cuts = np.cumsum([0, *lengths])
    return [tokens[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


LENGTHS = [3, 30, 1, 7, 12, 5, 2, 19, 8, 4, 11, 6]  # 30 and 19 span several sequences of 8


def test_packing_covers_every_token_once_and_targets_stay_inside_documents():
    docs = unique_docs(LENGTHS)
    ds = PackedDataset(TokenDocs.from_arrays(docs), seq_len=7, batch_size=3, pad_id=0, drop_last=False)
    owner = {int(t): i for i, d in enumerate(docs) for t in d}
    follows = {int(a): int(b) for d in docs for a, b in zip(d[:-1], d[1:], strict=True)}

    seen, pairs = [], 0
    for batch in ds.epoch_batches(0):
        ids, targets, doc_ids = batch["ids"], batch["targets"], batch["doc_ids"]
        assert ids.shape == targets.shape == doc_ids.shape == (3, 7)
        for row_ids, row_t, row_d in zip(ids.tolist(), targets.tolist(), doc_ids.tolist(), strict=True):
            for a, t in zip(row_ids, row_t, strict=True):
                if t != IGNORE_INDEX:
                    assert follows.get(a) == t, "a target must be the next token of the same document"
                    pairs += 1
            # equal doc ids <=> same source document (among real tokens)
            real = [(a, d) for a, d in zip(row_ids, row_d, strict=True) if a in owner]
            for a, da in real:
                for b, db in real:
                    assert (da == db) == (owner[a] == owner[b])
    for i in range(ds.sequences_in(0)):
        tokens, _ = ds.sequence(0, i)
        seen += [t for t in tokens.tolist() if t in owner]
    assert sorted(seen) == sorted(owner), "every token exactly once per epoch"
    # only the cut between consecutive sequences can lose a within-document pair
    assert len(follows) - ds.sequences_in(0) < pairs <= len(follows)


def test_shuffle_is_deterministic_per_seed_and_epoch():
    td = TokenDocs.from_arrays(unique_docs(LENGTHS))
    a, b = (PackedDataset(td, seq_len=7, batch_size=2, seed=1) for _ in range(2))
    c = PackedDataset(td, seq_len=7, batch_size=2, seed=2)
    first = [x["ids"] for x in a.epoch_batches(0)]
    assert all(torch.equal(x, y["ids"]) for x, y in zip(first, b.epoch_batches(0), strict=True))
    assert not all(torch.equal(x, y["ids"]) for x, y in zip(first, a.epoch_batches(1), strict=True))
    assert not all(torch.equal(x, y["ids"]) for x, y in zip(first, c.epoch_batches(0), strict=True))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_contiguous_slices_of_the_global_batch(world):
    td = TokenDocs.from_arrays(unique_docs(LENGTHS))
    whole = PackedDataset(td, seq_len=5, batch_size=2 * world, drop_last=False)
    ranks = [PackedDataset(td, seq_len=5, batch_size=2 * world, rank=r, world_size=world, drop_last=False)
             for r in range(world)]
    assert {r.batches_in(0) for r in ranks} == {whole.batches_in(0)}
    for i, ref in enumerate(whole.epoch_batches(0)):
        parts = [r.batch(0, i) for r in ranks]
        for key in ref:
            assert torch.equal(torch.cat([p[key] for p in parts]), ref[key])
    assert ref["sample"].tolist() == list(range(i * 2 * world, (i + 1) * 2 * world))


def test_a_position_saved_on_two_ranks_resumes_on_three():
    td = TokenDocs.from_arrays(unique_docs(LENGTHS * 3))
    two = [PackedDataset(td, seq_len=5, batch_size=6, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(two[0].batches_in(0) + 1):  # into the second epoch
        for ds in two:
            next(ds)
    state = json.loads(json.dumps(two[0].state_dict()))
    assert state == two[1].state_dict()  # nothing rank-specific is saved
    want = [torch.cat([next(ds)["ids"] for ds in two]) for _ in range(3)]
    three = [PackedDataset(td, seq_len=5, batch_size=6, seed=2, rank=r, world_size=3) for r in range(3)]
    for ds in three:
        ds.load_state_dict(state)
    got = [torch.cat([next(ds)["ids"] for ds in three]) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    with pytest.raises(ValueError, match="data.fingerprint"):  # same sizes, other documents: refused
        PackedDataset(TokenDocs.from_arrays(unique_docs(LENGTHS * 3)[::-1]), seq_len=5, batch_size=6,
                      seed=2).load_state_dict(state)


def test_state_dict_resumes_exactly_across_epochs():
    td = TokenDocs.from_arrays(unique_docs(LENGTHS))
    a = PackedDataset(td, seq_len=7, batch_size=2, seed=3)
    for _ in range(a.batches_in(0) - 2):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(5)]  # runs into epoch 1
    b = PackedDataset(td, seq_len=7, batch_size=2, seed=3)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="seed"):
        PackedDataset(td, seq_len=7, batch_size=2, seed=4).load_state_dict(state)


def _pack_whole_documents(docs, order, n, window):
    """Reference packer, written apart from PackedDataset: lists of n tokens (None = padding). A document that
    fits goes into the first of the last ``window`` open lists with room, else into a new list (the oldest open
    one then closes); a longer one fills lists of its own and its tail is placed like any document."""
    lists, open_ = [], []  # open_: indices into lists, oldest first
    for i in order:
        doc = docs[i].tolist()
        while len(doc) > n:
            lists.append(doc[:n])
            doc = doc[n:]
        target = next((j for j in open_ if len(lists[j]) + len(doc) <= n), None)
        if target is None:
            lists.append([])
            target = len(lists) - 1
            open_.append(target)
        lists[target] += doc
        open_ = [j for j in open_ if len(lists[j]) < n][-window:]
    return [seq + [None] * (n - len(seq)) for seq in lists]


@pytest.mark.parametrize("epoch", [0, 1])
def test_whole_document_packing_matches_a_separate_packer_and_splits_only_documents_too_long(epoch):
    docs = unique_docs(LENGTHS * 2 + [7] * 12)  # the 7s leave sequences open with 1 free: more than the window
    td = TokenDocs.from_arrays(docs)
    ds = PackedDataset(td, seq_len=7, batch_size=2, pad_id=0, seed=5, drop_last=False, whole_documents=True)
    order = np.random.default_rng([5, epoch]).permutation(len(docs))  # the documented shuffle
    want = _pack_whole_documents(docs, order, 8, OPEN_SEQUENCES)
    assert ds.sequences_in(epoch) == len(want)
    got = [ds.sequence(epoch, i) for i in range(len(want))]
    assert [[t if d >= 0 else None for t, d in zip(tok.tolist(), ids.tolist(), strict=True)]
            for tok, ids in got] == want
    where = {int(t): i for i, (tok, ids) in enumerate(got) for t, d in zip(tok, ids, strict=True) if d >= 0}
    assert sorted(where) == sorted(int(t) for d in docs for t in d), "every token exactly once"
    assert all(len({where[int(t)] for t in d}) == 1 for d in docs if len(d) <= 8), "short documents stay whole"
    plain = PackedDataset(td, seq_len=7, batch_size=2, pad_id=0, seed=5, drop_last=False)
    split = sum(len({i for i in range(plain.sequences_in(0)) if set(plain.sequence(epoch, i)[0].tolist()) & set(
        d.tolist())}) > 1 for d in docs if len(d) <= 8)
    assert split > 0, "the fixture must have documents that cut packing splits"
    batches = list(ds.epoch_batches(epoch))
    assert len(batches) == ds.batches_in(epoch) == -(-len(want) // 2)
    owner = {int(t): i for i, d in enumerate(docs) for t in d}
    pairs = sum(a is not None and b is not None and owner[a] == owner[b]
                for seq in want for a, b in zip(seq[:-1], seq[1:], strict=True))
    assert sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches) == pairs, "padding is never a target"


def test_whole_document_packing_resumes_exactly_though_epochs_differ_in_length():
    td = TokenDocs.from_arrays(unique_docs(LENGTHS * 3))
    a = PackedDataset(td, seq_len=7, batch_size=2, seed=3, whole_documents=True)
    lengths = {a.batches_in(e) for e in range(6)}
    assert len(lengths) > 1, "the fixture must give epochs of different lengths"
    for _ in range(a.batches_in(0) - 1):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(a.batches_in(1) + 2)]  # through epoch 1 into epoch 2
    b = PackedDataset(td, seq_len=7, batch_size=2, seed=3, whole_documents=True)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert (a.epoch, a.index) == (b.epoch, b.index) == (2, 1)


def test_bad_arguments_are_refused():
    td = TokenDocs.from_arrays(unique_docs(LENGTHS))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedDataset(td, seq_len=7, batch_size=100)
    with pytest.raises(ValueError, match="rank"):
        PackedDataset(td, seq_len=7, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=8 .* does not split evenly over 3 processes"):
        PackedDataset(td, seq_len=7, batch_size=8, rank=0, world_size=3)
    with pytest.raises(ValueError, match="empty"):
        PackedDataset(TokenDocs.from_arrays([]), seq_len=7, batch_size=1)


# ---------------------------------------------------------------- condition dropout


@pytest.mark.parametrize("whole_documents", [False, True])
def test_condition_dropout_drops_the_text_before_the_first_image_keyed_by_document_and_epoch(whole_documents):
    from fusion.train.packing import ConditionDropout

    bos, boi, eoi, eos = 1, 3, 4, 2
    docs = [[bos, 10, 11, 12, boi, 50, 51, eoi, 13, eos],  # a caption, an image, more text
            [bos, boi, 52, 53, eoi, 14, eos],                # starts with its image: nothing to drop
            [bos, 15, 16, eos]]                              # no image: nothing to drop
    docs = TokenDocs.from_arrays(docs * 40)  # 120 documents
    drop = ConditionDropout(0.5, bos_id=bos, boi_id=boi)
    n_tokens = int(docs.lengths.sum())
    ds = PackedDataset(docs, seq_len=n_tokens - 1, batch_size=1, seed=3, condition_dropout=drop,
                       whole_documents=whole_documents)  # one sequence: the layout uses the shortened lengths

    def seen(epoch: int) -> list[list[int]]:
        tokens, doc_ids = ds.sequence(epoch, 0)
        return [tokens[doc_ids == d].tolist() for d in sorted(set(doc_ids.tolist()) - {-1})]

    for epoch in (0, 1):
        got = seen(epoch)
        assert len(got) == 120
        captioned = [g for i, g in enumerate(got) if i % 3 == 0]
        dropped = [g for g in captioned if g == [bos, boi, 50, 51, eoi, 13, eos]]
        assert len(dropped) + sum(g == docs[0].tolist() for g in captioned) == 40  # each kept whole or dropped
        assert 8 <= len(dropped) <= 32  # p = 0.5 of 40 documents
        assert all(g == docs[i].tolist() for i, g in enumerate(got) if i % 3)  # the others never change
    assert seen(0) != seen(1)  # a fresh draw each epoch, the same one again for the same (seed, epoch)
    again = PackedDataset(docs, seq_len=n_tokens - 1, batch_size=1, seed=3, condition_dropout=drop,
                          whole_documents=whole_documents)
    assert [again.sequence(e, 0)[0].tolist() for e in (0, 1)] == [ds.sequence(e, 0)[0].tolist() for e in (0, 1)]
    plain = PackedDataset(docs, seq_len=n_tokens - 1, batch_size=1, seed=3)
    with pytest.raises(ValueError, match="condition_dropout"):
        ds.load_state_dict(plain.state_dict())  # a run cannot resume with another dropout
