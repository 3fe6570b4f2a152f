"""Every ``fusion bench`` suite runs end to end on a CPU with tiny shapes (a smoke test, never a number)."""

import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from fusion.bench import SUITES, attention, decode, ops
from fusion.cli import bench as cli
from fusion.cli.flags import config_overrides


def _ok(rows, n):
    assert len(rows) == n and all(r["status"].startswith("ok") for r in rows), rows


def test_attention_checks_then_times_ours_on_cpu(tmp_path):
    opts = attention.Options(device="cpu", dtype="fp32", head_dims=(16,), seqlens=(32,), tokens=64, model_dim=32,
                             causal="yes", backends=("ours",), warmup=0, iters=1, out=str(tmp_path))
    rows = attention.run(opts)
    _ok(rows, 1)
    assert rows[0]["B"] == 2 and rows[0]["H"] == 2 and rows[0]["fwd_tflops"] > 0 and rows[0]["fwd_bwd_ms"] > 0
    assert (tmp_path / "attention_fwd.png").exists()


def test_decode_checks_then_times_ours_on_cpu(tmp_path):
    opts = decode.Options(device="cpu", dtype="fp32", batches=(2,), seqlens=(40,), heads=4, head_dim=16, gqa=(2,),
                          backends=("ours",), warmup=0, iters=1, plot=False, out=str(tmp_path))
    rows = decode.run(opts)
    _ok(rows, 1)
    assert rows[0]["tb_per_s"] > 0


def test_ops_checks_every_variant_on_cpu():
    opts = ops.Options(device="cpu", dtype="fp32", tokens=32, hidden=32, ffn=48, heads=4, head_dim=16, vocab=64,
                       compile=False, warmup=0, iters=1)
    rows = ops.run(opts)
    assert [(r["op"], r["variant"]) for r in rows] == [
        ("rms_norm", "eager"), ("rms_norm", "ours"), ("rope", "eager"), ("rope", "ours"), ("swiglu", "eager"),
        ("swiglu", "ours"), ("cross_entropy", "eager"), ("cross_entropy", "chunked"), ("cross_entropy", "ours")]
    _ok(rows, 9)


def test_vq_on_cpu():
    from fusion.bench import vq
    rows = vq.run(vq.Options(presets=("tiny",), batch_size=2, dtype="fp32", warmup=0, iters=1, device="cpu"))
    assert len(rows) == 1 and rows[0]["encode_img_s"] > 0 and rows[0]["tokens"] > 0


def test_train_step_on_cpu(tmp_path):
    from fusion.bench import train
    opts = train.Options(presets=("tiny",), seq_len=32, steps=1, warmup=1, dtype="fp32", device="cpu",
                         out=str(tmp_path))
    rows = train.run(opts)
    assert len(rows) == 1 and rows[0]["tokens_per_s"] > 0 and rows[0]["MFU"] is None


