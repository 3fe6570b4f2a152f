"""Every kind of source reads into the same documents: OBELICS parquet (image bytes, paths, datasets dicts and URLs
from a local server), the same file streamed through ``datasets``, a ``save_to_disk`` folder and an image folder."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from fusion.data.fetch import FetchConfig, OfflineError
from fusion.data.shards import TokenDocs
from fusion.data.spec import CorpusSpec
from fusion.data.tokenize import tokenize_corpus
from fusion.document import Document

from .conftest import Route

FAST = FetchConfig(timeout_s=0.3, retries=1, backoff_s=0.01)


def _png(colour, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _image(data: bytes) -> PILImage.Image:
    return PILImage.open(io.BytesIO(data))


def _tokens(tokenizer, corpus, root):
    out = []
    for record in corpus["sources"]:
        docs = TokenDocs.from_dir(root / record["folder"])
        out.append([docs[i].tolist() for i in range(len(docs))])
    return out


@pytest.fixture
def obelics(tmp_path, http_server):
    """An OBELICS parquet (images as strings: a relative path and URLs that work, fail once, 404, stall, or are not
    images) and one in datasets' layout (images as {bytes, path} structs); returns (their paths, the Documents
    their rows must become, the OBELICS file's expected skip counts)."""
    red, blue, green, grey = _png((200, 0, 0)), _png((0, 0, 200)), _png((0, 150, 0)), _png((90, 90, 90))
    (tmp_path / "local.png").write_bytes(blue)
    http_server.routes.update({"/a.png": Route(green), "/flaky.png": Route(grey, fail_first=1),
                               "/gone.png": Route(status=404), "/slow.png": Route(green, sleep=1.0),
                               "/page.png": Route(b"<html>not an image</html>")})
    u = http_server.url
    rows = [{"texts": [None, "path"], "images": ["local.png", None]},
            {"texts": ["url", None, "flaky", None], "images": [None, u("/a.png"), None, u("/flaky.png")]},
            {"texts": ["gone", None], "images": [None, u("/gone.png")]},
            {"texts": ["slow", None, "page", None], "images": [None, u("/slow.png"), None, u("/page.png")]},
            {"texts": ["x", "y"], "images": [None]}]  # malformed
    want = [Document.of(_image(blue), "path"), Document.of("url", _image(green), "flaky", _image(grey)),
            Document.of("gone"), Document.of("slow", "page")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "obelics.parquet")
    embedded = [{"texts": ["bytes", None], "images": [None, {"bytes": red, "path": None}]},
                {"texts": [None, "path"], "images": [{"bytes": None, "path": "local.png"}, None]}]
    pq.write_table(pa.Table.from_pylist(embedded), tmp_path / "embedded.parquet")
    want_embedded = [Document.of("bytes", _image(red)), Document.of(_image(blue), "path")]
    skipped = {"image URL failed": 2, "image undecodable": 1, "malformed row": 1}
    return (tmp_path / "obelics.parquet", tmp_path / "embedded.parquet"), (want, want_embedded), skipped


def test_obelics_parquet_with_urls_and_its_streamed_twin(tokenizer, tmp_path, obelics, http_server):
    (path, embedded), (want, want_embedded), skipped = obelics
    spec = CorpusSpec.parse([str(path), f"hf:parquet?data_files={path}&streaming=true", str(embedded)],
                            image_cache=str(tmp_path / "cache"))
    corpus = tokenize_corpus(spec, tokenizer, tmp_path / "tok", fetch=FAST, progress=False)
    # the first source fetched the URLs into the cache; the second found them there (and did not retry the
    # slow one, which failed in this run already)
    assert http_server.requests["/a.png"] == 1 and http_server.requests["/flaky.png"] == 2
    assert http_server.requests["/gone.png"] == 1 and http_server.requests["/slow.png"] == 2
    first, second, third = (r["report"] for r in corpus["sources"])
    assert first["skipped"] == second["skipped"] == skipped and third["skipped"] == {}
    expected = [t.tolist() for t in tokenizer.encode_batch(want)]
    assert _tokens(tokenizer, corpus, tmp_path / "tok") == [
        expected, expected, [t.tolist() for t in tokenizer.encode_batch(want_embedded)]]


def test_offline_without_a_cache_entry_says_how_to_fetch(tokenizer, tmp_path, obelics, http_server):
    offline = CorpusSpec.parse([str(obelics[0][0])], image_cache=str(tmp_path / "cache"), fetch=False)
    with pytest.raises(OfflineError, match="fusion fetch-images CORPUS --image-cache DIR"):
        tokenize_corpus(offline, tokenizer, tmp_path / "tok", progress=False)
    assert sum(http_server.requests.values()) == 0
    # the fetch command fills the cache; then the same corpus tokenizes offline, the failures counted
    from fusion.cli.fetch_images import main as fetch_main

    assert fetch_main([str(obelics[0][0]), "--image-cache", str(tmp_path / "cache"), "--timeout-s", "0.3",
                       "--retries", "0"]) == 0
    assert http_server.requests["/slow.png"] == 1 and http_server.requests["/flaky.png"] == 1
    corpus = tokenize_corpus(offline, tokenizer, tmp_path / "tok", progress=False)
    # offline, the flaky URL's one failure stands: its image is skipped too
    assert corpus["report"]["skipped"] == {**obelics[2], "image URL failed": 3}
    assert corpus["sources"][0]["documents"] == 4 and sum(http_server.requests.values()) == 5


def test_saved_dataset_and_imagefolder(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    red, blue = _png((200, 0, 0)), _png((0, 0, 200))
    ds = datasets.Dataset.from_dict({"image": [red, b"\x89PNG broken", blue], "caption": ["r", "broken", "b"],
                                     "source": ["x", "y", "z"]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "red.png").write_bytes(red)
    (folder / "blue.png").write_bytes(blue)
    (folder / "zero.png").write_bytes(b"")  # a zero-byte file
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f, "text": t}) for f, t in
                                                     [("red.png", "r"), ("blue.png", "b"), ("zero.png", "z")]))
    corpus = tokenize_corpus([str(tmp_path / "saved"), str(folder)], tokenizer, tmp_path / "tok", progress=False)
    saved, images = (r["report"] for r in corpus["sources"])
    assert saved["skipped"] == {"image undecodable": 1} and saved["repaired"] == {"unknown key 'source' ignored": 3}
    assert images["skipped"] == {"image undecodable": 1} and images["rows"] == 3
    want_saved = [Document.of("r", _image(red)), Document.of("broken"), Document.of("b", _image(blue))]
    by_name = {"red.png": Document.of("r", _image(red)), "blue.png": Document.of("b", _image(blue)),
               "zero.png": Document.of("z")}
    order = [json.loads(line)["file_name"] for line in (folder / "metadata.jsonl").read_text().splitlines()]
    got_saved, got_folder = _tokens(tokenizer, corpus, tmp_path / "tok")
    assert got_saved == [t.tolist() for t in tokenizer.encode_batch(want_saved)]
    # datasets lists an image folder in its own order: compare as sets of documents
    want_folder = [t.tolist() for t in tokenizer.encode_batch([by_name[n] for n in order])]
    assert sorted(got_folder) == sorted(want_folder)
