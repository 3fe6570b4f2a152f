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

from fusion.kernels import attention, dispatch, fallback

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