def test_generate_decode_row_on_cpu():
    from fusion.bench import generate
    opts = generate.Options(preset="tiny", prompt_len=8, decode_tokens=4, skip_hf=True, device="cpu")
    rows = generate.run(opts)
    assert len(rows) == 1 and rows[0]["bench"] == "decode bs=1" and rows[0]["ours"].endswith("tok/s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_timing_suite_without_cuda_says_so(capsys):
    assert attention.run(attention.Options()) == []
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "need a CUDA GPU" in out[0] and "fusion bench static" in out[0]


def test_bench_help_lists_every_suite_from_any_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "fusion.cli", "bench", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in SUITES:
        assert f"    {name}" in done.stdout
    assert "compile every Triton kernel" in done.stdout


def test_cli_flags_come_from_the_options_dataclass():
    import argparse
    sub = argparse.ArgumentParser().add_subparsers()
    parser = cli.suite_parser(sub, "decode", decode.Options)
    names = {a.dest for a in parser._actions} - {"help"}
    assert names == {f.name for f in fields(decode.Options)}
    args = parser.parse_args(["--batches", "1", "2", "--no-plot", "--dtype", "fp16"])
    opts = decode.Options(**config_overrides(args, decode.Options))
    assert opts.batches == (1, 2) and opts.plot is False and opts.dtype == "fp16" and opts.iters == 50
    assert math.isclose(opts.tol, 2e-2)  # untouched flags keep the dataclass defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "int8"])
    assert set(SUITES) == {"static", "attention", "decode", "ops", "train", "generate", "vq", "cpu", "tokenize",
                           "serve"}


def _tiny_cpu(tmp_path, **kw):
    pytest.importorskip("transformers")
    from fusion.bench import cpu

    return cpu.Options(**{**dict(hidden=64, layers=1, heads=2, text_tokens=256, prompt=8, new_tokens=4, batches=(1, 2),
                                 train_batch=2, train_seq=16, reps=1, compile=False, windows=(4,), roof_n=256,
                                 out=str(tmp_path)), **kw})


def test_cpu_suite_against_hf_on_a_tiny_model(tmp_path, capsys):
    from fusion.bench import cpu
    from fusion.kernels import cpu_tune

    opts = _tiny_cpu(tmp_path)
    rows = cpu.run(opts)
    # FUSION_TUNE=off in the tests: "auto" is fp32 alone
    assert [(r["work"], r["dtype"]) for r in rows] == [
        ("generate bs1", "fp32"), ("generate bs2", "fp32"), ("train", "fp32"), ("window W=4 bs1", "fp32"),
        ("window W=4 bs2", "fp32")]
    assert all(r["fusion_tok_s"] > 0 and "x a plain step" in r["note"] for r in rows[3:])
    rows = rows[:3]
    for r in rows:
        assert r["parity"] and r["mean_kl"] is None and r["vs_fusion_fp32"] is None
        assert r["hf_best_dtype"] == "fp32" and r["hf_best_tok_s"] == r["hf_fp32_tok_s"] > 0 and r["fusion_tok_s"] > 0
        assert math.isclose(r["fusion_vs_hf_best"], r["fusion_tok_s"] / r["hf_fp32_tok_s"])
        assert math.isclose(r["fusion_of_roof"], r["fusion_tok_s"] / r["roof_tok_s"])
    header = json.loads((tmp_path / "cpu_run.json").read_text())
    assert header["dtypes"] == ["fp32"] and header["tuner"] is False and header["choices"] == []
    out = capsys.readouterr().out
    assert f"machine: {cpu_tune.Machine.current().describe()}" in out and "tuner: off (FUSION_TUNE=off)" in out
    # the decode roof's bytes, counted from the shapes: every matrix once, the lm_head, and (batch 2) two
    # embedding rows; width 64, ffn int(64 * 2.75) = 176, 2 heads of 32, vocab 8192 + 256
    model = cpu.build_models(opts, Path(os.environ.get("TMPDIR", "/tmp")) / "fusion-cpu-bench-test")[1]
    layer = 4 * 64 * 64 + 3 * 64 * 176 + 2 * 64 + 2 * (2 * 2 * 32)  # attention, MLP, two norms, q / k norms
    assert cpu.step_bytes(model, 2) == 4 * (layer + 64 + 8448 * 64 + 2 * 64)
    assert math.isclose(rows[1]["roof_tok_s"], 2 * header["read_GB_s"] * 1e9 / cpu.step_bytes(model, 2))
    assert math.isclose(rows[2]["roof_tok_s"], header["matmul_GFLOP_s"]["fp32"] * 1e9 / model.flops_per_token(16))


def test_cpu_suite_times_fusion_and_hf_in_every_dtype(tmp_path, capsys):
    """One row per (work, dtype), each against HF's fastest dtype; bf16 is gated on following HF fp32's logits."""
    from fusion.bench import cpu
    from fusion.numerics import Agreement

    rows = cpu.run(_tiny_cpu(tmp_path, dtypes=("fp32", "bf16"), windows=(0,)))
    works = ["generate bs1", "generate bs2", "train"]
    assert [(r["work"], r["dtype"]) for r in rows] == [(w, d) for w in works for d in ("fp32", "bf16")]
    for r in rows:
        hf = {d: r[f"hf_{d}_tok_s"] for d in ("fp32", "bf16")}
        assert min(hf.values()) > 0 and r["hf_best_tok_s"] == max(hf.values()) == hf[r["hf_best_dtype"]]
        assert math.isclose(r["fusion_vs_hf_best"], r["fusion_tok_s"] / r["hf_best_tok_s"])
        assert math.isclose(r["fusion_of_roof"], r["fusion_tok_s"] / r["roof_tok_s"])
    header = json.loads((tmp_path / "cpu_run.json").read_text())
    rates = header["matmul_GFLOP_s"]
    for fp32, bf16 in zip(rows[::2], rows[1::2], strict=True):
        assert fp32["hf_fp32_tok_s"] == bf16["hf_fp32_tok_s"] and fp32["hf_bf16_tok_s"] == bf16["hf_bf16_tok_s"]
        assert fp32["vs_fusion_fp32"] is None and fp32["parity"] and fp32["mean_kl"] is None
        assert math.isclose(bf16["vs_fusion_fp32"], bf16["fusion_tok_s"] / fp32["fusion_tok_s"])
        assert bf16["parity"] and 0 <= bf16["mean_kl"] <= Agreement.KL_LIMIT
        # bf16 roofs: half the weight bytes a decode step reads; this run's bf16 matmul rate for training
        ratio = rates["bf16"] / rates["fp32"] if fp32["work"] == "train" else 2
        assert math.isclose(bf16["roof_tok_s"] / fp32["roof_tok_s"], ratio)
    hf_bf16 = header["parity"]["bf16"]  # HF bf16 against HF fp32, by the same rule
    assert isinstance(hf_bf16["hf_parity"], bool) and 0 <= hf_bf16["hf_mean_kl"] < math.inf
    assert "parity bf16" in capsys.readouterr().out


def test_cpu_suite_dtypes_and_tune_flags():
    from fusion.bench import cpu

    assert cpu.resolve_dtypes(("auto",)) == ("fp32",)  # FUSION_TUNE=off: bf16 is never confirmed
    assert cpu.resolve_dtypes(("bf16", "auto", "fp32")) == ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16"):
        cpu.resolve_dtypes(("fp16",))
    import argparse
    parser = cli.suite_parser(argparse.ArgumentParser().add_subparsers(), "cpu", cpu.Options)
    opts = cpu.Options(**config_overrides(parser.parse_args(["--dtypes", "fp32", "bf16", "--tune"]), cpu.Options))
    assert opts.dtypes == ("fp32", "bf16") and opts.tune and cpu.Options().dtypes == ("auto",)


def test_cpu_suite_tune_makes_the_choices_before_timing(tmp_path, monkeypatch, capsys):
    """With the tuner on, the first timed decode at a new batch size pays for measuring its choices, unless --tune's
    untimed round made them first; the header lists them."""
    from fusion.bench import cpu
    from fusion.kernels import cpu_paths, cpu_tune

    measured, calls = [], []
    time_calls, generate = cpu_tune.time_calls, cpu.fusion_generate
    monkeypatch.setattr(cpu_tune, "time_calls", lambda *a, **kw: measured.append(1) or time_calls(*a, **kw))

    def counted(*a, **kw):  # measurements made inside each fusion decode, in call order
        before = len(measured)
        out = generate(*a, **kw)
        calls.append(len(measured) - before)
        return out

    monkeypatch.setattr(cpu, "fusion_generate", counted)
    monkeypatch.setenv("FUSION_TUNE", "on")
    for tune in (False, True):
        monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / f"cache-{tune}"))
        for table in ("_linear", "_decode"):
            monkeypatch.setattr(cpu_paths, table, {})
        monkeypatch.setattr(cpu_tune, "_cache", None)
        calls.clear()
        cpu.run(_tiny_cpu(tmp_path, dtypes=("fp32",), batches=(2,), windows=(0,), tune=tune))
        # the parity check decodes one row, then come the decodes of two rows: with --tune an untimed one first,
        # which measures the choices for two rows, so that the timed one measures nothing
        assert len(calls) == 2 + tune and calls[1] > 0 and calls[2:] == ([0] if tune else [])
    choices = json.loads((tmp_path / "cpu_run.json").read_text())["choices"]
    assert sorted(c["shape"][1] for c in choices if c["site"] == "decode_attention") == [1, 2]  # rows, as tuned
    assert all(set(c["seconds"]) == {"sdpa", "math"} for c in choices if c["site"] == "decode_attention")
    assert "tuner choices for this machine (" in capsys.readouterr().out


