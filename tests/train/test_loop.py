import json
import math

import pytest
import torch
from torch._dynamo.utils import counters

from fusion.api import Fusion
from fusion.document import Document
from fusion.kernels import dispatch
from fusion.model.transformer import Transformer
from fusion.run_checkpoints import resolve_checkpoint
from fusion.train.config import TrainConfig, lr_factor
from fusion.train.datasets import training_datasets
from fusion.train.loop import Trainer, TrainingDiverged
from fusion.train.mfu import mfu, peak_flops
from fusion.train.packing import PackedDataset

from .conftest import make_model, make_tied_model


def make_trainer(tokenizer, docs, out, *, model_seed=0, dropout=0.1, tied=False, train_docs=None,
                 **overrides) -> Trainer:
    cfg = TrainConfig(**{**dict(steps=8, lr=3e-3, warmup=2, batch_size=2, seq_len=48, grad_accum=2, save_every=4,
                                eval_every=4, eval_batches=2, keep_last=2, progress=False), **overrides})
    split_train, eval_docs = docs.split(0.2)
    model = (make_tied_model if tied else make_model)(tokenizer, seed=model_seed, dropout=dropout)
    return Trainer(cfg, model, tokenizer, *training_datasets(cfg, tokenizer.vocab, train_docs or split_train,
                                                             eval_docs), out)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine():
    cfg = TrainConfig(steps=110, warmup=10, min_lr_ratio=0.1)
    assert [lr_factor(cfg, s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_factor(cfg, 110) == pytest.approx(0.1)


def test_mfu_is_achieved_over_peak_and_absent_on_cpu():
    assert peak_flops("cpu") is None and mfu(1e4, 6e9, None) is None
    assert mfu(1e4, 6e9, 989e12) == pytest.approx(1e4 * 6e9 / 989e12)


def test_short_run_learns_and_writes_a_loadable_checkpoint(tokenizer, docs, tmp_path):
    tr = make_trainer(tokenizer, docs, tmp_path, steps=40, seq_len=64, batch_size=4, grad_accum=1, dropout=0.0,
                      eval_every=20, save_every=20)
    hist = tr.fit()
    first, last = hist[0]["loss"], sum(m["loss"] for m in hist[-5:]) / 5
    assert first == pytest.approx(math.log(tokenizer.vocab.size), rel=0.1)  # a fresh model is near uniform
    assert last < first - 1.5
    assert hist[-1]["eval_ce"] < hist[19]["eval_ce"] < first
    assert all({"ce_text", "ce_image", "z_loss", "tokens_per_s", "lr"} <= m.keys() for m in hist)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 40
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000020", "step_0000040"]

    assert resolve_checkpoint(tmp_path).name == "step_0000040"
    loaded = Fusion.from_pretrained(tmp_path, device="cpu")  # the run folder: its newest complete checkpoint
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.tensor([docs[0][:32].tolist()])
    with torch.no_grad():
        assert torch.equal(model(ids), tr.model.eval()(ids))
    assert tok.vocab == tokenizer.vocab


def test_resume_continues_the_loss_curve_exactly(tokenizer, docs, tmp_path):
    straight = make_trainer(tokenizer, docs, tmp_path / "a").fit()

    killed = make_trainer(tokenizer, docs, tmp_path / "b")
    step = killed.train_step

    def step_then_die():  # the process dies during step 5, after the step-4 checkpoint
        m = step()
        if killed.step == 5:
            raise KeyboardInterrupt
        return m

    killed.train_step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit()

    fresh = make_trainer(tokenizer, docs, tmp_path / "b", model_seed=123)  # other init: weights must be restored
    resumed = fresh.fit()
    assert [m["step"] for m in resumed] == [5, 6, 7, 8]
    for a, b in zip(straight[4:], resumed, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["lr"] == b["lr"]
    assert straight[-1]["eval_ce"] == resumed[-1]["eval_ce"]
    a_final = Transformer.from_pretrained(tmp_path / "a" / "step_0000008").state_dict()
    b_final = fresh.model.state_dict()
    assert all(torch.equal(a_final[k], b_final[k]) for k in a_final)
    logged = [json.loads(ln)["loss"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [m["loss"] for m in straight]  # no duplicated or missing step in the curve


def test_resume_refuses_a_changed_config_naming_the_fields(tokenizer, docs, tmp_path):
    make_trainer(tokenizer, docs, tmp_path, steps=4).fit()
    changed = make_trainer(tokenizer, docs, tmp_path, steps=4, lr=1e-3, weight_decay=0.0, dropout=0.2,
                           eval_every=1)  # eval_every is bookkeeping: allowed
    with pytest.raises(ValueError, match="configuration changed") as err:
        changed.fit()
    msg = str(err.value)
    assert "lr: 0.003 -> 0.001" in msg and "weight_decay" in msg and "model.dropout" in msg
    assert "eval_every" not in msg

    other = make_trainer(tokenizer, docs, tmp_path, steps=4, train_docs=docs.split(0.5)[0])
    with pytest.raises(ValueError, match="data.num_sequences: saved"):  # another corpus: the position is meaningless
        other.fit()


def expected_lr(lr, step, warmup, total, floor):
    """The documented schedule, written out: linear warmup, then cosine to lr * floor at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / (total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def test_a_finished_run_extends_with_a_larger_steps_and_the_stretched_cosine(tokenizer, docs, tmp_path, caplog):
    short = make_trainer(tokenizer, docs, tmp_path, steps=4, grad_accum=1, dropout=0.0, tied=True).fit()
    assert [m["lr"] for m in short] == pytest.approx([expected_lr(3e-3, s, 2, 4, 0.1) for s in range(4)])
    batch = {k: v for k, v in PackedDataset(docs.split(0.2)[0], seq_len=48, batch_size=2).batch(0, 4).items()
             if k != "sample"}  # the 5th global batch
    with torch.no_grad():
        want = Fusion.from_pretrained(tmp_path, device="cpu").model.loss(batch["ids"], batch["targets"],
                                                                          doc_ids=batch["doc_ids"]).loss
    assert make_trainer(tokenizer, docs, tmp_path, steps=4, grad_accum=1, dropout=0.0, tied=True).fit() == []

    with caplog.at_level("WARNING"):
        longer = make_trainer(tokenizer, docs, tmp_path, steps=8, grad_accum=1, dropout=0.0, tied=True,
                              model_seed=7).fit()
    assert [m["step"] for m in longer] == [5, 6, 7, 8]
    assert "the cosine now ends at step 8" in caplog.text
    assert [m["lr"] for m in longer] == pytest.approx([expected_lr(3e-3, s, 2, 8, 0.1) for s in range(4, 8)])
    assert longer[0]["loss"] == pytest.approx(float(want), abs=1e-6)  # went on from the step-4 weights
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, 9))
    with pytest.raises(ValueError, match="steps: 6 is before the checkpoint's step 8"):
        make_trainer(tokenizer, docs, tmp_path, steps=6, grad_accum=1, dropout=0.0, tied=True).fit()


def test_warmup_longer_than_the_run_is_refused_or_clamped_from_a_preset(caplog):
    with pytest.raises(ValueError, match="warmup=20 must be smaller than steps=10"):
        TrainConfig(steps=10, warmup=20)
    with caplog.at_level("WARNING"):
        cfg = TrainConfig.preset("tiny", steps=10)
    assert cfg.warmup == 1 and "warmup 20" in caplog.text
    assert TrainConfig.preset("tiny", steps=1000).warmup == 20  # long enough: the preset's value stands
    assert TrainConfig.preset(None, steps=50).warmup == 5  # the field default (100) is clamped alike
    with pytest.raises(ValueError, match="warmup=10 must be smaller"):
        TrainConfig.preset("tiny", steps=10, warmup=10)  # given explicitly: never changed


def nan_on(trainer, bad_steps):
    """Make the model's loss NaN during the given (1-based) steps."""
    loss = trainer.model.loss

    def poisoned(*args, **kwargs):
        out = loss(*args, **kwargs)
        if trainer.step + 1 in bad_steps:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.loss = poisoned


def test_a_nan_step_is_skipped_without_touching_the_weights(tokenizer, docs, tmp_path):
    tr = make_trainer(tokenizer, docs, tmp_path)
    nan_on(tr, {3})
    tr.train_step(), tr.train_step()
    before = weights(tr)
    m = tr.train_step()
    assert m["skipped"] and math.isnan(m["loss"])
    assert all(torch.equal(before[k], v) for k, v in weights(tr).items())
    assert not tr.train_step()["skipped"]
    assert not all(torch.equal(before[k], v) for k, v in weights(tr).items())


def test_consecutive_nan_steps_stop_training_and_keep_the_last_good_checkpoint(tokenizer, docs, tmp_path):
    tr = make_trainer(tokenizer, docs, tmp_path, steps=20, save_every=2, max_bad_steps=3, keep_last=10)
    nan_on(tr, set(range(5, 21)))
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        tr.fit()
    assert tr.step == 7
    folder = resolve_checkpoint(tmp_path)
    assert folder.name == "step_0000006"
    saved = Fusion.from_pretrained(tmp_path, device="cpu").model.state_dict()  # from the training checkpoint
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert all(torch.equal(saved[k], v) for k, v in weights(tr).items())  # skipped steps changed nothing

    with torch.no_grad():
        tr.model.embed.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite weights"):
        tr.save()
    assert resolve_checkpoint(tmp_path) == folder


def test_activation_checkpointing_changes_memory_not_maths(tokenizer, docs, tmp_path):
    runs = []
    for ac in (False, True):
        tr = make_trainer(tokenizer, docs, tmp_path / str(ac), activation_checkpointing=ac)
        runs.append(([tr.train_step()["loss"] for _ in range(3)], weights(tr)))
    (plain, w_plain), (ckpt, w_ckpt) = runs
    assert plain == ckpt  # recomputation replays dropout's RNG too
    assert w_plain.keys() == w_ckpt.keys() and all(torch.equal(w_plain[k], w_ckpt[k]) for k in w_plain)


def test_compiled_training_matches_eager_and_fit_gives_back_an_eager_model(tokenizer, docs, tmp_path, monkeypatch):
    """``compile=True`` (the demo's setting) trains the blocks compiled with the eager run's losses: one graph shared
    by every block (per grad mode: training and evaluation), no graph breaks. The model fit() returns generates
    without Dynamo: the training graphs would otherwise recompile per decode shape."""
    common = dict(steps=3, tied=True, dropout=0.0, eval_every=3, save_every=3, grad_accum=1)
    eager = make_trainer(tokenizer, docs, tmp_path / "eager", **common).fit()
    counters.clear()
    monkeypatch.setattr(dispatch, "_logged", set())  # as in a fresh process: each backend choice not logged yet
    trainer = make_trainer(tokenizer, docs, tmp_path / "compiled", compile=True, **common)
    compiled = trainer.fit()
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # not one per layer index
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert [m["loss"] for m in compiled] == pytest.approx([m["loss"] for m in eager], rel=1e-4)
    counters.clear()
    Fusion(trainer.model.eval(), tokenizer).generate([Document.of("a red")], mode="text", max_new_tokens=4,
                                                     do_sample=False)
    assert counters["frames"]["total"] == 0
