"""The id-stream grammar against a plain-Python reading of the same rules, and its errors."""

import json
import random

import pytest
import torch

from fusion.data.synthetic import SyntheticWorld
from fusion.document import Document, Text
from fusion.tokenizers.grammar import (
    IMAGE_KIND,
    TEXT,
    TEXT_KIND,
    ImageSpans,
    boi_position,
    codes_owed,
    ids_to_close,
    image_length,
    images_closed,
    open_codes,
    spans_after,
    split,
)
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig
from fusion.vocab import Vocab

V = Vocab.build(20, 10)
N = 3  # codes per image


def stream(rng: random.Random, n_parts: int) -> list[int]:
    """Random valid stream: bos, then text pieces, control ids and complete images, maybe a cut-off image."""
    ids = [V.bos_id]
    for _ in range(n_parts):
        kind = rng.choice(["text", "control", "image"])
        if kind == "text":
            ids += [V.text_start + rng.randrange(V.text_count) for _ in range(rng.randint(1, 4))]
        elif kind == "control":
            ids.append(rng.choice([V.eos_id, V.pad_id, V.bos_id]))
        else:
            ids += [V.boi_id, *(V.image_start + rng.randrange(V.image_count) for _ in range(N)), V.eoi_id]
    if rng.random() < 0.5:
        ids += [V.boi_id, *(V.image_start for _ in range(rng.randint(0, N)))]
    return ids


def reference(ids: list[int]) -> list[tuple[str, list[int], bool]]:
    """(kind, ids, closed) per run, read the obvious way: find each boi, take N codes, expect eoi."""
    runs, text, i = [], [], 0
    while i < len(ids):
        t = ids[i]
        if t == V.boi_id:
            if text:
                runs.append((TEXT, text, True))
                text = []
            codes = ids[i + 1:i + 1 + N]
            closed = i + 1 + N < len(ids) and ids[i + 1 + N] == V.eoi_id
            runs.append(("image", codes, closed))
            i += N + 2
            continue
        if V.text_start <= t < V.text_start + V.text_count:
            text.append(t)
        elif text:
            runs.append((TEXT, text, True))
            text = []
        i += 1
    if text:
        runs.append((TEXT, text, True))
    return runs


@pytest.mark.parametrize("seed", range(20))
def test_split_agrees_with_the_obvious_reading(seed):
    ids = stream(random.Random(seed), 8)
    got = [(r.kind, ids[r.start:r.end], r.closed) for r in split(ids, V, N)]
    assert got == reference(ids)


def test_feed_names_each_kind():
    spans = ImageSpans(V, 1)
    kinds = [spans.feed(t) for t in (V.bos_id, V.text_start, V.boi_id, V.image_start, V.eoi_id, V.eos_id)]
    assert kinds == ["control", "text", "boi", "code", "eoi", "control"]


@pytest.mark.parametrize("ids,match", [
    ([V.boi_id, V.image_start, V.text_start], "malformed image span at position 2"),
    ([V.boi_id] + [V.image_start] * N + [V.image_start], "malformed image span at position 4"),
    ([V.text_start, V.eoi_id], "outside an image span at position 1"),
    ([V.image_start], "outside an image span at position 0"),
    ([V.size], "out of the vocabulary"),
])
def test_broken_streams_name_the_position(ids, match):
    with pytest.raises(ValueError, match=match):
        split(ids, V, N)


# ---------------------------------------------------------------- where an image sits, on real encoded documents


@pytest.fixture(scope="module")
def encoded():
    """(tokenizer, id lists) of real documents: text, images (N = 64 codes), bos and eos."""
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(seed=2).texts(200), vocab_size=300)
    tok = MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())
    docs = list(SyntheticWorld(seed=5).documents(6, story_fraction=0.5))
    return tok, [ids.tolist() for ids in tok.encode_batch(docs)]


def scanned(ids: list[int], vocab: Vocab) -> list[tuple[int, int]]:
    """(boi, eoi) position of each image, found by scanning for the two ids."""
    bois = [i for i, t in enumerate(ids) if t == vocab.boi_id]
    eois = [i for i, t in enumerate(ids) if t == vocab.eoi_id]
    assert len(bois) == len(eois) and bois
    return list(zip(bois, eois, strict=True))


