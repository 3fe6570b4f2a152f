"""Decode attention bandwidth: ours (split-KV Triton) vs SDPA flash / cuDNN (and flash-attn if installed).

One new token per row against a full cache of T keys; decoding is bound by reading K and V, so the
figure is achieved TB/s = (K + V bytes) / time, printed next to this run's device-copy TB/s.
Example: ``fusion bench decode --batches 1 8 32 --seqlens 1024 4096 16384 32768``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusion.bench.common import DTYPES, RunOptions, copy_roof, env_info, plot, print_table, ready, timeit


@dataclass(frozen=True)
class Options(RunOptions):
    """Decode attention bandwidth options."""

    iters: int = field(default=50, metadata={"help": "timed calls (the median is reported)"})
    batches: tuple[int, ...] = field(default=(1, 8, 32), metadata={"help": "batch sizes B"})
    seqlens: tuple[int, ...] = field(default=(1024, 2048, 4096, 8192, 16384, 32768),
                                     metadata={"help": "cache lengths T"})
    heads: int = field(default=32, metadata={"help": "query heads"})
    head_dim: int = field(default=128, metadata={"help": "head dim D"})
    gqa: tuple[int, ...] = field(default=(1, 4), metadata={"help": "q heads per kv head"})
    backends: tuple[str, ...] = field(default=(), metadata={"help": "subset of backends (default: all available)"})
    plot: bool = field(default=True, metadata={"help": "also write decode.png"})


def backends() -> dict[str, Callable]:
    """name -> fn(q [B,Hq,1,D], k/v [B,Hkv,T,D], seqlens [B]); every row's cache is full, so SDPA needs no mask."""
    from fusion.kernels.decode import decode_attention

    def sdpa(kind):
        def run(q, k, v, seqlens):
            with sdpa_kernel(kind):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
        return run

    out = {"ours": lambda q, k, v, seqlens: decode_attention(q, k, v, seqlens),
           "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    try:
        from flash_attn import flash_attn_with_kvcache
        out["flash_attn"] = lambda q, k, v, seqlens: flash_attn_with_kvcache(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cache_seqlens=seqlens, causal=True
        ).transpose(1, 2)
    except ImportError:
        pass
    return out


def measure(fn, inputs, ref, nbytes: int, args, device) -> dict:
    """Check ``fn`` against the reference, then time it; failures become a status, not a crash."""
    try:
        with torch.no_grad():
            err = (fn(*inputs).float() - ref).abs().max().item()
            if err > args.tol:
                return {"status": f"wrong: max err {err:.3g}"}
            ms = timeit(lambda: fn(*inputs), device, args.warmup, args.iters)
    except Exception as e:  # unsupported backend/shape: report and go on
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:60]}"}
    return {"ms": ms, "tb_per_s": nbytes / (ms * 1e-3) / 1e12, "status": f"ok (err {err:.2g})"}


def _inputs(opts: Options, gqa: int, B: int, T: int, device, dtype):
    Hkv, D = opts.heads // gqa, opts.head_dim
    torch.manual_seed(0)
    q = torch.randn(B, opts.heads, 1, D, device=device, dtype=dtype)
    k, v = (torch.randn(B, Hkv, T, D, device=device, dtype=dtype) for _ in range(2))
    seqlens = torch.full((B,), T, device=device, dtype=torch.int32)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=gqa > 1)
    return (q, k, v, seqlens), ref, 2 * k.numel() * k.element_size()


def run(opts: Options) -> list[dict]:
    """One row per (backend, gqa, B, T): ms and achieved TB/s next to this run's device copy."""
    if not ready("decode", opts.device):
        return []
    device, dtype = torch.device(opts.device), DTYPES[opts.dtype]
    info = env_info(device)
    roof = copy_roof(device) if device.type == "cuda" else None
    print(info, f"device copy: {roof and round(roof, 2)} TB/s")
    table = {k: v for k, v in backends().items() if not opts.backends or k in opts.backends}
    rows = []
    for gqa in opts.gqa:
        for B in opts.batches:
            for T in opts.seqlens:
                inputs, ref, nbytes = _inputs(opts, gqa, B, T, device, dtype)
                for name, fn in table.items():
                    row = {"backend": name, "gqa": gqa, "B": B, "T": T, "ms": None, "tb_per_s": None,
                           "copy_tb_per_s": roof, **measure(fn, inputs, ref, nbytes, opts, device)}
                    rows.append({**row, **info})
                    print_table([{k: row[k] for k in ("backend", "gqa", "B", "T", "ms", "tb_per_s", "status")}])
    if opts.plot:
        plot(rows, "T", "tb_per_s", ["backend"], ["gqa", "B"], Path(opts.out) / "decode.png", roof=roof,
             roof_label="device copy")
    return rows
