"""The backend choice: defaults per device, every backend against an fp64 reference, overrides and FUSION_KERNELS
(parsed once), clear errors, a choice Dynamo traces; and the decoder end to end on the Triton backends."""

import pytest
import torch
from torch._dynamo.utils import counters

from fusion.kernels import cpu_paths, dispatch, overrides, registry
from fusion.model.cache import KVCache
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab

from .conftest import close

TRITON_OPS = ("attention", "decode_attention", "rms_norm", "swiglu", "linear_cross_entropy", "rope")


@pytest.fixture
def all_triton():
    for op in TRITON_OPS:
        dispatch.set_backend(op, "triton")
    yield
    for op in TRITON_OPS:
        dispatch.set_backend(op, None)


BUILT_IN = {"attention": "sdpa", "decode_attention": "sdpa", "rms_norm": "eager", "swiglu": "eager",
            "linear_cross_entropy": "chunked", "rope": "eager"}  # op -> its portable (torch) backend


@pytest.fixture
def fresh_overrides(monkeypatch):
    """No override from another test; FUSION_KERNELS read again after this test's env changes are undone."""
    monkeypatch.setattr(overrides, "_overrides", {})
    monkeypatch.delenv("FUSION_KERNELS", raising=False)
    overrides._env = None
    yield
    overrides._env = None


def test_device_defaults():
    assert {op: registry.default(op, "cpu") for op in registry.ops()} == BUILT_IN
    assert {op: registry.default(op, "cuda") for op in registry.ops()} == dict.fromkeys(BUILT_IN, "triton")
    assert {op: registry.default(op, "mps") for op in registry.ops()} == BUILT_IN  # no Triton there: portable


# ---------------------------------------------------------------- fp64 references, one per op


