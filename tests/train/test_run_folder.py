"""A killed, corrupted or full-disk run: resume falls back to the newest complete checkpoint and says why."""

import dataclasses
import errno
import json
import os
import re
import stat

import pytest
import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint import FileSystemWriter

from fusion import files
from fusion.api import Fusion
from fusion.run_checkpoints import manifest_problems, resolve_checkpoint
from fusion.train.checkpointing import CheckpointDiskFull

from .test_loop import make_trainer


def losses(run) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_corrupt_checkpoints_torn_metrics_and_leftovers_fall_back_to_the_newest_complete(tokenizer, docs, tmp_path,
                                                                                          caplog):
    run = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        straight = make_trainer(tokenizer, docs, run, steps=6, save_every=2, keep_last=3, tied=True).fit()
    finally:
        os.umask(old_umask)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}, "teammates can read every file"
    assert [p.name for p in sorted(run.glob("step_*"))] == ["step_0000002", "step_0000004", "step_0000006"]
    assert all(manifest_problems(p) == [] for p in run.glob("step_*"))

    # the run "dies": a flipped byte in the newest checkpoint, a truncated file in the one before, a half-written
    # next checkpoint, and a torn last line of metrics.jsonl
    shard = next((run / "step_0000006" / "dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    state = run / "step_0000004" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:-10])
    (run / ".step_0000008.tmp" / "dcp").mkdir(parents=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.2')

    with caplog.at_level("WARNING"):
        resumed = make_trainer(tokenizer, docs, run, steps=6, save_every=2, keep_last=3, tied=True,
                               model_seed=5).fit()
    assert [m["step"] for m in resumed] == [3, 4, 5, 6]  # from step_0000002, the newest complete one
    assert re.search(rf"{re.escape(str(shard))} does not match its sha256", caplog.text)
    assert re.search(rf"{re.escape(str(state))} has \d+ bytes, the manifest says", caplog.text)
    assert "metrics.jsonl line 7 is not a complete record" in caplog.text
    assert ".step_0000008.tmp" in caplog.text and not (run / ".step_0000008.tmp").exists()
    for a, b in zip(straight[2:], resumed, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]  # same world size: exactly
    assert losses(run) == [m["loss"] for m in straight]  # the torn line is gone, nothing doubled
    assert all(manifest_problems(p) == [] for p in run.glob("step_*"))  # the bad ones were rewritten

    # nothing complete at all (here: a folder from before manifests): refused, not silently restarted and pruned
    old = tmp_path / "old"
    (old / "step_0000002").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="1 step folder.* but no complete checkpoint"):
        make_trainer(tokenizer, docs, old).fit()
    assert "manifest.json is missing" in caplog.text


def test_a_full_disk_names_the_folder_and_the_bytes_and_keeps_the_previous_checkpoint(tokenizer, docs, tmp_path,
                                                                                       monkeypatch):
    tr = make_trainer(tokenizer, docs, tmp_path, tied=True)
    tr.train_step(), tr.train_step()
    tr.save()
    tr.train_step()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemWriter, "write_data", disk_full)  # every rank's shard writer
    with pytest.raises(OSError) as err:
        tr.save()
    monkeypatch.undo()
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC and str(tmp_path / ".step_0000003.tmp") in msg
    assert f"the previous checkpoint {tmp_path / 'step_0000002'} is intact" in msg
    params = sum(p.numel() for p in tr.model.parameters())  # tied: the embedding counts once
    assert params < sum(p.numel() for _, p in tr.model.named_parameters(remove_duplicate=False))
    needed = int(re.search(r"needs about ([\d,]+) bytes", msg).group(1).replace(",", ""))
    n_tensors = len(list(tr.model.parameters()))
    assert needed == 3 * 4 * params + 4 * n_tensors  # fp32 weights + Adam's two moments + a step count each

    assert sorted(p.name for p in tmp_path.iterdir() if "step" in p.name) == ["step_0000002"]

    # the run's last save adds the export; a full disk met by a safetensors write (the VQ tokenizer's comes first)
    # is reported by safetensors as its own error type, and must read the same
    def safetensors_disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    tr.cfg = dataclasses.replace(tr.cfg, steps=3)
    monkeypatch.setattr(files, "save_file", safetensors_disk_full)
    with pytest.raises(CheckpointDiskFull, match="needs about") as err:
        tr.save()
    monkeypatch.undo()
    needed = int(re.search(r"needs about ([\d,]+) bytes", str(err.value)).group(1).replace(",", ""))
    assert needed == 4 * 4 * params + 4 * n_tensors  # the export adds one more copy of the weights
    assert sorted(p.name for p in tmp_path.iterdir() if "step" in p.name) == ["step_0000002"]
    assert resolve_checkpoint(tmp_path).name == "step_0000002"
    Fusion.from_pretrained(tmp_path, device="cpu")
    again = make_trainer(tokenizer, docs, tmp_path, tied=True)
    again.resume(resolve_checkpoint(tmp_path))
    assert again.step == 2
    assert torch.equal(again.model.embed.weight, again.model.lm_head.weight)
