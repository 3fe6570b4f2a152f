"""Token shards: keyed by a fingerprint of their inputs (never silently reused), resumable after a kill, written in
bounded memory (live decoded images counted), and mixed by weight with the realised shares reported."""

import json
import os
import weakref

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from fusion.data import opener as opener_module
from fusion.data import tokenize as tok_module
from fusion.data.mixture import mix
from fusion.data.shards import TokenDocs
from fusion.data.synthetic import SyntheticWorld
from fusion.data.tokenize import tokenize_corpus
from fusion.document import Document, write_jsonl
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.vq_config import VQConfig


def _folders(tok_dir) -> list[str]:
    return [r["folder"] for r in json.loads((tok_dir / "corpus.json").read_text())["sources"]]


def test_shards_follow_their_inputs_never_a_stale_copy(tokenizer, tmp_path):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, SyntheticWorld(seed=1).documents(6))
    out = tmp_path / "tok"
    first = tokenize_corpus([str(src)], tokenizer, out, progress=False)["sources"][0]
    assert tokenize_corpus([str(src)], tokenizer, out, progress=False)["sources"][0]["folder"] == first["folder"]
    assert tokenize_corpus([f"{src}:2"], tokenizer, out, progress=False)["sources"][0]["folder"] == first["folder"]

    # the same file grown by a row: a fresh folder that holds the new row; the old one is not read
    extra = Document.of("a brand new row")
    with open(src, "a") as f:
        f.write(json.dumps(extra.to_json()) + "\n")
    grown = tokenize_corpus([str(src)], tokenizer, out, progress=False)["sources"][0]
    assert grown["folder"] != first["folder"] and grown["documents"] == first["documents"] + 1
    assert _folders(out) == [grown["folder"]]
    got = TokenDocs.from_dir(out / grown["folder"])
    assert got[len(got) - 1].tolist() == tokenizer.encode(extra).tolist()

    # same bytes, new modification time: re-tokenized too (no content hashing of large files)
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    assert tokenize_corpus([str(src)], tokenizer, out, progress=False)["sources"][0]["folder"] != grown["folder"]

    # other tokenizers: other ids, so a fresh folder
    torch.manual_seed(1)
    other = MixedTokenizer(tokenizer.text, ImageTokenizer(VQConfig.preset("tiny")).eval())
    assert tokenize_corpus([str(src)], other, out, progress=False)["sources"][0]["folder"] not in (
        first["folder"], grown["folder"])


def test_a_killed_tokenization_resumes_with_the_missing_shards_only(tokenizer, tmp_path, monkeypatch):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, SyntheticWorld(seed=2).documents(20, story_fraction=0.5))
    clean = tokenize_corpus([str(src)], tokenizer, tmp_path / "clean", docs_per_shard=6, progress=False)
    want = TokenDocs.from_dir(tmp_path / "clean" / clean["sources"][0]["folder"])

    real_add, seen = tok_module._ShardBuilder.add, []

    def dies_at_row_14(self, where, raw):
        seen.append(where)
        if len(seen) == 14:
            raise KeyboardInterrupt  # the run is killed in shard 2 (rows 13-18)
        real_add(self, where, raw)

    monkeypatch.setattr(tok_module._ShardBuilder, "add", dies_at_row_14)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus([str(src)], tokenizer, tmp_path / "tok", docs_per_shard=6, progress=False)
    (folder,) = [p for p in (tmp_path / "tok").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == ["shard_00000", "shard_00001"]  # no temp, not done

    monkeypatch.setattr(tok_module._ShardBuilder, "add", real_add)
    written = []
    real_init = tok_module.ShardWriter.__init__
    monkeypatch.setattr(tok_module.ShardWriter, "__init__",
                        lambda self, shard, *a: (written.append(shard.name), real_init(self, shard, *a))[1])
    again = tokenize_corpus([str(src)], tokenizer, tmp_path / "tok", docs_per_shard=6, progress=False)
    assert written == ["shard_00002", "shard_00003"]
    got = TokenDocs.from_dir(folder)
    assert again["sources"][0]["documents"] == 20 and again["report"]["rows"] == 20
    assert [got[i].tolist() for i in range(len(got))] == [want[i].tolist() for i in range(len(want))]


def test_memory_is_bounded_one_decoded_image_at_a_time(tokenizer, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(6):
        PILImage.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    rows = [{"segments": [{"text": f"row {r}"}, {"image": f"{r % 6}.jpg"}, {"image": f"{(r + 1) % 6}.jpg"}]}
            for r in range(20)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    live, peak = [0], [0]

    def counted(*args, **kwargs):
        image, animated = real(*args, **kwargs)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(image, lambda: live.__setitem__(0, live[0] - 1))
        return image, animated

    real = opener_module.load_image
    monkeypatch.setattr(opener_module, "load_image", counted)
    corpus = tokenize_corpus([str(tmp_path / "docs.jsonl")], tokenizer, tmp_path / "tok", docs_per_shard=1000,
                             image_batch=4, progress=False)
    assert corpus["sources"][0]["documents"] == 20 and live[0] == 0
    assert peak[0] == 1  # 40 images in one shard, never two full-size ones alive at once


def _docs(lengths, first):
    return TokenDocs.from_arrays([np.arange(first + i * 1000, first + i * 1000 + n) for i, n in enumerate(lengths)])


def test_mixture_shares_follow_the_weights_and_cut_nothing():
    a, b = _docs([10] * 30, 0), _docs([5, 7, 9, 11] * 10, 10**6)  # 300 and 320 tokens
    mixed, rows = mix([a, b], [0.25, 0.75], ["a", "b"], seed=3)
    # a (the most tokens per unit of weight: 300 / 0.25) is read once; b is repeated to three quarters of the
    # epoch's 1200 tokens: two whole copies and documents of a third worth 260 tokens, to within one document
    assert rows[0]["repeats"] == 1 and rows[0]["tokens"] == 300 and rows[0]["documents"] == 30
    assert abs(rows[1]["tokens"] - 900) <= 11 and 80 < rows[1]["documents"] < 120
    assert abs(rows[1]["token_share"] - 0.75) <= 11 / 1200
    firsts = {int(mixed[i][0]) for i in range(len(mixed))}
    assert {int(a[i][0]) for i in range(len(a))} <= firsts and {int(b[i][0]) for i in range(len(b))} <= firsts
    assert int(mixed.lengths.sum()) == rows[0]["tokens"] + rows[1]["tokens"]
    again, _ = mix([a, b], [0.25, 0.75], ["a", "b"], seed=3)
    assert [again[i].tolist() for i in range(len(again))] == [mixed[i].tolist() for i in range(len(mixed))]

    up, rows = mix([a, b], [0.9, 0.1], ["a", "b"])  # a small source with a big weight: whole copies + a part
    assert rows[0]["repeats"] > 9 and abs(rows[0]["token_share"] - 0.9) < 0.01
    plain, rows = mix([a, b], None, ["a", "b"])
    assert len(plain) == 70 and [r["repeats"] for r in rows] == [1, 1]
    with pytest.raises(ValueError, match="lower its weight"):
        mix([a, b], [1000, 1], ["a", "b"])
