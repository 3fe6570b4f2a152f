"""The demo's plumbing on a minute-long run; the full demo and its >= 90% targets run in .ci/run."""

import json

import torch

import fusion
from fusion.cli.demo import main
from fusion.demo import DemoConfig, run


def test_quick_demo_writes_page_report_and_a_loadable_checkpoint(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "text -> image" in printed and "image -> text" in printed

    report = json.loads((tmp_path / "report.json").read_text())
    assert 0.0 <= report["text_to_image_accuracy"] <= 1.0
    assert set(report["seconds"]) == {"bpe", "vq", "tokenize", "decoder", "generate"}
    n = DemoConfig.quick(str(tmp_path)).eval_prompts
    page = (tmp_path / "index.html").read_text()
    # every caption prompt gets a generated image; every image prompt shows its picture
    assert page.count("<img") == 2 * n and page.count("caption -&gt; image") == n

    model = fusion.load(tmp_path / "checkpoint", device="cpu")
    doc = model.generate("a large red circle:", mode="image", seed=0)  # one prompt -> one Document
    assert model.generate(["a large red circle:"], mode="image", seed=0) == [doc]  # a list is a batch
    assert len(doc.images) == 1 and doc.images[0].size == (32, 32)


def test_demo_is_deterministic(tmp_path):
    cfg = DemoConfig.quick(str(tmp_path / "a"))
    a = run(cfg)
    b = run(DemoConfig.quick(str(tmp_path / "b")))
    assert (a.text_to_image_accuracy, a.image_to_caption_accuracy) == (b.text_to_image_accuracy,
                                                                       b.image_to_caption_accuracy)
    wa = fusion.load(tmp_path / "a" / "checkpoint", device="cpu").model.state_dict()
    wb = fusion.load(tmp_path / "b" / "checkpoint", device="cpu").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
