"""Attention throughput: ours (Triton) vs SDPA flash / cuDNN / efficient, FlexAttention, flash-attn.

TFLOP/s (``common.attention_flops``) for fwd and fwd+bwd at a fixed token budget per batch
(B = tokens // T), H = model_dim // D. Each backend is checked against SDPA's math backend before it is
timed; a backend that errors or disagrees is reported, not timed. Example:
``fusion bench attention --head-dims 64 128 --seqlens 512 1024 2048 4096 8192 16384``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusion.bench.common import (
    DTYPES,
    RunOptions,
    attention_flops,
    env_info,
    matmul_roof,
    plot,
    print_table,
    ready,
    timeit,
)


@dataclass(frozen=True)
class Options(RunOptions):
    """Attention throughput options."""

    head_dims: tuple[int, ...] = field(default=(64, 128), metadata={"help": "head dims D"})
    seqlens: tuple[int, ...] = field(default=(512, 1024, 2048, 4096, 8192, 16384), metadata={"help": "lengths T"})
    tokens: int = field(default=16384, metadata={"help": "B * T per measurement"})
    model_dim: int = field(default=2048, metadata={"help": "H = model_dim // D"})
    causal: str = field(default="both", metadata={"help": "causal masks to run", "choices": ["both", "yes", "no"]})
    backends: tuple[str, ...] = field(default=(), metadata={"help": "subset of backends (default: all available)"})
    plot: bool = field(default=True, metadata={"help": "also write attention_{fwd,fwd_bwd}.png"})


def backends() -> dict[str, Callable]:
    """name -> fn(q, k, v, causal) over [B, H, T, D] tensors."""
    from fusion.kernels.attention import flash_attention

    def sdpa(kind):
        def run(q, k, v, causal):
            with sdpa_kernel(kind):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return run

    out = {"ours": lambda q, k, v, causal: flash_attention(q, k, v, causal=causal),
           "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
           "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
           "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
        masks: dict = {}

        def run_flex(q, k, v, causal):
            if not causal:
                return flex(q, k, v)
            T = q.shape[2]
            if T not in masks:
                masks[T] = create_block_mask(lambda b, h, i, j: i >= j, None, None, T, T, device=q.device)
            return flex(q, k, v, block_mask=masks[T])
        out["flex"] = run_flex
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func
        out["flash_attn"] = lambda q, k, v, causal: flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal).transpose(1, 2)
    except ImportError:
        pass
    return out


def measure(name, fn, q, k, v, causal, reference, args: Options, device) -> dict:
    row = {}
    try:
        out = fn(q, k, v, causal)
        err = (out.float() - reference).abs().max().item()
    except Exception as e:  # a backend unsupported on this device/shape is reported, not fatal
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:60]}"}
    if err > args.tol:
        return {"status": f"wrong: max err {err:.3g}"}
    B, H, T, D = q.shape
    grad = torch.randn_like(q)

    def fwd_bwd():
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        fn(qq, kk, vv, causal).backward(grad)

    for mode, call in (("fwd", lambda: fn(q, k, v, causal)), ("fwd_bwd", fwd_bwd)):
        try:
            ms = timeit(call, device, args.warmup, args.iters)
            row[f"{mode}_ms"] = ms
            row[f"{mode}_tflops"] = attention_flops(B, H, T, D, causal, mode) / (ms * 1e-3) / 1e12
        except Exception as e:
            row[f"{mode}_ms"] = f"error: {type(e).__name__}"
    row["status"] = f"ok (err {err:.2g})"
    return row


def _shapes(opts: Options):
    for D in opts.head_dims:
        for T in opts.seqlens:
            for causal in {"both": (True, False), "yes": (True,), "no": (False,)}[opts.causal]:
                yield D, T, causal, max(1, opts.tokens // T), max(1, opts.model_dim // D)


def run(opts: Options) -> list[dict]:
    """One row per (backend, D, T, causal): fwd and fwd+bwd ms and TFLOP/s, or why it was not timed."""
    if not ready("attention", opts.device):
        return []
    device, dtype = torch.device(opts.device), DTYPES[opts.dtype]
    info = env_info(device)
    roof = matmul_roof(device) if device.type == "cuda" else None
    print(info, f"bf16 matmul roof: {roof and round(roof)} TFLOP/s")
    table = {k: v for k, v in backends().items() if not opts.backends or k in opts.backends}
    rows = []
    for D, T, causal, B, H in _shapes(opts):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
        with sdpa_kernel(SDPBackend.MATH):
            reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        for name, fn in table.items():
            rows.append({"backend": name, "D": D, "T": T, "B": B, "H": H, "causal": causal,
                         **measure(name, fn, q, k, v, causal, reference, opts, device)})
            print_table(rows[-1:])
    rows = [{"fwd_ms": None, "fwd_tflops": None, "fwd_bwd_ms": None, "fwd_bwd_tflops": None, **r, **info}
            for r in rows]
    if opts.plot:
        for mode in ("fwd", "fwd_bwd"):
            plot(rows, "T", f"{mode}_tflops", ["backend"], ["D", "causal"], Path(opts.out) / f"attention_{mode}.png",
                 roof=roof, roof_label="bf16 matmul")
    return rows
