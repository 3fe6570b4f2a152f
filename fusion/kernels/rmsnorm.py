"""RMSNorm forward and backward (including the weight gradient) in Triton.

y = cast(x * rstd, x.dtype) * weight with rstd = 1 / sqrt(mean(x^2) + eps), computed in fp32; the output
dtype is ``promote(x.dtype, weight.dtype)`` like the eager op. The backward gives each program a run of rows
and one fp32 partial of dweight, summed on the host (no atomics, deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fusion.kernels import fallback
from fusion.kernels.triton_utils import Launch, check_launch, interpreting, pow2


@triton.jit
def _fwd_kernel(X, W, Y, RSTD, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(X + row * N + cols, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / N + eps)
    x_hat = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # the eager op rounds here
    tl.store(Y + row * N + cols, (x_hat * w).to(Y.dtype.element_ty), mask=ok)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd_kernel(DY, X, W, RSTD, DX, DW_PART, R, N, rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], tl.float32)
    first = pid * rows_per_program
    for row in range(first, tl.minimum(first + rows_per_program, R)):
        base = tl.cast(row, tl.int64) * N
        x = tl.load(X + base + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        x_hat = x * rstd
        dx_hat = dy * w
        dx = rstd * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, 0) / N))
        tl.store(DX + base + cols, dx.to(DX.dtype.element_ty), mask=ok)
        dw += dy * x_hat.to(X.dtype.element_ty).to(tl.float32)
    tl.store(DW_PART + pid * N + cols, dw, mask=ok)


def _device_sms(device: torch.device) -> int | None:
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return None


def _warps(block: int) -> int:
    """One warp per 1024 columns (4 to 16): the backward keeps five row-long fp32 vectors in registers, and
    at 8192 columns with 4 warps they spill (static report, sm_80 and sm_90)."""
    return min(16, max(4, block // 1024))


def forward_launch(x2: torch.Tensor, w: torch.Tensor, eps: float):
    """The forward ``Launch`` over rows of ``x2 [R, N]`` and the (y, rstd) it fills."""
    R, N = x2.shape
    y = torch.empty(x2.shape, device=x2.device, dtype=torch.promote_types(x2.dtype, w.dtype))
    rstd = torch.empty(R, device=x2.device, dtype=torch.float32)
    args = dict(X=x2, W=w, Y=y, RSTD=rstd, N=N, eps=eps, BLOCK=pow2(N), num_warps=_warps(pow2(N)))
    return Launch(_fwd_kernel, (R,), args), y, rstd


def backward_launch(dy, x2, w, rstd, sms: int | None = None):
    """The backward ``Launch`` (4 programs per SM, each a run of rows) and the (dx, dw partials) it fills."""
    R, N = x2.shape
    programs = min(R, 4 * sms if sms else 4)
    dx = torch.empty_like(x2)
    dw_part = torch.empty(programs, N, device=x2.device, dtype=torch.float32)
    args = dict(DY=dy, X=x2, W=w, RSTD=rstd, DX=dx, DW_PART=dw_part, R=R, N=N,
                rows_per_program=triton.cdiv(R, programs), BLOCK=pow2(N), num_warps=_warps(pow2(N)))
    return Launch(_bwd_kernel, (programs,), args), dx, dw_part


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        if x.shape[-1:] != weight.shape:
            raise ValueError(f"weight must be [{x.shape[-1]}], got {tuple(weight.shape)}")
        check_launch(x, weight)
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        w = weight.contiguous()
        launch, y, rstd = forward_launch(x2, w, eps)
        launch.run()
        ctx.save_for_backward(x2, w, rstd)
        ctx.shape, ctx.eps = x.shape, eps
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w, rstd = ctx.saved_tensors
        dy = dy.reshape(x2.shape).contiguous()

        def run():
            launch, dx, dw_part = backward_launch(dy, x2, w, rstd, _device_sms(x2.device))
            launch.run()
            return dx, dw_part.sum(0).to(w.dtype)

        dx, dw = fallback.backward("rms_norm", run, lambda: (x2, w), ctx.needs_input_grad[:2], (dy,), ctx.eps)
        return None if dx is None else dx.view(ctx.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim with the ``dispatch.rms_norm`` contract."""
    return RMSNormFunction.apply(x, weight, eps)
