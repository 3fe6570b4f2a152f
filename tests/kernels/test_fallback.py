"""A Triton op that fails to build falls back to the default backend once, loudly; strict mode raises.

The failure is real: the patched launch hands Triton's own compiler front end a kernel that reads a plain
Python global (what the attention kernels once did), and Triton raises its CompilationError.
"""

import logging

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.errors import CompilationError
from triton.runtime.jit import JITFunction

from fusion.kernels import attention, dispatch, fallback, registry

SCALE = 2.0  # a plain global: real compilers refuse it inside a kernel


def _reads_plain_global(X, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs) * SCALE)


class _FailsToCompile:
    """Stands in for the attention forward kernel: launching it compiles a broken kernel for sm_90."""

    def __getitem__(self, grid):
        def launch(**args):
            src = ASTSource(JITFunction(_reads_plain_global), {"X": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 16})
            triton.compile(src, target=GPUTarget("cuda", 90, 32))
        return launch


@pytest.fixture
def broken_attention(monkeypatch):
    monkeypatch.setattr(attention, "_fwd_kernel", _FailsToCompile())
    monkeypatch.setattr(fallback, "failed", {})
    dispatch.set_backend("attention", "triton")
    yield
    dispatch.set_backend("attention", None)


def _inputs():
    torch.manual_seed(0)
    return torch.randn(1, 2, 16, 16), torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)


def test_compile_error_falls_back_to_sdpa_with_one_warning(broken_attention, monkeypatch, caplog):
    monkeypatch.delenv("FUSION_STRICT_KERNELS", raising=False)
    q, k, v = _inputs()
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.dispatch"):
        outs = [dispatch.attention(q, k, v, causal=True) for _ in range(3)]
    expected = dispatch._attention_sdpa(q, k, v, causal=True, doc_ids=None, scale=None)
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "attention" in message and "CompilationError" in message and "FUSION_KERNELS=attention=sdpa" in message


def test_strict_mode_raises(broken_attention, monkeypatch):
    monkeypatch.setenv("FUSION_STRICT_KERNELS", "1")
    with pytest.raises(CompilationError):
        dispatch.attention(*_inputs(), causal=True)


def _broken_rotate(real):
    """rope's one kernel rotates both ways; break only the backward (transposed) rotation."""
    def rotate(x, cos, sin, backward):
        if backward:
            _FailsToCompile()[(1,)]()
        return real(x, cos, sin, backward)
    return rotate


@pytest.mark.parametrize("op", ["attention", "rope"])
def test_a_backward_that_cannot_build_recomputes_its_gradient_on_the_fallback(op, monkeypatch, caplog):
    from fusion.kernels import rope

    monkeypatch.delenv("FUSION_STRICT_KERNELS", raising=False)
    monkeypatch.setattr(fallback, "failed", {})
    if op == "attention":
        monkeypatch.setattr(attention, "_bwd_dkdv_kernel", _FailsToCompile())
    else:
        monkeypatch.setattr(rope, "_rotate", _broken_rotate(rope._rotate))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 16, requires_grad=True) for _ in range(3))
    cos, sin = torch.randn(16, 16), torch.randn(16, 16)
    impl = lambda backend: dispatch.implementation(op, backend)
    run = {"attention": lambda backend: impl(backend)(q, k, v, causal=True, doc_ids=None, scale=None),
           "rope": lambda backend: sum(x.sum() * (i + 1) for i, x in enumerate(impl(backend)(q, k, cos, sin)))}[op]
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.dispatch"):
        got = torch.autograd.grad(run("triton").sum(), (q, k) if op == "rope" else (q, k, v))
        assert op in fallback.failed  # from now on the forward runs on the fallback too
        again = torch.autograd.grad(run("triton").sum(), (q, k) if op == "rope" else (q, k, v))
    fallback_name = registry.portable(op).name
    want = torch.autograd.grad(run(fallback_name).sum(), (q, k) if op == "rope" else (q, k, v))
    for a, b, c in zip(got, again, want, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and op in warnings[0].getMessage() and "CompilationError" in warnings[0].getMessage()
