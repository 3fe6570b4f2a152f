"""One small mixed corpus (JSONL + OBELICS parquet with URLs on a local server + an image folder) trains the BPE,
the VQ tokenizer and the decoder with the same data argument; each run reports what it skipped and why."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from fusion.cli import train, train_bpe, train_vq
from fusion.data.synthetic import SyntheticWorld, render
from fusion.document import write_jsonl

from .conftest import Route, png_bytes


def _corpus(root, server) -> tuple[list[str], int]:
    """The three sources (with their injected problems) and how many images the good rows hold."""
    world = SyntheticWorld(seed=7)
    docs = list(world.documents(6, story_fraction=0.5))
    write_jsonl(root / "docs.jsonl", docs)
    with open(root / "docs.jsonl", "a") as f:
        f.write('{oops\n{"image": null}\n')  # invalid JSON, null value

    scenes = world.scenes(4, seed_offset=1)
    for i in range(3):
        server.routes[f"/{i}.png"] = Route(png_bytes(size=(40, 40)) if i else png_bytes((0, 0, 200), (48, 32)))
    rows = [{"texts": [s.caption(), None], "images": [None, server.url(f"/{i}.png")]} for i, s in
            enumerate(scenes[:3])]
    rows.append({"texts": ["a lost picture", None], "images": [None, server.url("/lost.png")]})  # 404
    pq.write_table(pa.Table.from_pylist(rows), root / "obelics.parquet")

    folder = root / "pictures"
    folder.mkdir()
    meta = []
    for i, s in enumerate(world.scenes(4, seed_offset=2)):
        render(s, 36).save(folder / f"{i}.png")
        meta.append({"file_name": f"{i}.png", "text": s.caption()})
    (folder / "broken.png").write_bytes(b"")  # zero bytes
    meta.append({"file_name": "broken.png", "text": "a broken file"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return [str(root / "docs.jsonl"), str(root / "obelics.parquet"), str(folder)], sum(len(d.images) for d in docs)


def test_one_data_argument_trains_bpe_vq_and_decoder(tmp_path, http_server, capsys):
    sources, doc_images = _corpus(tmp_path, http_server)
    data = [*sources, "--image-cache", str(tmp_path / "cache")]

    assert train_bpe.main([*data, "--vocab-size", "300", "--out", str(tmp_path / "bpe")]) == 0
    bpe = json.loads((tmp_path / "bpe" / "corpus.json").read_text())["report"]
    # the BPE reads texts only: images are neither fetched nor opened
    assert bpe["skipped"] == {"invalid JSON": 1, "null value": 1} and sum(http_server.requests.values()) == 0
    assert bpe["rows"] == 8 + 4 + 5 and bpe["kept"] == 6 + 4 + 5

    assert train_vq.main([*data, "--out", str(tmp_path / "vq"), "--steps", "2", "--batch-size", "4",
                          "--eval-images", "2", "--device", "cpu", "--no-progress"]) == 0
    vq = json.loads((tmp_path / "vq" / "corpus.json").read_text())["report"]
    assert vq["skipped"] == {"invalid JSON": 1, "null value": 1, "image URL failed": 1, "image undecodable": 1}
    assert vq["kept"] == doc_images + 3 + 4
    assert http_server.requests["/lost.png"] == 1 and http_server.requests["/0.png"] == 1

    run = tmp_path / "run"
    assert train.main([*data, "--text-model", str(tmp_path / "bpe"), "--vq", str(tmp_path / "vq"), "--out", str(run),
                       "--steps", "2", "--warmup", "1", "--seq-len", "32", "--batch-size", "2", "--eval-every", "2",
                       "--save-every", "2", "--eval-fraction", "0.2", "--no-progress"]) == 0
    assert sum(http_server.requests.values()) == 4  # every URL fetched once, by train-vq, then cached
    corpus = json.loads((run / "tokens" / "corpus.json").read_text())
    assert [r["report"]["skipped"] for r in corpus["sources"]] == [
        {"invalid JSON": 1, "null value": 1}, {"image URL failed": 1}, {"image undecodable": 1}]
    assert [r["documents"] for r in corpus["sources"]] == [6, 4, 5]
    shares = corpus["mixture"]  # the realised mixture: every source once (no weights), the eval documents held out
    assert [r["repeats"] for r in shares] == [1, 1, 1] and abs(sum(r["token_share"] for r in shares) - 1) < 1e-9
    printed = capsys.readouterr().out
    assert "skipped: image URL failed: 1" in printed and "skipped: image undecodable: 1" in printed
    assert "skipped: invalid JSON: 1" in printed and "mixture: " in printed
    assert (run / "step_0000002" / "manifest.json").is_file()

    # the tokenized folder is itself a data argument: no corpus is read again
    again = tmp_path / "again"
    assert train.main([str(run / "tokens"), "--checkpoint", str(run), "--out", str(again), "--steps", "1",
                       "--warmup", "0", "--seq-len", "32", "--batch-size", "2", "--eval-fraction", "0.2",
                       "--no-progress"]) == 0
    assert not (again / "tokens").exists() and (again / "step_0000001" / "manifest.json").is_file()