def _attention_ref(q, k, v, *, causal, doc_ids, scale):
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    T = q.shape[2]
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if causal else torch.ones(T, T, dtype=torch.bool)
    allowed = allowed.to(q.device)[None, None]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    scores = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _decode_ref(q, k_cache, v_cache, cache_seqlens, *, scale):
    """Row by row: the valid cache prefix, the Tq new tokens causal at its end."""
    rows = []
    for b, n in enumerate(cache_seqlens.tolist()):
        qb, kb, vb = q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n]
        scores = (qb.double() @ kb.double().repeat_interleave(q.shape[1] // k_cache.shape[1], 1).transpose(-1, -2))
        Tq = q.shape[2]
        allowed = torch.arange(n)[None, :] <= (n - Tq + torch.arange(Tq))[:, None]
        scores = scores * (scale or q.shape[-1] ** -0.5)
        probs = scores.masked_fill(~allowed.to(q.device), float("-inf")).softmax(-1)
        rows.append(probs @ vb.double().repeat_interleave(q.shape[1] // k_cache.shape[1], 1))
    return torch.cat(rows)


def _rms_norm_ref(x, weight, eps):
    x = x.double()
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight.double()


def _ce_ref(hidden, weight, targets, *, ignore_index):
    logits = hidden.double() @ weight.double().t()
    lse = logits.logsumexp(-1)
    keep = targets != ignore_index
    picked = logits.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return (lse - picked) * keep, lse * keep


def _rope_ref(q, k, cos, sin):
    def rotate(x):
        x1, x2 = x.double().chunk(2, -1)
        return x.double() * cos.double() + torch.cat((-x2, x1), -1) * sin.double()
    return rotate(q), rotate(k)


def _cases(device):
    """op -> (args, kwargs, reference function): small inputs for every op's contract."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    doc_ids = torch.tensor([[0] * 7 + [1] * 9], device=device)
    seqlens = torch.tensor([5, 12], device=device)
    targets = torch.tensor([1, 4, -100, 7, 0, 2], device=device)
    return {
        "attention": ((r(1, 4, 16, 16), r(1, 2, 16, 16), r(1, 2, 16, 16)),
                      dict(causal=True, doc_ids=doc_ids, scale=None), _attention_ref),
        "decode_attention": ((r(2, 4, 2, 16), r(2, 2, 16, 16), r(2, 2, 16, 16), seqlens), dict(scale=0.3),
                             _decode_ref),
        "rms_norm": ((r(3, 5, 32), r(32), 1e-5), {}, _rms_norm_ref),
        "swiglu": ((r(3, 40), r(3, 40)), {}, lambda gate, up: torch.nn.functional.silu(gate.double()) * up.double()),
        "linear_cross_entropy": ((r(6, 16), r(9, 16), targets), dict(ignore_index=-100), _ce_ref),
        "rope": ((r(2, 4, 8, 16), r(2, 2, 8, 16), r(8, 16), r(8, 16)), {}, _rope_ref),
    }


def _close(got, want):
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        close(a, b, torch.float32)


def test_every_op_has_a_portable_torch_backend_that_computes_its_contract(fresh_overrides):
    cpu = torch.device("cpu")
    cases = _cases(cpu)
    assert set(registry.ops()) == set(cases), "an op without a reference case here: add one"
    for op, (args, kwargs, ref) in cases.items():
        portable = registry.portable(op)
        assert portable.available and portable.default_on == registry.ANY_DEVICE and not portable.guarded
        assert dispatch.backend_for(op, cpu) == portable.name == BUILT_IN.get(op, portable.name)
        _close(getattr(dispatch, op)(*args, **kwargs), ref(*args, **kwargs))  # the public call site


@pytest.mark.parametrize("op, backend", [(op, name) for op in registry.ops() for name in registry.backends(op)])
def test_every_backend_that_runs_here_computes_its_contract(op, backend, device, fresh_overrides):
    if not registry.backends(op)[backend].available:
        pytest.skip(f"{op}/{backend} cannot run on this machine")
    args, kwargs, ref = _cases(device)[op]
    dispatch.set_backend(op, backend)
    assert dispatch.backend_for(op, device) == backend
    _close(getattr(dispatch, op)(*args, **kwargs), ref(*args, **kwargs))


def test_unknown_names_are_clear_errors(fresh_overrides, monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="backend 'cudnn' is not available for rms_norm: no backend of that name"):
        dispatch.set_backend("rms_norm", "cudnn")
    with pytest.raises(ValueError, match="unknown op 'layer_norm'; ops are"):
        dispatch.set_backend("layer_norm", "eager")
    with pytest.raises(ValueError, match="unknown op 'layer_norm'"):
        dispatch.backend_for("layer_norm", cpu)
    monkeypatch.setenv("FUSION_KERNELS", "rms_norm=cudnn")
    dispatch.set_backend("rms_norm", None)  # an env var naming an unknown backend fails where the op runs
    assert dispatch.backend_for("attention", cpu) == "sdpa"
    with pytest.raises(ValueError, match="'cudnn' is not available for rms_norm.*available here: \\['eager'"):
        dispatch.rms_norm(torch.ones(2, 4), torch.ones(4))
    monkeypatch.setenv("FUSION_KERNELS", "layer_norm=eager")
    dispatch.set_backend("rms_norm", None)
    with pytest.raises(ValueError, match="FUSION_KERNELS entry 'layer_norm=eager': expected op=backend"):
        dispatch.backend_for("attention", cpu)


def test_fusion_kernels_is_parsed_once_and_again_after_set_backend(fresh_overrides, monkeypatch):
    cpu = torch.device("cpu")
    parsed = []
    real_parse = overrides._parse
    monkeypatch.setattr(overrides, "_parse", lambda spec: parsed.append(spec) or real_parse(spec))
    (q, k, v), kwargs, ref = _cases(cpu)["attention"]
    monkeypatch.setenv("FUSION_KERNELS", "attention=eager")
    for _ in range(3):
        _close(dispatch.attention(q, k, v, **kwargs), ref(q, k, v, **kwargs))
        assert dispatch.backend_for("attention", cpu) == "eager"
    monkeypatch.setenv("FUSION_KERNELS", "attention=sdpa,rms_norm=nope")
    _close(dispatch.attention(q, k, v, **kwargs), ref(q, k, v, **kwargs))
    assert dispatch.backend_for("attention", cpu) == "eager" and parsed == ["attention=eager"]  # not re-read
    dispatch.set_backend("swiglu", None)  # any op: the documented way to have the env var read again
    assert dispatch.backend_for("attention", cpu) == "sdpa"
    assert parsed == ["attention=eager", "attention=sdpa,rms_norm=nope"]
    with pytest.raises(ValueError, match="not available for rms_norm"):
        dispatch.backend_for("rms_norm", cpu)
    dispatch.set_backend("attention", "eager")  # an override beats the env var, not even read for it
    _close(dispatch.attention(q, k, v, **kwargs), ref(q, k, v, **kwargs))
    assert dispatch.backend_for("attention", cpu) == "eager" and len(parsed) == 2
    (gate, up), _, swiglu_ref = _cases(cpu)["swiglu"]
    _close(dispatch.swiglu(gate, up), swiglu_ref(gate, up))  # the next op without an override reads it again
    assert len(parsed) == 3


def test_a_compiled_graph_looks_the_choice_up_without_reparsing_or_breaking(fresh_overrides, monkeypatch):
    cpu = torch.device("cpu")
    (x, w, eps), _, norm_ref = _cases(cpu)["rms_norm"]
    (q, k, v), kwargs, attn_ref = _cases(cpu)["attention"]
    monkeypatch.setenv("FUSION_KERNELS", "attention=eager")
    parsed = []
    real_parse = overrides._parse
    monkeypatch.setattr(overrides, "_parse", lambda spec: parsed.append(spec) or real_parse(spec))
    fn = lambda x, q: (dispatch.rms_norm(x, w, eps), dispatch.attention(q, k, v, **kwargs))  # noqa: E731
    fn(x, q)  # eager first: the env var is parsed here, not while tracing
    torch._dynamo.reset()
    counters.clear()
    got = torch.compile(fn, backend="eager", fullgraph=True)(x, q)
    _close(got, (norm_ref(x, w, eps), attn_ref(q, k, v, **kwargs)))
    assert parsed == ["attention=eager"] and counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    torch._dynamo.reset()


def _model(device):
    cfg = ModelConfig(vocab=Vocab.build(40, 24), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                      max_seq_len=64)
    torch.manual_seed(0)
    return Transformer(cfg).to(device)


def _loss_and_grads(model, ids, doc_ids):
    model.zero_grad()
    out = model.loss(ids[:, :-1], ids[:, 1:], doc_ids=doc_ids)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_training_step_matches_default_backends(device, all_triton):
    model = _model(device)
    ids = torch.randint(0, model.cfg.vocab.size, (2, 31), device=device)
    doc_ids = torch.tensor([[0] * 12 + [1] * 18, [5] * 30], device=device)
    loss, grads = _loss_and_grads(model, ids, doc_ids)
    for op in TRITON_OPS:
        dispatch.set_backend(op, None)
    ref_loss, ref_grads = _loss_and_grads(model, ids, doc_ids)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)


@torch.no_grad()
def test_cached_decoding_matches_default_backends(device, all_triton):
    model = _model(device).eval()
    prompt = torch.randint(0, model.cfg.vocab.size, (2, 9), device=device)
    step = torch.randint(0, model.cfg.vocab.size, (2, 1), device=device)

    def run():
        cache = KVCache.allocate(model.cfg, 2, 32, device=device, dtype=torch.float32)
        first = model(prompt, cache=cache)
        return first, model(step, cache=cache)

    got = run()
    for op in TRITON_OPS:
        dispatch.set_backend(op, None)
    for g, r in zip(got, run(), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_linear_is_a_reduction_in_a_compiled_cpu_decode_and_a_matmul_elsewhere():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 64, generator=g, dtype=torch.float64)
    targets = []

    def recording_backend(gm, example_inputs):
        targets.append({str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")})
        return gm.forward

    for rows in (1, cpu_paths.GEMV_MAX_ROWS, cpu_paths.GEMV_MAX_ROWS + 1):
        x = torch.randn(rows, 1, 64, generator=g, dtype=torch.float64)
        got = torch.compile(dispatch.linear, backend=recording_backend, fullgraph=True)(x, weight)
        torch.testing.assert_close(got, torch.einsum("btk,nk->btn", x, weight), rtol=1e-12, atol=1e-12)
        assert torch.equal(dispatch.linear(x, weight), torch.nn.functional.linear(x, weight))  # eager: the matmul
    assert ["sum" in t and "<built-in function linear>" not in t for t in targets] == [True, True, False], targets
    assert "<built-in function linear>" in targets[2], targets
