"""The trainer's compute dtype: resolved once ("auto" through ``cpu_tune.auto_dtype``), used for training and eval
(bf16 as autocast over fp32 weights), recorded in trainer_state.json and kept on resume."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from fusion.kernels import cpu_tune
from fusion.model.weights import model_tensors

from .test_loop import make_trainer

SHORT = dict(steps=2, warmup=1, grad_accum=1, eval_every=2, save_every=2, dropout=0.0)


def auto_means(monkeypatch, dtype: torch.dtype) -> None:
    """Make ``dtype="auto"`` resolve to ``dtype`` on this machine."""
    monkeypatch.setattr(cpu_tune, "auto_dtype", lambda device: dtype)


def autocast_dtype(trainer) -> torch.dtype | None:
    """The autocast dtype inside the trainer's autocast; None where it is off."""
    with trainer.autocast:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def record_matmul_dtypes(trainer) -> dict[str, list[torch.dtype]]:
    """The output dtype of one Linear at every call, split into training and eval calls."""
    seen = {"train": [], "eval": []}
    trainer.model.layers[0].mlp.up_proj.register_forward_hook(
        lambda m, args, out: seen["train" if m.training else "eval"].append(out.dtype))
    return seen


def trainer_state(folder) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


@pytest.mark.parametrize("dtype, auto, want", [
    ("auto", torch.bfloat16, "bf16"), ("auto", torch.float32, "fp32"),
    ("bf16", torch.float32, "bf16"), ("fp32", torch.bfloat16, "fp32")],
    ids=["auto-bf16", "auto-fp32", "bf16", "fp32"])
def test_dtype_resolves_once_auto_through_cpu_tune(tokenizer, docs, tmp_path, monkeypatch, caplog, dtype, auto,
                                                   want):
    auto_means(monkeypatch, auto)
    with caplog.at_level("INFO", logger="fusion.train"):
        tr = make_trainer(tokenizer, docs, tmp_path, dtype=dtype, **SHORT)
    assert tr.dtype == want
    assert autocast_dtype(tr) == (torch.bfloat16 if want == "bf16" else None)
    chosen = "bf16 autocast" if want == "bf16" else "fp32"
    assert f"training in {chosen} ({'auto' if dtype == 'auto' else f'dtype={dtype}'}" in caplog.text


def test_auto_is_fp32_on_a_cpu_with_tuning_off(tokenizer, docs, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_TUNE", "off")
    assert make_trainer(tokenizer, docs, tmp_path, **SHORT).dtype == "fp32"


@pytest.mark.parametrize("auto", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_steps_and_eval_run_in_the_resolved_dtype_over_fp32_weights(tokenizer, docs, tmp_path, monkeypatch, auto):
    auto_means(monkeypatch, auto)
    tr = make_trainer(tokenizer, docs, tmp_path, **SHORT)
    seen = record_matmul_dtypes(tr)
    hist = tr.fit()
    assert set(seen["train"]) == {auto} and set(seen["eval"]) == {auto}
    assert all(math.isfinite(m["loss"]) for m in hist) and "eval_ce" in hist[-1]
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(t.dtype == torch.float32 for s in tr.optimizer.state.values() for t in s.values() if t.dim())

    final = tmp_path / "step_0000002"
    assert trainer_state(final)["dtype"] == ("bf16" if auto == torch.bfloat16 else "fp32")
    assert {m.properties.dtype for m in model_tensors(final / "dcp").values()} == {torch.float32}
    with safe_open(str(next(final.glob("model-*.safetensors"))), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_resume_keeps_the_recorded_dtype(tokenizer, docs, tmp_path, monkeypatch, caplog):
    auto_means(monkeypatch, torch.bfloat16)
    make_trainer(tokenizer, docs, tmp_path, **SHORT).fit()

    with pytest.raises(ValueError, match="dtype: the run trained in bf16, the config asks for fp32"):
        make_trainer(tokenizer, docs, tmp_path, **{**SHORT, "steps": 3}, dtype="fp32").fit()
    assert make_trainer(tokenizer, docs, tmp_path, **{**SHORT, "steps": 3}, dtype="bf16").fit()[-1]["step"] == 3

    auto_means(monkeypatch, torch.float32)  # this machine's auto now says fp32
    tr = make_trainer(tokenizer, docs, tmp_path, **{**SHORT, "steps": 4})
    assert tr.dtype == "fp32"
    seen = record_matmul_dtypes(tr)
    with caplog.at_level("INFO", logger="fusion.train.loop"):
        assert [m["step"] for m in tr.fit()] == [4]
    assert "keeping the run's bf16 (auto would pick fp32 here)" in caplog.text
    assert tr.dtype == "bf16" and autocast_dtype(tr) == torch.bfloat16
    assert set(seen["train"]) == set(seen["eval"]) == {torch.bfloat16}
    assert trainer_state(tmp_path / "step_0000004")["dtype"] == "bf16"


def test_a_state_without_dtype_keeps_what_auto_meant_when_it_was_saved(tokenizer, docs, tmp_path, monkeypatch):
    make_trainer(tokenizer, docs, tmp_path, **SHORT).fit()
    folder = tmp_path / "step_0000002"
    state = trainer_state(folder)
    del state["dtype"]  # as an older run wrote it: its "auto" trained a CPU run in fp32
    (folder / "trainer_state.json").write_text(json.dumps(state))

    auto_means(monkeypatch, torch.bfloat16)
    tr = make_trainer(tokenizer, docs, tmp_path, **{**SHORT, "steps": 4})
    tr.resume(folder)  # directly: the edited file no longer matches the manifest
    assert tr.step == 2 and tr.dtype == "fp32" and autocast_dtype(tr) is None
    with pytest.raises(ValueError, match="dtype: the run trained in fp32, the config asks for bf16"):
        make_trainer(tokenizer, docs, tmp_path, **{**SHORT, "steps": 4}, dtype="bf16").resume(folder)
