"""Lightning .ckpt files (Meta's vqgan.ckpt) read safely: bookkeeping objects tolerated, code never run."""

import argparse
import os
import sys
import types

import numpy as np
import pytest
import torch

from fusion.interop.lightning_ckpt import load_lightning_state


@pytest.fixture
def fake_lightning(monkeypatch):
    """A stand-in ``pytorch_lightning`` so the test can pickle a callback class the way Lightning 1.x did."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    for mod in ("pytorch_lightning", "pytorch_lightning.callbacks", name):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    cls = type("ModelCheckpoint", (), {"__module__": name})
    sys.modules[name].ModelCheckpoint = cls
    return cls


def lightning_ckpt(callback_cls) -> dict:
    state = {"encoder.conv_in.weight": torch.randn(4, 3, 3, 3), "quantize.embedding.weight": torch.randn(16, 4)}
    return {"epoch": 3, "global_step": np.int64(1200), "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "callbacks": {callback_cls: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
            "hparams": argparse.Namespace(lr=4.5e-6), "optimizer_states": [{"state": {}, "param_groups": []}]}


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_lightning_checkpoint_gives_its_state_dict(tmp_path, fake_lightning, zip_format):
    ckpt = lightning_ckpt(fake_lightning)
    torch.save(ckpt, tmp_path / "vqgan.ckpt", _use_new_zipfile_serialization=zip_format)
    got = load_lightning_state(tmp_path / "vqgan.ckpt")
    assert got.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(got[k], v) for k, v in ckpt["state_dict"].items())


class Payload:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_in_a_checkpoint_is_refused_by_name_and_never_run(tmp_path, zip_format):
    marker = tmp_path / "ran"
    ckpt = {"state_dict": {"w": torch.ones(2)}, "extra": Payload(marker)}
    torch.save(ckpt, tmp_path / "evil.ckpt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError, match=r"evil.ckpt: refusing to unpickle \['(posix|nt)\.system'\]"):
        load_lightning_state(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_files_that_are_not_state_dicts_are_named(tmp_path):
    torch.save({"state_dict": {"w": "not a tensor"}}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="odd.ckpt: expected a Lightning checkpoint"):
        load_lightning_state(tmp_path / "odd.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_lightning_state(tmp_path / "missing.ckpt")
