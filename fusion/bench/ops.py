"""Small ops: rmsnorm, rope, swiglu and fused linear cross-entropy vs eager and torch.compile.

Each variant runs forward + backward; the table gives median ms and peak extra memory. Outputs are
checked against eager before timing. Defaults are an 8B-class layer at 16k tokens with a 65,536 vocab;
``--small`` shrinks everything for a quick run. Example: ``fusion bench ops --ops cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from fusion.bench.common import DTYPES, RunOptions, env_info, peak_memory, print_table, ready, timeit
from fusion.vocab import IGNORE_INDEX


@dataclass(frozen=True)
class Shapes:
    tokens: int = 16384
    hidden: int = 4096
    ffn: int = 14336
    heads: int = 32
    head_dim: int = 128
    vocab: int = 65536


SMALL = Shapes(tokens=1024, hidden=512, ffn=1536, heads=8, head_dim=64, vocab=8192)
OPS = ("rms_norm", "rope", "swiglu", "cross_entropy")


@dataclass(frozen=True)
class Options(RunOptions):
    """Small-op options; a shape left at 0 takes the default (or ``--small``) value."""

    tol: float = field(default=5e-2, metadata={"help": "max error vs eager, relative to its scale"})
    warmup: int = field(default=3, metadata={"help": "untimed calls before timing"})
    iters: int = field(default=10, metadata={"help": "timed calls (the median is reported)"})
    ops: tuple[str, ...] = field(default=OPS, metadata={"help": "ops to run", "choices": OPS})
    small: bool = field(default=False, metadata={"help": f"use {SMALL}"})
    tokens: int = field(default=0, metadata={"help": f"tokens (default {Shapes.tokens})"})
    hidden: int = field(default=0, metadata={"help": f"model width (default {Shapes.hidden})"})
    ffn: int = field(default=0, metadata={"help": f"MLP width (default {Shapes.ffn})"})
    heads: int = field(default=0, metadata={"help": f"heads (default {Shapes.heads})"})
    head_dim: int = field(default=0, metadata={"help": f"head dim (default {Shapes.head_dim})"})
    vocab: int = field(default=0, metadata={"help": f"vocabulary (default {Shapes.vocab})"})
    compile: bool = field(default=True, metadata={"help": "add the torch.compile(eager) variant"})

    def shapes(self) -> Shapes:
        base = SMALL if self.small else Shapes()
        return Shapes(**{f.name: getattr(self, f.name) or getattr(base, f.name) for f in fields(Shapes)})


def cases(s: Shapes, device, dtype) -> dict[str, tuple[Callable[[], tuple], dict[str, Callable]]]:
    """op -> (make inputs, {variant: fn(*inputs) -> tensor or tuple of tensors})."""
    from fusion.kernels import cross_entropy, dispatch, rmsnorm, rope, swiglu

    def leaf(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, device=device)).to(dt).requires_grad_()

    def rope_inputs():
        B, T = max(1, s.tokens // 4096), min(s.tokens, 4096)
        pos = torch.arange(T, device=device).float()
        freqs = pos[:, None] / 10000 ** (torch.arange(0, s.head_dim, 2, device=device) / s.head_dim)
        emb = torch.cat([freqs, freqs], -1)
        return (leaf(B, s.heads, T, s.head_dim), leaf(B, s.heads // 4, T, s.head_dim),
                emb.cos().to(dtype), emb.sin().to(dtype))

    def ce_inputs():
        targets = torch.randint(0, s.vocab, (s.tokens,), device=device)
        return leaf(s.tokens, s.hidden), leaf(s.vocab, s.hidden, scale=0.02), targets

    ce_eager = lambda h, w, t: dispatch._linear_cross_entropy_eager(h, w, t, ignore_index=IGNORE_INDEX)
    return {
        "rms_norm": (lambda: (leaf(s.tokens, s.hidden), leaf(s.hidden)),
                     {"eager": lambda x, w: dispatch._rms_norm_eager(x, w, 1e-5),
                      "ours": lambda x, w: rmsnorm.rms_norm(x, w, 1e-5)}),
        "rope": (rope_inputs, {"eager": dispatch._rope_eager, "ours": rope.rope}),
        "swiglu": (lambda: (leaf(s.tokens, s.ffn), leaf(s.tokens, s.ffn)),
                   {"eager": dispatch._swiglu_eager, "ours": swiglu.swiglu}),
        "cross_entropy": (ce_inputs,
                          {"eager": ce_eager,
                           "chunked": lambda h, w, t: cross_entropy.linear_cross_entropy(h, w, t),
                           "ours": lambda h, w, t: cross_entropy.linear_cross_entropy(h, w, t, use_triton=True)}),
    }


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def measure(fn, inputs, expected, args, device) -> dict:
    """Check ``fn``'s outputs against eager, then time forward + backward and take its peak memory."""
    try:
        got = _outputs(fn(*inputs))
        err = max((g.float() - e).abs().max().item() for g, e in zip(got, expected, strict=True))
        if err > args.tol * max(1.0, max(e.abs().max().item() for e in expected)):
            return {"status": f"wrong: max err {err:.3g}"}
        grads = [torch.randn_like(o) for o in got]
        fwd_bwd = lambda: torch.autograd.backward(list(_outputs(fn(*inputs))), grads)
        ms = timeit(fwd_bwd, device, args.warmup, args.iters)
        peak = peak_memory(fwd_bwd, device)
    except Exception as e:  # e.g. the eager CE running out of memory at full size
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:60]}"}
    return {"ms": ms, "peak_mib": None if peak is None else peak / 2**20, "status": f"ok (err {err:.2g})"}


def run(opts: Options) -> list[dict]:
    """One row per (op, variant): fwd+bwd ms and peak extra MiB, after a check against eager."""
    if not ready("ops", opts.device):
        return []
    shapes = opts.shapes()
    device, dtype = torch.device(opts.device), DTYPES[opts.dtype]
    info = env_info(device)
    print(info, shapes)
    rows = []
    for op, (make, variants) in cases(shapes, device, dtype).items():
        if op not in opts.ops:
            continue
        if opts.compile:
            variants = {**variants, "compiled": torch.compile(variants["eager"])}
        torch.manual_seed(0)
        inputs = make()
        expected = [o.float() for o in _outputs(variants["eager"](*inputs))]
        for name, fn in variants.items():
            row = {"op": op, "variant": name, "ms": None, "peak_mib": None,
                   **measure(fn, inputs, expected, opts, device)}
            rows.append({**row, **{k: str(v) for k, v in vars(shapes).items()}, **info})
            print_table([{k: row[k] for k in ("op", "variant", "ms", "peak_mib", "status")}])
    return rows
