"""Fused linear + cross-entropy that never materialises the [N, V] logits.

Tokens are processed in chunks: logits_c = hidden_c @ weight.T, then per-token ce and lse. The backward
recomputes each chunk's logits (the upstream grads of ce AND lse are unknown in the forward, and dweight
mixes them per row, so it cannot be precomputed) and turns them in place into
d/dlogits = (g_ce + g_lse) * softmax - g_ce * onehot(target), zero on ignore_index rows.

Chunk size: full fp32 logits for 16k tokens x 65,536 vocab are 4 GiB (8 GiB with their grad). With
n_chunks = ceil(V / d) the chunk holds C = ceil(N / n_chunks) tokens, so its C x V logits have about N x d
elements: no more than ``hidden`` itself. At N=16k, d=4096, V=65,536 that is 16 chunks of 1,024 tokens
(128 MiB of bf16 logits + a 256 MiB fp32 working copy), and 1,024-row matmuls still run near peak. A small
model gets chunks of at least ``MIN_CHUNK`` tokens: at d=512, V=65,536 their logits are 256 MiB in fp32.

Two implementations of the per-chunk softmax part share the chunk loop: pure torch (the ``chunked``
backend, runs anywhere) and Triton kernels (``cross_entropy_triton.py``: one program per row).
"""

from __future__ import annotations

import torch

from fusion.kernels import fallback
from fusion.vocab import IGNORE_INDEX

# Fewer rows and the chunk's matmuls fall far from peak, a slower loss for memory a small model does not need to
# save (figures: benchmarks/RESULTS.md, "Figures moved out of code comments").
MIN_CHUNK = 1024


def chunk_size(n_tokens: int, vocab: int, dim: int) -> int:
    """Tokens per chunk so a chunk's logits hold about n_tokens * dim elements (see module docstring), but at
    least ``MIN_CHUNK`` (all of them when fewer)."""
    n_chunks = -(-vocab // dim)
    return max(1, min(n_tokens, MIN_CHUNK), -(-n_tokens // n_chunks))


# --------------------------------------------------------------- torch part


def _ce_lse_torch(logits, targets, ignore_index):
    lf = logits.float()
    lse = torch.logsumexp(lf, -1)
    valid = targets != ignore_index
    picked = lf.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    return torch.where(valid, lse - picked, 0.0), lse


def _grad_torch(logits, targets, lse, g_ce, g_lse, ignore_index):
    valid = targets != ignore_index
    grad = logits.float().sub_(lse[:, None]).exp_().mul_((g_ce + g_lse)[:, None])
    grad.scatter_add_(1, torch.where(valid, targets, 0)[:, None], -g_ce[:, None])
    return grad.mul_(valid[:, None]).to(logits.dtype)


def _impl(use_triton: bool):
    if not use_triton:
        return _ce_lse_torch, _grad_torch
    from fusion.kernels import cross_entropy_triton  # imported on first use: ``chunked`` needs no triton
    return cross_entropy_triton.ce_lse, cross_entropy_triton.grad


# ------------------------------------------------------------- the function


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk: int, use_triton: bool):
        ce_lse, _ = _impl(use_triton)
        N = hidden.shape[0]
        ce = torch.empty(N, device=hidden.device, dtype=torch.float32)
        lse = torch.empty_like(ce)
        for s in range(0, N, chunk):
            logits = hidden[s:s + chunk] @ weight.t()
            ce[s:s + chunk], lse[s:s + chunk] = ce_lse(logits, targets[s:s + chunk], ignore_index)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index, ctx.chunk, ctx.use_triton = ignore_index, chunk, use_triton
        return ce, lse * (targets != ignore_index)

    @staticmethod
    def backward(ctx, g_ce, g_lse):
        hidden, weight, targets, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        run = lambda: _chunked_backward(ctx, hidden, weight, targets, lse, g_ce, g_lse)  # noqa: E731
        grads = (fallback.backward("linear_cross_entropy", run, lambda: (hidden, weight), needs, (g_ce, g_lse), targets,
                                   ignore_index=ctx.ignore_index) if ctx.use_triton else run())
        return *grads, None, None, None, None


def _chunked_backward(ctx, hidden, weight, targets, lse, g_ce, g_lse) -> tuple:
    """(d hidden, d weight) chunk by chunk, each chunk's logits recomputed and turned into d/dlogits."""
    _, grad_fn = _impl(ctx.use_triton)
    zeros = torch.zeros_like(lse)
    g_ce = zeros if g_ce is None else g_ce.float()
    g_lse = zeros if g_lse is None else g_lse.float()
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dh = torch.empty_like(hidden) if need_h else None
    dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
    for s in range(0, hidden.shape[0], ctx.chunk):
        e = s + ctx.chunk
        h = hidden[s:e]
        grad = grad_fn(h @ weight.t(), targets[s:e], lse[s:e], g_ce[s:e], g_lse[s:e], ctx.ignore_index)
        if need_h:
            dh[s:e] = grad @ weight
        if need_w:
            dw += (grad.t() @ h).float()  # one rounding per chunk, fp32 sum across chunks
    return dh, None if dw is None else dw.to(weight.dtype)


def linear_cross_entropy(hidden, weight, targets, *, ignore_index: int = IGNORE_INDEX, chunk: int | None = None,
                         use_triton: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (ce [N], lse [N]) of ``hidden @ weight.T`` in fp32; ignored rows give 0 for both."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [N, d] and weight [V, d]; got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if tuple(targets.shape) != (hidden.shape[0],) or targets.dtype != torch.long:
        raise ValueError(f"targets must be a long tensor [{hidden.shape[0]}], "
                         f"got {targets.dtype} {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    if use_triton:
        from fusion.kernels.triton_utils import check_launch
        check_launch(hidden, weight, targets)
    chunk = chunk or chunk_size(hidden.shape[0], weight.shape[0], weight.shape[1])
    return LinearCrossEntropyFunction.apply(hidden, weight, targets.contiguous(), ignore_index, chunk, use_triton)
