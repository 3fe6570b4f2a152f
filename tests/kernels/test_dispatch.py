"""The decoder runs end to end on the Triton backends and agrees with the default (SDPA / eager) path."""

import pytest
import torch

from fusion.kernels import cpu_paths, dispatch
from fusion.model.cache import KVCache
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab

TRITON_OPS = ("attention", "decode_attention", "rms_norm", "swiglu", "linear_cross_entropy", "rope")


@pytest.fixture
def all_triton():
    for op in TRITON_OPS:
        dispatch.set_backend(op, "triton")
    yield
    for op in TRITON_OPS:
        dispatch.set_backend(op, None)


def test_device_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [dispatch._default(op, cpu) for op in dispatch.OPS] == ["sdpa", "sdpa", "eager", "eager", "chunked",
                                                                     "eager"]
    assert {dispatch._default(op, cuda) for op in dispatch.OPS} == {"triton"}


def test_unknown_backend_is_a_clear_error():
    dispatch.set_backend("rms_norm", "cudnn")
    try:
        with pytest.raises(ValueError, match="not available for rms_norm"):
            dispatch.backend_for("rms_norm", torch.device("cpu"))
    finally:
        dispatch.set_backend("rms_norm", None)


def test_fusion_kernels_is_read_once_and_again_after_set_backend(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("FUSION_KERNELS", "attention=eager")
    dispatch.set_backend("rms_norm", None)  # the documented way to have the env var read again
    assert dispatch.backend_for("attention", cpu) == "eager"
    monkeypatch.setenv("FUSION_KERNELS", "attention=sdpa,rms_norm=nope")
    assert dispatch.backend_for("attention", cpu) == "eager"  # not parsed again on each op call
    dispatch.set_backend("rms_norm", None)
    assert dispatch.backend_for("attention", cpu) == "sdpa"
    with pytest.raises(ValueError, match="not available for rms_norm"):
        dispatch.backend_for("rms_norm", cpu)
    monkeypatch.setenv("FUSION_KERNELS", "attention")
    dispatch.set_backend("rms_norm", None)
    with pytest.raises(ValueError, match="expected op=backend"):
        dispatch.backend_for("attention", cpu)
    monkeypatch.delenv("FUSION_KERNELS")
    dispatch.set_backend("rms_norm", None)
    assert dispatch.backend_for("attention", cpu) == "sdpa"


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
