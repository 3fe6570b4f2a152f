"""The CPU tuner: its decision rule on injected timings, its cache key and file (corrupt, stale, unwritable),
FUSION_TUNE=off, and every path it may pick against an fp64 reference, in fp32 and bf16."""

import json
import logging

import pytest
import torch

from fusion.kernels import cpu_paths, cpu_tune, dispatch
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """The tuner on, with its own cache dir and empty in-process tables."""
    monkeypatch.setenv("FUSION_TUNE", "on")
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_tune, "_cache", None)
    monkeypatch.setattr(cpu_paths, "_linear", {})
    monkeypatch.setattr(cpu_paths, "_decode", {})
    return tmp_path / "tune.json"


def test_an_alternative_replaces_the_default_only_when_ten_percent_faster():
    assert cpu_tune.decide("gemm", {"gemm": 1.0, "reduce": 0.95}) == "gemm"  # 5% faster: not enough
    assert cpu_tune.decide("gemm", {"gemm": 1.0, "reduce": 0.90}) == "reduce"  # 1.11x
    assert cpu_tune.decide("gemm", {"gemm": 1.0, "reduce": 1.0 / 1.10}) == "reduce"  # exactly the margin
    assert cpu_tune.decide("gemm", {"gemm": 0.5, "reduce": 1.0}) == "gemm"
    assert cpu_tune.decide("a", {"a": 1.0, "b": 0.85, "c": 0.7}) == "c"  # the fastest, not the first faster
    with pytest.raises(ValueError, match="not measured"):
        cpu_tune.decide("a", {"b": 1.0})


def test_the_key_names_machine_site_dtype_and_shape_class():
    m = cpu_tune.Machine("Some CPU", ("avx2",), "2.13.0", 2)
    key = lambda **kw: cpu_tune.entry_key(kw.get("m", m), kw.get("site", "linear"), kw.get("dtype", torch.float32),
                                          (cpu_paths.row_class(kw.get("rows", 5)), 512, 1408))
    assert key(rows=5) == key(rows=8)  # one row class
    others = [key(rows=9), key(dtype=torch.bfloat16), key(site="decode_attention"),
              key(m=cpu_tune.Machine("Other CPU", ("avx2",), "2.13.0", 2)),
              key(m=cpu_tune.Machine("Some CPU", ("avx2", "amx_bf16"), "2.13.0", 2)),
              key(m=cpu_tune.Machine("Some CPU", ("avx2",), "2.14.0", 2)),
              key(m=cpu_tune.Machine("Some CPU", ("avx2",), "2.13.0", 4))]
    assert len({key(), *others}) == 1 + len(others)
    assert [cpu_paths.row_class(r) for r in (1, 2, 3, 8, 9, 16, 33, 64, 65)] == [1, 2, 4, 8, 16, 16, 64, 64, None]


def _choose(measure, default="gemm"):
    return cpu_tune.choose("linear", torch.float32, (8, 64, 32), default, ("reduce", "gemm"), measure)


def test_a_choice_is_measured_once_and_persisted(tuner):
    calls = []
    measure = lambda: calls.append(1) or {"gemm": 2.0, "reduce": 1.0}
    assert _choose(measure) == "reduce" and len(calls) == 1
    assert _choose(measure) == "reduce" and len(calls) == 1  # remembered in the process
    cpu_tune._cache = None
    assert _choose(lambda: pytest.fail("measured again")) == "reduce"  # and in the file
    entry = next(iter(json.loads(tuner.read_text())["entries"].values()))
    assert entry == {"choice": "reduce", "seconds": {"gemm": 2.0, "reduce": 1.0}}
    assert [c["choice"] for c in cpu_tune.choices()] == ["reduce"]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "entries": {}}), json.dumps([1, 2])])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tuner, content, caplog):
    tuner.write_text(content)
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.cpu_tune"):
        assert _choose(lambda: {"gemm": 1.0, "reduce": 2.0}) == "gemm"
    assert "ignoring" in caplog.text
    assert json.loads(tuner.read_text())["format"] == cpu_tune.FORMAT  # rewritten whole


def test_a_stale_entry_is_ignored_and_measured_again(tuner, caplog):
    _choose(lambda: {"gemm": 1.0, "reduce": 2.0})
    data = json.loads(tuner.read_text())
    key = next(iter(data["entries"]))
    data["entries"][key] = {"choice": "a form that no longer exists"}
    tuner.write_text(json.dumps(data))
    cpu_tune._cache = None
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.cpu_tune"):
        assert _choose(lambda: {"gemm": 2.0, "reduce": 1.0}) == "reduce"
    assert "stale" in caplog.text


def test_an_unwritable_cache_keeps_the_choice_in_the_process(tuner, monkeypatch, caplog):
    blocker = tuner.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv("FUSION_CACHE_DIR", str(blocker / "sub"))  # a folder under a file: cannot be made
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.cpu_tune"):
        assert _choose(lambda: {"gemm": 2.0, "reduce": 1.0}) == "reduce"
        assert _choose(lambda: pytest.fail("measured again")) == "reduce"
    assert "cannot write" in caplog.text


