"""The checkpointer on one process: the model config written once per step folder, folders written before that
still resume, and a collective's timeout named by rank, checkpoint and phase."""

import json
import shutil

import pytest

from fusion.model.config import ModelConfig
from fusion.train.checkpointer import Checkpointer, CheckpointTimeout
from fusion.train.distributed import DistInfo
from fusion.train.loop import Trainer

from .test_loop import make_trainer


def trainer_state(folder) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def test_the_model_config_is_written_once_and_run_folders_written_before_still_resume(tokenizer, docs, tmp_path,
                                                                                      monkeypatch):
    # a run saved in the layout earlier versions wrote: trainer_state.json repeated the model config as
    # "model_config" (sealed in the manifest like every file)
    old_state = Trainer.trainer_state
    monkeypatch.setattr(Trainer, "trainer_state",
                        lambda self: {**old_state(self), "model_config": self.model.cfg.to_dict()})
    straight = make_trainer(tokenizer, docs, tmp_path).fit()
    monkeypatch.undo()
    old = tmp_path / "step_0000004"
    assert trainer_state(old)["model_config"] == json.loads((old / "config.json").read_text())
    shutil.rmtree(tmp_path / "step_0000008")  # killed before the last save: resume from the old step-4 folder

    fresh = make_trainer(tokenizer, docs, tmp_path, model_seed=123)  # another init: the weights must come back
    resumed = fresh.fit()
    assert [m["step"] for m in resumed] == [5, 6, 7, 8]
    for a, b in zip(straight[4:], resumed, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"]
    final = tmp_path / "step_0000008"
    assert "model_config" not in trainer_state(final)  # one copy: config.json
    assert ModelConfig.from_dict(json.loads((final / "config.json").read_text())) == fresh.model.cfg

    shutil.rmtree(final)
    with pytest.raises(ValueError, match="model.dropout: 0.1 -> 0.2"):  # an old folder's model config still counts
        make_trainer(tokenizer, docs, tmp_path, dropout=0.2).fit()


def test_a_collective_timeout_names_the_rank_the_checkpoint_and_the_phase(tmp_path):
    ckpt = Checkpointer(tmp_path, DistInfo(rank=0, world_size=2), keep_last=2, timeout_s=10)
    with pytest.raises(CheckpointTimeout, match=r"^rank 0: checkpoint save of step 4 timed out in phase 'seal' "
                                                r"\(rank 1 did not reach it within --dist-timeout-s 10 s\)$"):
        with ckpt._phase("save of step 4", "seal"):
            raise RuntimeError("[Rank 0]: Rank 1 failed to pass monitoredBarrier in 10000 ms")
    ckpt = Checkpointer(tmp_path, DistInfo(rank=1, world_size=2), keep_last=2, timeout_s=10)
    with pytest.raises(CheckpointTimeout, match=r"^rank 1: checkpoint resume from step_0000002 timed out in phase "
                                                r"'verify' \(a rank did not reach this collective within"):
        with ckpt._phase("resume from step_0000002", "verify"):
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 10000ms for recv")
    with pytest.raises(RuntimeError, match="^disk on fire$"):  # anything but a timeout passes through as it is
        with ckpt._phase("save of step 4", "write state"):
            raise RuntimeError("disk on fire")
