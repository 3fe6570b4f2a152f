"""Reading a corpus never aborts on a bad row: every injected problem is skipped or repaired and counted exactly,
and the kept rows' tokens equal a clean encoding of the good rows written out by hand."""

import json
import logging

import pytest
from PIL import Image as PILImage

from fusion.data.corpus import corpus_texts
from fusion.data.report import IngestReport
from fusion.data.shards import TokenDocs
from fusion.data.spec import CorpusSpec
from fusion.data.synthetic import SyntheticWorld
from fusion.data.tokenize import tokenize_corpus
from fusion.document import Document
from fusion.images import to_data_uri


def _write_images(folder):
    """Image files the rows point at: good, missing, empty, not an image, a folder, oversized, animated, long."""
    PILImage.new("RGB", (32, 32), (30, 160, 50)).save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("these are notes, not pixels")
    (folder / "dir.png").mkdir()
    PILImage.new("RGB", (50, 50), (1, 2, 3)).save(folder / "huge.png")  # over the (patched) pixel limit
    frames = [PILImage.new("RGB", (20, 20), (220, 30, 30)), PILImage.new("RGB", (20, 20), (30, 70, 220))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    PILImage.new("RGB", (100, 4), (240, 200, 20)).save(folder / "long.png")


def _corpus(folder):
    """(the JSONL bytes, the Documents the kept rows must become, the expected counts)."""
    good = list(SyntheticWorld(seed=4).documents(4, story_fraction=0.5))
    img = PILImage.open(folder / "good.png")
    first_frame = PILImage.open(folder / "anim.gif")  # PIL opens an animation at frame 0
    lines, want = [], []

    def row(obj, doc=None):
        lines.append(json.dumps(obj).encode() if not isinstance(obj, bytes) else obj)
        if doc is not None:
            want.append(doc)

    row(b"\xef\xbb\xbf" + json.dumps(good[0].to_json()).encode(), good[0])           # BOM: kept
    row(b"{not json")                                                                  # invalid JSON
    row({"image": None})                                                               # null value
    row({"image": 3})                                                                  # wrong type
    row({"segments": [{"image": {"bytes": None, "path": None}}]})                      # null value
    row({"segments": [{"text": 5}]})                                                   # wrong type
    row([1, 2])                                                                        # wrong type
    row({"segments": [{"video": "x"}]})                                                # malformed row
    row({"segments": []})                                                              # empty document
    row(good[1].to_json(), good[1])
    row(b'{"text": "caf\xe9 au lait"}', Document.of("caf au lait"))                   # non-UTF-8: byte dropped
    row({"segments": [{"text": "a"}, {"image": "missing.png"}]}, Document.of("a"))     # image missing
    row({"image": "empty.png", "caption": "x"}, Document.of("x"))                      # image undecodable
    row({"segments": [{"image": "notes.png"}]})                                        # undecodable + empty
    row({"image": "dir.png", "caption": "c"}, Document.of("c"))                        # image unreadable
    row({"texts": ["big", None], "images": [None, "huge.png"]}, Document.of("big"))    # image oversized
    row({**good[2].to_json(), "meta": 1}, good[2])                                     # unknown key
    row({**good[3].to_json(), "meta": 2, "id": 7}, good[3])                            # unknown keys
    row({"segments": [{"text": "anim"}, {"image": "anim.gif"}]}, Document.of("anim", first_frame))
    row({"segments": [{"image": "long.png"}, {"text": "long"}]}, Document.of(PILImage.open(folder / "long.png"),
                                                                            "long"))
    row({"segments": [{"text": "inline "}, {"image": to_data_uri(img)}]}, Document.of("inline ", img))
    skipped = {"invalid JSON": 1, "null value": 2, "wrong type": 3, "malformed row": 1, "empty document": 2,
               "image missing": 1, "image undecodable": 2, "image unreadable": 1, "image oversized": 1}
    repaired = {"BOM removed": 1, "non-UTF-8 bytes dropped": 1, "unknown key 'meta' ignored": 2,
                "unknown key 'id' ignored": 1, "animated image: first frame kept": 1,
                "crop dropped most of an image": 1}
    return b"\n".join(lines) + b"\n\n", want, skipped, repaired


def test_bad_rows_are_skipped_counted_and_the_rest_tokenized_exactly(tokenizer, tmp_path, monkeypatch, caplog):
    _write_images(tmp_path)
    data, want, skipped, repaired = _corpus(tmp_path)
    (tmp_path / "docs.jsonl").write_bytes(data)
    monkeypatch.setattr("fusion.images.MAX_PIXELS", 40 * 40)
    with caplog.at_level(logging.WARNING):
        corpus = tokenize_corpus([str(tmp_path / "docs.jsonl")], tokenizer, tmp_path / "tok", docs_per_shard=7,
                                 progress=False)
    report = corpus["report"]
    assert report["skipped"] == skipped and report["repaired"] == repaired
    assert report["rows"] == 21 and report["kept"] == len(want) == 12
    # one warning per cause (and so one per unknown key), however often it occurs
    warned = [r.message for r in caplog.records if "further cases are counted" in r.message]
    assert len(warned) == len(skipped) + len(repaired)
    assert sum("unknown key 'meta'" in m for m in warned) == 1

    (record,) = corpus["sources"]
    got = TokenDocs.from_dir(tmp_path / "tok" / record["folder"])
    assert len(list((tmp_path / "tok" / record["folder"]).glob("shard_*"))) == 3  # 21 rows, 7 a shard
    assert [got[i].tolist() for i in range(len(got))] == [t.tolist() for t in tokenizer.encode_batch(want)]


def test_a_source_with_no_usable_row_is_an_error_that_says_why(tokenizer, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": null}\n{oops\n{"segments": []}\n')
    with pytest.raises(ValueError, match=r"none of its 3 rows could be used(.|\n)*null value: 1"):
        tokenize_corpus([str(tmp_path / "bad.jsonl")], tokenizer, tmp_path / "tok", progress=False)
    (tmp_path / "none.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="it has no rows"):
        tokenize_corpus([str(tmp_path / "none.jsonl")], tokenizer, tmp_path / "tok", progress=False)


def test_texts_for_the_bpe_from_text_files_and_rows_without_opening_images(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbffirst line\r\n\nsecond \xff line\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"texts": ["x", None, "y"],
                                                  "images": [None, "https://example.org/never-fetched.png", None]})
                                      + "\n" + json.dumps({"image": "missing.png"}) + "\n")
    report = IngestReport()
    spec = CorpusSpec.parse([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], fetch=False)
    assert list(corpus_texts(spec, report)) == ["first line", "second  line", "xy"]
    assert report.rows == 4 and report.kept == 3 and not report.skipped
    assert report.repaired == {"BOM removed": 1, "non-UTF-8 bytes dropped": 1}
