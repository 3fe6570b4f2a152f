"""The Triton half of the fused linear cross-entropy: per-row logsumexp / ce and the in-place logits gradient.

One program per row runs an online logsumexp over BLOCK_V-wide vocabulary blocks. Kept apart from
``cross_entropy.py`` so that the pure-torch ``chunked`` backend never imports triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusion.kernels.triton_utils import Launch

BLOCK_V = 1024


@triton.jit
def ce_lse_kernel(LOGITS, stride, TARGETS, CE, LSE, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    valid = target != ignore_index
    picked = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(CE + row, tl.where(valid, lse - picked, 0.0))
    tl.store(LSE + row, lse)


@triton.jit
def grad_kernel(LOGITS, stride, TARGETS, LSE, G_CE, G_LSE, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    g_ce = tl.load(G_CE + row)
    g_sum = g_ce + tl.load(G_LSE + row)
    keep = (target != ignore_index).to(tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
        grad = g_sum * tl.exp(x - lse) - tl.where(cols == target, g_ce, 0.0)
        tl.store(base + cols, (grad * keep).to(LOGITS.dtype.element_ty), mask=cols < V)


def ce_lse_launch(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    """The ``Launch`` filling per-row (ce, lse) fp32 [n] of ``logits [n, V]``, and those two tensors."""
    n, V = logits.shape
    ce = torch.empty(n, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(ce)
    args = dict(LOGITS=logits, stride=logits.stride(0), TARGETS=targets, CE=ce, LSE=lse, V=V,
                ignore_index=ignore_index, BLOCK_V=BLOCK_V)
    return Launch(ce_lse_kernel, (n,), args), ce, lse


def grad_launch(logits, targets, lse, g_ce, g_lse, ignore_index: int) -> Launch:
    """The ``Launch`` that overwrites ``logits`` in place with d/dlogits."""
    n, V = logits.shape
    args = dict(LOGITS=logits, stride=logits.stride(0), TARGETS=targets, LSE=lse, G_CE=g_ce.contiguous(),
                G_LSE=g_lse.contiguous(), V=V, ignore_index=ignore_index, BLOCK_V=BLOCK_V)
    return Launch(grad_kernel, (n,), args)


def ce_lse(logits, targets, ignore_index):
    launch, ce, lse = ce_lse_launch(logits, targets, ignore_index)
    launch.run()
    return ce, lse


def grad(logits, targets, lse, g_ce, g_lse, ignore_index):
    grad_launch(logits, targets, lse, g_ce, g_lse, ignore_index).run()
    return logits  # overwritten in place with d/dlogits
