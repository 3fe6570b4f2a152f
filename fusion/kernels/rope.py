"""Rotary embeddings, rotate-half convention (HF Llama / Chameleon), forward and backward in Triton.

y = x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1). Its transpose gives the backward:
dx1 = dy1 * cos1 + dy2 * sin2, dx2 = dy2 * cos2 - dy1 * sin1 (exact for any cos/sin, not only for
cos/sin built as cat(f, f)). One program per (batch, position) rotates every head of q or k at once,
loading cos/sin once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusion.kernels import fallback
from fusion.kernels.triton_utils import Launch, check_launch, pow2


@triton.jit
def _rope_kernel(X, Y, COS, SIN, sxb, sxh, sxt, scb, sct, H, T, HALF,
                 BACKWARD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    pid = tl.program_id(0)
    b, t = pid // T, pid % T
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)
    ok = (heads[:, None] < H) & (cols[None, :] < HALF)
    cs = COS + b.to(tl.int64) * scb + t * sct + cols
    sn = SIN + b.to(tl.int64) * scb + t * sct + cols
    c1 = tl.load(cs, mask=cols < HALF, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cs + HALF, mask=cols < HALF, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sn, mask=cols < HALF, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sn + HALF, mask=cols < HALF, other=0.0).to(tl.float32)[None, :]
    src = X + b.to(tl.int64) * sxb + t * sxt + heads[:, None] * sxh + cols[None, :]
    x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
    if BACKWARD:
        y1, y2 = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    else:
        y1, y2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    dst = Y + ((b * H + heads[:, None]).to(tl.int64) * T + t) * (2 * HALF) + cols[None, :]
    tl.store(dst, y1.to(Y.dtype.element_ty), mask=ok)
    tl.store(dst + HALF, y2.to(Y.dtype.element_ty), mask=ok)


def _table(x: torch.Tensor, B: int, T: int, D: int, name: str) -> tuple[torch.Tensor, int, int]:
    """cos/sin as [T, D], [B, T, D] or [B, 1, T, D] -> (tensor, batch stride, position stride)."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2 and tuple(x.shape) == (T, D):
        x = x.contiguous()
        return x, 0, x.stride(0)
    if x.dim() == 3 and x.shape[0] in (1, B) and tuple(x.shape[1:]) == (T, D):
        x = x.contiguous()
        return x, (x.stride(0) if x.shape[0] == B else 0), x.stride(1)
    raise ValueError(f"{name} must be [T, D], [B, T, D] or [B, 1, T, D] with B={B}, T={T}, D={D}; "
                     f"got {tuple(x.shape)}")


def rotate_launch(x: torch.Tensor, cos, sin, backward: bool):
    """The ``Launch`` rotating ``x [B, H, T, D]`` (or, backward, its gradient) and the output it fills."""
    B, H, T, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(B, H, T, D, device=x.device, dtype=x.dtype)
    (cos, scb, sct), (sin, _, _) = _table(cos, B, T, D, "cos"), _table(sin, B, T, D, "sin")
    args = dict(X=x, Y=y, COS=cos, SIN=sin, sxb=x.stride(0), sxh=x.stride(1), sxt=x.stride(2), scb=scb, sct=sct,
                H=H, T=T, HALF=D // 2, BACKWARD=backward, BLOCK_H=pow2(H, 1), BLOCK_HALF=pow2(D // 2, 1))
    return Launch(_rope_kernel, (B * T,), args), y


def _rotate(x: torch.Tensor, cos, sin, backward: bool) -> torch.Tensor:
    launch, y = rotate_launch(x, cos, sin, backward)
    launch.run()
    return y


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
            raise ValueError(f"q, k must be [B, H, T, D] sharing B, T, D; got {tuple(q.shape)}, {tuple(k.shape)}")
        if q.shape[-1] % 2:
            raise ValueError(f"head dim must be even for rotate-half RoPE, got {q.shape[-1]}")
        check_launch(q, k, cos, sin)
        ctx.save_for_backward(cos, sin)
        ctx.shapes = (q.shape, k.shape)
        return _rotate(q, cos, sin, False), _rotate(k, cos, sin, False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        run = lambda: [None if g is None else _rotate(g, cos, sin, True) for g in (dq, dk)]  # noqa: E731
        # rope is linear: its gradient does not depend on q and k, so zeros of their shapes stand in for them
        dtype = (dq if dq is not None else dk).dtype
        zeros = lambda: [torch.zeros(s, device=cos.device, dtype=dtype) for s in ctx.shapes]  # noqa: E731
        grads = fallback.backward("rope", run, zeros, ctx.needs_input_grad[:2], (dq, dk), cos, sin)
        return *grads, None, None


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [B, Hq, T, D] and k [B, Hk, T, D] by cos/sin ([T, D], [B, T, D] or [B, 1, T, D])."""
    return RoPEFunction.apply(q, k, cos, sin)
