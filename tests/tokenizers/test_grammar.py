"""The id-stream grammar against a plain-Python reading of the same rules, and its errors."""

import random

import pytest

from fusion.tokenizers.grammar import TEXT, ImageSpans, split
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
