import json

import pytest
from PIL import Image as PILImage

from fusion.document import Document, DocumentError, Image, Text, read_jsonl, write_html, write_jsonl


def _img(colour=(200, 10, 10), size=(8, 6), mode="RGB"):
    return PILImage.new("RGB", size, colour).convert(mode)


def test_of_builds_segments_in_order():
    im = _img()
    doc = Document.of("A red box:", im, "done")
    assert [type(s) for s in doc] == [Text, Image, Text]
    assert doc.texts == ["A red box:", "done"] and doc.images[0] is im
    with pytest.raises(TypeError):
        Document.of("x", 3)


def test_jsonl_round_trip_is_exact(tmp_path):
    docs = [Document.of("hello", _img(), " world ", _img((0, 0, 255), (3, 9))),
            Document.of(_img(mode="RGBA"), "alpha kept as is"),
            Document.of("only text")]
    assert write_jsonl(tmp_path / "d.jsonl", docs) == 3
    back = list(read_jsonl(tmp_path / "d.jsonl"))
    assert back == docs
    assert back[1].images[0].mode == "RGBA"


def test_a_byte_order_mark_is_dropped_at_any_line_as_the_corpus_reader_does(tmp_path):
    """Two files each saved with a BOM and joined with cat: both rows read, by the strict reader and by the
    corpus reader (which counts each as a repair)."""
    from fusion.data.readers import jsonl_rows
    from fusion.data.report import IngestReport

    rows = [json.dumps(Document.of(t).to_json()).encode() for t in ("first", "second")]
    path = tmp_path / "joined.jsonl"
    path.write_bytes(b"".join(b"\xef\xbb\xbf" + r + b"\n" for r in rows))
    assert [d.texts for d in read_jsonl(path)] == [["first"], ["second"]]
    report = IngestReport()
    assert [json.loads(line)["segments"][0]["text"] for _, line in jsonl_rows(path, report)] == ["first", "second"]
    assert sum(report.repaired.values()) == 2


def test_jsonl_paths_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    _img().save(tmp_path / "imgs" / "x.png")
    row = {"segments": [{"text": "see"}, {"image": "imgs/x.png"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n\n")
    (doc,) = read_jsonl(tmp_path / "d.jsonl")
    assert doc.images[0].tobytes() == _img().tobytes()


def test_obelics_rows_round_trip():
    doc = Document.of("t0", _img(), "t2")
    row = doc.to_obelics()
    assert row["texts"] == ["t0", None, "t2"] and row["images"][0] is None
    assert Document.from_obelics(row) == doc


def test_obelics_through_datasets_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = [Document.of("a", _img()), Document.of(_img((0, 255, 0)), "b", "c")]
    datasets.Dataset.from_list([d.to_obelics() for d in docs]).to_parquet(str(tmp_path / "d.parquet"))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "d.parquet"), split="train")
    assert [Document.from_obelics(r, where=f"row {i}") for i, r in enumerate(ds)] == docs


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('{"segments": []}', "empty"),
    ('{"segments": [{"text": ""}]}', "empty"),
    ('{"segments": [{"video": "x"}]}', "segment 0"),
    ('{"segments": [{"text": 5}]}', "must be a string"),
    ('{"segments": [{"image": "missing.png"}]}', "not found"),
    ('{"texts": ["a", null], "images": [null]}', "equal length"),
    ('{"texts": ["a", "b"], "images": ["x.png", null]}', "position 0"),
])
def test_bad_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"segments": [{"text": "fine"}]}\n' + line + "\n")
    it = read_jsonl(path)
    next(it)
    with pytest.raises(DocumentError, match=message) as err:
        next(it)
    assert f"{path}:2" in str(err.value)


def test_corrupt_image_in_row_names_row(tmp_path):
    (tmp_path / "c.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "d.jsonl").write_text(json.dumps({"segments": [{"image": "c.png"}]}) + "\n")
    with pytest.raises(DocumentError, match=r"d.jsonl:1, part 0: cannot decode"):
        list(read_jsonl(tmp_path / "d.jsonl"))


def test_html_and_markdown_hold_the_images(tmp_path):
    doc = Document.of("x < y", _img(), "end")
    page = doc.to_html(tmp_path / "d.html")
    assert page.count("<img src='data:image/png;base64,") == 1 and "x &lt; y" in page
    assert (tmp_path / "d.html").read_text() == page
    md = doc.to_markdown(tmp_path / "md")
    assert "![image 0](image_000.png)" in md.read_text()
    assert PILImage.open(tmp_path / "md" / "image_000.png").tobytes() == _img().tobytes()
    write_html(tmp_path / "many.html", [doc, doc], captions=["one", "two"])
    assert (tmp_path / "many.html").read_text().count("<img") == 2


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "I;16", "I", "F", "YCbCr", "PA"])
def test_documents_of_any_image_mode_can_be_written(tmp_path, mode):
    """A prompt image of any mode kept in an output document: HTML, JSON rows and Markdown all work."""
    from fusion.images import png_ready, to_rgb

    image = _img((10, 120, 240), (7, 5)).convert(mode) if mode != "I;16" else PILImage.new("I;16", (7, 5), 4000)
    doc = Document.of("before", image, "after")
    assert doc.to_html(tmp_path / "d.html").count("<img src='data:image/png;base64,") == 1
    back = Document.from_json(json.loads(json.dumps(doc.to_json())))
    assert back.texts == ["before", "after"] and back.images[0].size == (7, 5)
    assert back.images[0].tobytes() == png_ready(image).tobytes()  # PNG holds the converted image exactly
    assert to_rgb(back.images[0]).tobytes() == to_rgb(png_ready(image)).tobytes()
    md = doc.to_markdown(tmp_path / "md")
    assert PILImage.open(md.parent / "image_000.png").size == (7, 5)


def test_url_images_need_the_fetching_reader(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"texts": ["see", None],
                                                  "images": [None, "https://example.org/a.jpg"]}) + "\n")
    with pytest.raises(DocumentError, match="is a URL.*fusion fetch-images") as err:
        list(read_jsonl(tmp_path / "d.jsonl"))
    assert err.value.cause == "image URL not fetched"
