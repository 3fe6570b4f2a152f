"""VQ tokenizer training: a short CPU run improves on the untrained model; sources, files and the CLI work."""

from __future__ import annotations

import json

import pytest
import torch

from fusion.cli.train_vq import main
from fusion.data.spec import CorpusSpec
from fusion.data.synthetic import SyntheticWorld, render
from fusion.tokenizers.image import ImageTokenizer
from fusion.train.vq.config import VQTrainConfig
from fusion.train.vq.data import CorpusImages, build_sets, load_images
from fusion.train.vq.loop import train_vq
from fusion.train.vq.metrics import code_stats, psnr, ssim

FAST = dict(train_images=256, eval_images=48, batch_size=16, progress=False)


def test_metrics_against_hand_computed_values():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.2  # 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    assert psnr(x, y) == pytest.approx(20.0, abs=1e-4)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x - 1, x + 1) < 1e-3  # black vs white: only the c1 term remains
    usage, ppl = code_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert usage == 0.5 and ppl == pytest.approx(2.0)


def test_short_training_improves_psnr_and_keeps_codebook_used(tmp_path):
    cfg = VQTrainConfig.preset("tiny", steps=40, eval_every=20, **FAST)
    model, m = train_vq(cfg, SyntheticWorld(0), tmp_path)
    assert m["psnr"] > m["initial_psnr"] + 5
    assert m["ssim"] > m["initial_ssim"] + 0.3
    assert m["usage"] > max(0.5, 2 * m["initial_usage"])  # k-means init + dead-code re-seeding: no collapse
    assert m["perplexity"] > 10 * m["initial_perplexity"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 20, 40] and lines[-1]["psnr"] == m["psnr"]
    assert (tmp_path / "reconstructions.png").is_file()
    back = ImageTokenizer.from_pretrained(tmp_path)
    images = [render(s) for s in SyntheticWorld(0).scenes(4, seed_offset=7)]
    assert torch.equal(back.encode(images), model.encode(images))


def test_sources_folder_pil_and_discriminator(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    scenes = SyntheticWorld(1).scenes(12)
    for i, scene in enumerate(scenes):
        render(scene, 40).save(folder / f"{i}.png")  # 40px: the tokenizer resizes to 32
    (folder / "notes.txt").write_text("not an image")
    (folder / "zero.png").write_bytes(b"")  # a zero-byte file is skipped and counted, not fatal
    cfg = VQTrainConfig.preset("tiny", steps=3, eval_every=3, disc_start=1, **FAST)
    corpus = CorpusImages(CorpusSpec.parse(str(folder)))
    _, m = train_vq(cfg, corpus, tmp_path / "a")
    assert torch.isfinite(torch.tensor(m["psnr"])) and "oracle_accuracy" not in m
    assert corpus.report.rows == 13 and corpus.report.kept == 12 and corpus.report.skipped == {"image undecodable": 1}
    # the pixels trained on are the tokenizer's own preprocessing of each file
    tokenizer = ImageTokenizer(cfg.vq)
    train, held = build_sets(cfg, tokenizer, str(folder))
    want = {tuple(tokenizer.prepare(render(s, 40)).tobytes()) for s in scenes}
    got = {tuple(x.permute(1, 2, 0).numpy().tobytes()) for x in torch.cat([train.pixels, held.pixels])}
    assert got == want and len(held.pixels) == 1
    _, m = train_vq(cfg, load_images([render(s, 40) for s in scenes]), tmp_path / "b")
    assert (tmp_path / "b" / "vq.json").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="doesn't contain any data files"):
        train_vq(cfg, str(tmp_path / "empty"), tmp_path / "c")
    with pytest.raises(TypeError, match="PIL"):
        load_images(["not an image"])


def test_hf_dataset_image_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [render(s) for s in SyntheticWorld(2).scenes(8)]
    ds = datasets.Dataset.from_dict({"image": images, "text": ["x"] * 8}).cast_column("image", datasets.Image())
    assert len(load_images(ds)) == 8
    with pytest.raises(ValueError, match="no column"):
        load_images(ds, column="pixels")


def test_cli_main(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, scene in enumerate(SyntheticWorld(3).scenes(6)):
        render(scene).save(folder / f"{i}.png")
    args = [str(folder), "--out", str(tmp_path), "--steps", "2", "--batch-size", "4", "--device", "cpu",
            "--resize", "pad"]
    assert main(args) == 0
    assert (tmp_path / "vq.safetensors").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert ImageTokenizer.from_pretrained(tmp_path).cfg.resize == "pad"
    report = json.loads((tmp_path / "corpus.json").read_text())["report"]
    assert report["rows"] == 6 and report["kept"] == 6