def inside(images: list[tuple[int, int]], p: int) -> tuple[int, int] | None:
    """The image a stream cut before position ``p`` leaves open (its boi before p, its eoi at or after), if any."""
    return next(((b, e) for b, e in images if b < p <= e), None)


def test_image_runs_sit_where_the_scan_finds_them(encoded):
    tok, rows = encoded
    n = tok.tokens_per_image
    for ids in rows:
        images = scanned(ids, tok.vocab)
        runs = [r for r in split(ids, tok.vocab, n) if r.kind == IMAGE_KIND]
        assert [(r.boi, r.span.stop - 1) for r in runs] == images
        assert all(r.written == n and ids[r.span] == ids[b:e + 1] for r, (b, e) in zip(runs, images, strict=True))
        lengths = [e - b + 1 for b, e in images]
        assert lengths == [image_length(n)] * len(images)
        assert torch.equal(image_length(torch.full((len(images),), n)), torch.tensor(lengths))
        assert images_closed(ids, tok.vocab) == len(images)


def test_a_stream_cut_anywhere_knows_its_open_image(encoded):
    """At every cut: the open image's boi, its codes written and owed, and the ids that close it (through its eoi
    in the uncut stream), as ints and as one tensor over all cuts."""
    tok, rows = encoded
    v, n = tok.vocab, tok.tokens_per_image
    cuts, want = [], []
    for ids in rows:
        images = scanned(ids, v)
        for p in range(len(ids) + 1):
            spans = ImageSpans(v, n)
            for t in ids[:p]:
                spans.feed(t)
            written, image = open_codes(ids[:p], v, n), inside(images, p)
            assert images_closed(ids[:p], v) == sum(e < p for _, e in images)
            if image is None:
                assert written is None and spans.codes_left is None
                continue
            boi, eoi = image
            assert written == p - boi - 1 and boi_position(p, written) == boi
            assert codes_owed(n, written) == eoi - p == spans.codes_left
            assert ids_to_close(n, written) == len(ids[p:eoi + 1])
            cuts.append((p, written))
            want.append((boi, eoi - p, eoi - p + 1))
    p, written = torch.tensor(cuts).T
    got = torch.stack([boi_position(p, written), codes_owed(torch.tensor(n), written), ids_to_close(n, written)], 1)
    assert torch.equal(got, torch.tensor(want))
    assert ids_to_close(n) == n + 1  # after a boi: N codes, then eoi


def test_spans_after_follows_rows_fed_in_chunks(encoded):
    """Rows fed a few ids a pass (only a pass's last id may be boi or eoi, as in decoding), starting outside an image
    owing N: after each pass, each row's (inside an image, codes owed) on the device agrees with the scan."""
    tok, rows = encoded
    v, n, rng = tok.vocab, tok.tokens_per_image, random.Random(0)
    chunks = []
    for ids in rows:
        ends, p = [], 0
        while p < len(ids):
            step = rng.randint(1, 5)
            special = [i for i in range(p, min(p + step, len(ids))) if ids[i] in (v.boi_id, v.eoi_id)]
            p = special[0] + 1 if special else min(p + step, len(ids))
            ends.append(p)
        chunks.append(ends)
    B = len(rows)
    in_image, owed = torch.zeros(B, dtype=torch.bool), torch.full((B,), n)
    done = [0] * B
    for k in range(max(map(len, chunks))):
        ends = [c[k] if k < len(c) else c[-1] for c in chunks]
        count = torch.tensor([e - d for e, d in zip(ends, done, strict=True)])
        last = torch.tensor([ids[e - 1] if e > d else -1 for ids, e, d in zip(rows, ends, done, strict=True)])
        in_image, owed = spans_after(in_image, owed, count, last == v.boi_id, last == v.eoi_id, n)
        done = ends
        for b, (ids, p) in enumerate(zip(rows, ends, strict=True)):
            images = scanned(ids, v)
            image = inside(images, p)
            assert bool(in_image[b]) == (image is not None)
            closed = any(e < p for _, e in images)  # outside an image: 0 once one closed, else the start's N
            assert int(owed[b]) == (image[1] - p if image is not None else 0 if closed else n)


def test_kinds_are_spelled_as_on_disk():
    assert (TEXT_KIND, IMAGE_KIND, TEXT) == ("text", "image", "text")
    assert json.dumps(Document([Text("a")]).to_json()) == '{"segments": [{"text": "a"}]}'
