"""A run's checkpoints for inference: the HF sharded layout, written shard by shard; run folders load directly."""

import json
import shutil

import torch
from safetensors import safe_open

from fusion.api import Fusion
from fusion.cli.export import main as export_main
from fusion.cli.generate import main as generate_main
from fusion.model.transformer import Transformer
from fusion.run_checkpoints import resolve_checkpoint
from fusion.train import export as export_module

from .test_loop import make_trainer


def test_final_save_exports_fusion_export_shards_and_run_folders_load(tokenizer, docs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tr = make_trainer(tokenizer, docs, run, steps=4, save_every=2, keep_last=5, tied=True)
    saved = {}
    save = tr.save

    def save_and_remember():  # the live weights at each checkpoint: the reference for what loads back
        saved[tr.step] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        return save()

    tr.save = save_and_remember
    tr.fit()
    names = sorted(k for k in saved[4] if k != "lm_head.weight")  # tied: stored once, as embed.weight

    # the last step folder is an inference folder in HF's sharded layout; intermediate ones hold DCP only
    final = run / "step_0000004"
    index = json.loads((final / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == names and set(index["weight_map"].values()) == {
        "model-00001-of-00001.safetensors"}
    assert not list((run / "step_0000002").glob("model*"))
    loaded = Fusion.from_pretrained(run, device="cpu").model
    assert loaded.lm_head.weight is loaded.embed.weight
    assert all(torch.equal(loaded.state_dict()[k], saved[4][k]) for k in saved[4])

    # fusion export: several small shards, read from DCP one output file at a time
    calls = []
    read = export_module.read_model_tensors
    monkeypatch.setattr(export_module, "read_model_tensors",
                        lambda d, names, *a, **k: calls.append(list(names)) or read(d, names, *a, **k))
    limit_mb = 0.05
    assert export_main([str(run), str(tmp_path / "out"), "--max-shard-mb", str(limit_mb)]) == 0
    monkeypatch.undo()
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == len(calls) > 2 and files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"
    assert sorted(n for c in calls for n in c) == names and max(map(len, calls)) < len(names)
    assert index["metadata"]["total_size"] == sum(saved[4][k].numel() * 4 for k in names)
    for file in files:
        with safe_open(str(out / file), framework="pt") as f:
            keys = list(f.keys())
            assert all(index["weight_map"][k] == file for k in keys)
            assert len(keys) == 1 or sum(f.get_tensor(k).numel() * 4 for k in keys) <= limit_mb * 2**20
            assert all(torch.equal(f.get_tensor(k), saved[4][k]) for k in keys)
    exported = Transformer.from_pretrained(out)
    assert exported.lm_head.weight is exported.embed.weight
    assert all(torch.equal(exported.state_dict()[k], saved[4][k]) for k in saved[4])
    assert Fusion.from_pretrained(out, device="cpu").tokenizer.vocab == tokenizer.vocab

    # a run killed before its end: the newest complete checkpoint holds only the training state
    shutil.rmtree(final)
    assert resolve_checkpoint(run).name == "step_0000002"
    early = Fusion.from_pretrained(run, device="cpu").model
    assert early.lm_head.weight is early.embed.weight
    assert all(torch.equal(early.state_dict()[k], saved[2][k]) for k in saved[2])
    page = tmp_path / "page.html"
    assert generate_main(["--checkpoint", str(run), "--prompt", "a red", "--mode", "text", "--max-new-tokens", "3",
                          "--device", "cpu", "--out", str(page)]) == 0
    assert "<html" in page.read_text()