def test_fusion_tune_off_pins_todays_rules(tuner, monkeypatch):
    monkeypatch.setenv("FUSION_TUNE", "off")
    assert _choose(lambda: pytest.fail("measured"), default="gemm") == "gemm"
    assert cpu_tune.auto_dtype("cpu") == torch.float32
    assert not tuner.exists() and cpu_tune.choices() == []


def _graph_ops(fn, *args):
    seen = []

    def backend(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")})
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return out, seen[0]


def _bf16_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The tolerance of a bf16 product: 2^-8 * sum |x| |w| per output."""
    return 2.0 ** -8 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["reduce", "gemm"])
def test_each_linear_form_the_tuner_may_pick_computes_the_product(tuner, form, dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    rows, K, N = 16, 96, 40
    x, w = (torch.randn(rows, K, generator=g).to(dtype), torch.randn(N, K, generator=g).to(dtype))
    monkeypatch.setattr(cpu_paths, "_measure_linear", lambda *a: {"reduce": 2.0, "gemm": 1.0} if form == "gemm"
                        else {"reduce": 1.0, "gemm": 2.0})
    assert cpu_paths.tune_linear(rows, K, N, dtype, working_set=1 << 20) == form
    out, ops = _graph_ops(dispatch.linear, x, w)
    assert ("sum" in ops) == (form == "reduce") and ("<built-in function linear>" in ops) == (form == "gemm")
    want = x.double() @ w.double().T  # the fp64 product of the (already rounded) inputs
    err = (out.double() - want).abs()
    if dtype == torch.float32:
        assert err.max() < 1e-4
    else:
        assert (err <= _bf16_bound(x, w)).all(), float((err / _bf16_bound(x, w)).max())


def _decode_reference(q, k, v, seqlens):
    """fp64 attention of each query row over its own causal prefix, head by head (GQA by repetition)."""
    B, Hq, Tq, D = q.shape
    g = Hq // k.shape[1]
    out = torch.zeros(B, Hq, Tq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            for i in range(Tq):
                n = int(seqlens[b]) - Tq + i + 1  # keys up to this query's own position
                s = (q[b, h, i].double() @ k[b, h // g, :n].double().T) / D ** 0.5
                out[b, h, i] = s.softmax(-1) @ v[b, h // g, :n].double()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", cpu_paths.DECODE_FORMS)
@pytest.mark.parametrize("Tq", [1, 5])
def test_each_decode_attention_form_matches_fp64(form, dtype, Tq):
    g = torch.Generator().manual_seed(1)
    B, Hq, Hkv, D, Tmax = 3, 4, 2, 16, 24
    q = torch.randn(B, Hq, Tq, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, Tmax, D, generator=g).to(dtype) for _ in range(2))
    seqlens = torch.tensor([Tq, 13, Tmax])  # one row holding only its new tokens, one part-filled, one full
    k_poison = k.clone()
    for b, n in enumerate(seqlens.tolist()):
        k_poison[b, :, n:] = 1e4  # past a row's length nothing is read
    got = dispatch.decode_attention_impl(form)(q, k_poison, v, seqlens, scale=D ** -0.5)
    err = (got.double() - _decode_reference(q, k, v, seqlens)).abs().max()
    assert err < (1e-5 if dtype == torch.float32 else 2e-2), float(err)


def test_a_session_prepares_its_choices_and_the_compiled_graph_uses_them(tuner, monkeypatch):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", Vocab.build(40, 16))).eval()
    measured = []

    def fake(rows, K, N, dtype, working_set):  # the alternative to today's rule always measures faster
        measured.append((rows, K, N))
        return {"reduce": 2.0, "gemm": 1.0} if rows <= cpu_paths.GEMV_MAX_ROWS else {"reduce": 1.0, "gemm": 2.0}

    monkeypatch.setattr(cpu_paths, "_measure_linear", fake)
    monkeypatch.setattr(cpu_paths, "_measure_decode", lambda shape, dtype, compiled: {"sdpa": 2.0, "math": 1.0})
    cache = torch.zeros(2, model.cfg.n_kv_heads, 65, model.cfg.head_dim)
    cpu_paths.prepare_decode(model, 2, (1, 16), cache, compiled=True)
    shapes = {tuple(m.weight.shape[::-1]) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert sorted(measured) == sorted((r, K, N) for r in (2, 32) for K, N in shapes)
    weight = model.lm_head.weight
    _, ops = _graph_ops(dispatch.linear, torch.randn(2, weight.shape[1]), weight)
    assert "<built-in function linear>" in ops and "sum" not in ops  # 2 rows: gemm, against today's rule
    _, ops = _graph_ops(dispatch.linear, torch.randn(32, weight.shape[1]), weight)
    assert "sum" in ops  # 32 rows: the reduction, against today's rule
    q = torch.zeros(2, model.cfg.n_heads, 16, model.cfg.head_dim)
    assert cpu_paths.decode_form(q, cache, compiled=True) == "math"
    assert cpu_paths.decode_form(q, cache, compiled=False) == "sdpa"  # eager was not prepared