def test_speculative_suite_on_a_saved_checkpoint(tmp_path, monkeypatch):
    """Plain and speculative rows per setting, every coupling at the first one, then the pass costs."""
    from fusion.api import Fusion
    from fusion.bench import generate
    from fusion.data.synthetic import SyntheticWorld
    from fusion.inference.config import COUPLINGS
    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.mixed import MixedTokenizer
    from fusion.tokenizers.text import TextTokenizer
    from fusion.tokenizers.vq_config import VQConfig

    torch.manual_seed(0)
    tokenizer = MixedTokenizer(TextTokenizer.train(SyntheticWorld(0).texts(300), 300),
                               ImageTokenizer(VQConfig.preset("tiny")).eval())
    model = Transformer(ModelConfig.preset("tiny", tokenizer.vocab, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                           ffn_dim=64))
    Fusion(model, tokenizer).save_pretrained(tmp_path)
    rows = generate.run(generate.Options(speculative=True, checkpoint=str(tmp_path), device="cpu", prompts=2,
                                         windows=(4,)))
    methods = [r["method"] for r in rows if r["batch"] == 1 and not r["setting"].startswith("pass cost")]
    assert methods == ["plain", *[f"speculative W=4 {c}" for c in COUPLINGS]] + ["plain", "speculative W=4 maximal"] * 3
    plain = [r for r in rows if r["method"] == "plain"]
    assert all(r["passes_per_image"] == tokenizer.tokens_per_image + 1 and r["pass_ratio"] == 1 for r in plain)
    fast = [r for r in rows if r["method"].startswith("speculative")]
    assert all(1 <= r["passes_per_image"] <= tokenizer.tokens_per_image + 1 and r["images_s"] > 0 for r in fast)
    costs = [r for r in rows if r["setting"] == "pass cost, checkpoint"]
    assert [r["batch"] for r in costs] == [1, 8] and all(r["window_pass_ms"] > 0 for r in costs)


