"""SwiGLU, silu(gate) * up, forward and backward in Triton (the backward recomputes the sigmoid)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusion.kernels import fallback
from fusion.kernels.triton_utils import Launch, check_launch

BLOCK = 1024


@triton.jit
def _fwd_kernel(G, U, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + offs, (g * tl.sigmoid(g) * u).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_kernel(DY, G, U, DG, DU, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    dy = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    tl.store(DG + offs, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=ok)
    tl.store(DU + offs, (dy * g * sig).to(DU.dtype.element_ty), mask=ok)


def forward_launch(gate: torch.Tensor, up: torch.Tensor):
    """The forward ``Launch`` over contiguous ``gate``/``up`` and the output it fills."""
    y = torch.empty_like(gate)
    n = gate.numel()
    return Launch(_fwd_kernel, (triton.cdiv(n, BLOCK),), dict(G=gate, U=up, Y=y, n=n, BLOCK=BLOCK)), y


def backward_launch(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    """The backward ``Launch`` and the (dgate, dup) it fills."""
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    args = dict(DY=dy, G=gate, U=up, DG=dg, DU=du, n=n, BLOCK=BLOCK)
    return Launch(_bwd_kernel, (triton.cdiv(n, BLOCK),), args), dg, du


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        if gate.shape != up.shape or gate.dtype != up.dtype:
            raise ValueError(f"gate and up must match, got {tuple(gate.shape)} {gate.dtype} and "
                             f"{tuple(up.shape)} {up.dtype}")
        check_launch(gate, up)
        gate, up = gate.contiguous(), up.contiguous()
        launch, y = forward_launch(gate, up)
        launch.run()
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors

        def run():
            launch, dg, du = backward_launch(dy.contiguous(), gate, up)
            launch.run()
            return dg, du

        return tuple(fallback.backward("swiglu", run, lambda: (gate, up), ctx.needs_input_grad, (dy,)))


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with the ``dispatch.swiglu`` contract."""
    return SwiGLUFunction.apply(gate, up)