def test_tokenize_suite_checks_then_measures_on_cpu():
    from fusion.bench import tokenize

    rows = tokenize.run(tokenize.Options(images=6, side=96, distinct=2, text_docs=50))
    assert [r["work"] for r in rows] == ["images", "text"]
    assert rows[0]["documents"] == 6 and rows[0]["images_per_s"] > 0 and rows[1]["documents"] == 50
    assert rows[1]["text_tokens_per_s"] > 0
    assert all(r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0 for r in rows)


def test_serve_suite_against_a_tiny_checkpoint(tmp_path):
    """Both configurations serve every request; the batched one shares passes, so it needs fewer steps."""
    from fusion.api import Fusion
    from fusion.bench import serve
    from fusion.data.synthetic import SyntheticWorld
    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.mixed import MixedTokenizer
    from fusion.tokenizers.text import TextTokenizer
    from fusion.tokenizers.vq_config import VQConfig

    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    tokenizer = MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())
    Fusion(Transformer(ModelConfig.preset("tiny", tokenizer.vocab)), tokenizer).save_pretrained(tmp_path / "ckpt")
    rows = serve.run(serve.Options(checkpoint=str(tmp_path / "ckpt"), clients=4, requests=8, max_batch=8,
                                   max_new_tokens=8, threads=1, out=str(tmp_path)))
    batched, serial = rows
    assert batched["config"] == "batched" and serial["config"] == "one at a time"
    assert batched["requests"] == serial["requests"] == 8 and batched["failed"] == serial["failed"] == 0
    assert batched["images_s"] > 0 and batched["first_image_p50_s"] > 0 and batched["first_token_p50_s"] > 0
    assert batched["steps"] < serial["steps"]  # requests shared passes
