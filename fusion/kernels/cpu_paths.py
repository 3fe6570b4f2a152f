"""The CPU fast paths the tuner (``cpu_tune``) chooses between, and where they are chosen.

- linear: a compiled decode step's product of few rows, as a multiply-and-sum reduction (streams the weights
  once) or through the library gemm, per (dtype, row class, K, N);
- decode attention: SDPA or plain matmuls and a softmax, per shape class, eager and compiled apart.

A decode session calls ``prepare_decode`` before it traces anything; the model's ops then only look the
answers up (``linear_form``, ``decode_form``), which is safe while Dynamo traces.
"""

from __future__ import annotations

import torch

from fusion.kernels import cpu_tune
from fusion.kernels.registry import register

# ---------------------------------------------------------------- small-row linear (compiled CPU graphs)

GEMV_MAX_ROWS = 8  # today's rule: a compiled CPU graph multiplies up to this many rows as a streaming reduction
ROW_CLASSES = (1, 2, 4, 8, 16, 32, 64)  # row counts are tuned rounded up to these; more rows always take gemm
# Each timed form compiles once per shape class it meets; Dynamo's default limit (8 per function) is far below that.
TIMED_SHAPES = 1024
_linear: dict[tuple[torch.dtype, int, int, int], str] = {}  # (dtype, row class, K, N) -> form, this process


def row_class(rows: int) -> int | None:
    """The smallest ``ROW_CLASSES`` entry holding ``rows``; None beyond the last (gemm, never tuned)."""
    return next((c for c in ROW_CLASSES if rows <= c), None)


def linear_form(rows: int, K: int, N: int, dtype: torch.dtype) -> str:
    """"reduce" or "gemm" for a compiled CPU product of ``rows`` x K by K -> N: the tuned choice, else today's
    rule. A plain lookup: it runs while Dynamo traces."""
    c = row_class(rows)
    if c is None:
        return "gemm"
    return _linear.get((dtype, c, K, N)) or ("reduce" if rows <= GEMV_MAX_ROWS else "gemm")


def reduce_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` as a multiply-and-sum: compiled, one pass over the weights, nothing materialised."""
    return (x.unsqueeze(-2) * weight).sum(-1)


def _copies(t: torch.Tensor, working_set: int) -> list[torch.Tensor]:
    """Copies of ``t`` that together fill ``working_set`` bytes (at most 256): cycled through, each call finds
    its weight as cold as in a decode step, which reads the whole model between two uses of one matrix."""
    return [t.clone() for _ in range(max(1, min(256, -(-working_set // (t.numel() * t.element_size())))))]


def _measure_linear(rows: int, K: int, N: int, dtype: torch.dtype, working_set: int) -> dict[str, float]:
    """Seconds per call of both forms, each compiled alone, with weights as cold as in a step of the model."""
    x = torch.randn(rows, K).to(dtype)
    weights = _copies(torch.randn(N, K).to(dtype) / K ** 0.5, working_set)
    with torch._dynamo.config.patch(recompile_limit=TIMED_SHAPES):
        forms = {"reduce": torch.compile(reduce_linear, dynamic=False),
                 "gemm": torch.compile(torch.nn.functional.linear, dynamic=False)}
        turn = {name: iter(range(1 << 30)) for name in forms}
        return cpu_tune.time_calls({name: (lambda f=f, name=name: f(x, weights[next(turn[name]) % len(weights)]))
                           for name, f in forms.items()})


def tune_linear(rows: int, K: int, N: int, dtype: torch.dtype, working_set: int) -> str:
    """Make (and remember) the choice for ``rows`` x K -> N inside a model of ``working_set`` weight bytes; used
    by every later trace of that shape class."""
    c = row_class(rows)
    if c is None:
        return "gemm"
    default = "reduce" if c <= GEMV_MAX_ROWS else "gemm"
    choice = cpu_tune.choose("linear", dtype, (c, K, N), default, ("reduce", "gemm"),
                    lambda: _measure_linear(c, K, N, dtype, working_set))
    _linear[(dtype, c, K, N)] = choice
    return choice


# ---------------------------------------------------------------- decode attention (CPU)

DECODE_FORMS = ("sdpa", "math")  # dispatch's CPU decode-attention backends; "sdpa" is today's rule
_decode: dict[tuple, str] = {}  # (dtype, compiled, *decode_shape) -> form, this process


@register("decode_attention", "math")
def decode_math(q, k_cache, v_cache, cache_seqlens, *, scale):
    """The same contract as plain matmuls and a softmax: each kv head's query group as one [g * Tq, D] block."""
    B, Hq, Tq, D = q.shape
    Hkv, Tmax = k_cache.shape[1], k_cache.shape[2]
    g = Hq // Hkv
    query_pos = cache_seqlens[:, None] - Tq + torch.arange(Tq, device=q.device)[None]  # [B, Tq]
    allowed = torch.arange(Tmax, device=q.device)[None, None, :] <= query_pos[:, :, None]  # [B, Tq, Tmax]
    scores = (q.reshape(B, Hkv, g * Tq, D) @ k_cache.transpose(-1, -2)).float().view(B, Hkv, g, Tq, Tmax)
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf")) * (scale or D ** -0.5)
    probs = scores.softmax(-1).to(v_cache.dtype).view(B, Hkv, g * Tq, Tmax)
    return (probs @ v_cache).view(B, Hq, Tq, D)


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << (n - 1).bit_length())


def decode_shape(q: torch.Tensor, k_cache: torch.Tensor) -> tuple[int, ...]:
    """The shape class of a decode-attention call: (rows, Tq, Hq, Hkv, D, cache length), rows and length rounded
    up to powers of 2."""
    B, Hq, Tq, D = q.shape
    return _pow2(B), Tq, Hq, k_cache.shape[1], D, _pow2(k_cache.shape[2], 64)


def decode_form(q: torch.Tensor, k_cache: torch.Tensor, compiled: bool) -> str:
    """The tuned CPU decode-attention form for this call, else today's ("sdpa"). A lookup; safe while tracing."""
    return _decode.get((q.dtype, compiled, *decode_shape(q, k_cache)), "sdpa")


def _measure_decode(shape: tuple[int, ...], dtype: torch.dtype, compiled: bool) -> dict[str, float]:
    from fusion.kernels import dispatch

    batch, Tq, Hq, Hkv, D, length = shape
    q = torch.randn(batch, Hq, Tq, D).to(dtype)
    k, v = (torch.randn(batch, Hkv, length, D).to(dtype) for _ in range(2))
    seqlens = torch.full((batch,), length * 3 // 4)  # a part-filled cache, as mid-generation
    forms = {name: dispatch.decode_attention_impl(name) for name in DECODE_FORMS}
    with torch._dynamo.config.patch(recompile_limit=TIMED_SHAPES):
        if compiled:
            forms = {name: torch.compile(f, dynamic=False) for name, f in forms.items()}
        return cpu_tune.time_calls({name: (lambda f=f: f(q, k, v, seqlens, scale=D ** -0.5))
                                    for name, f in forms.items()})


def tune_decode(q: torch.Tensor, k_cache: torch.Tensor, compiled: bool) -> str:
    """Make (and remember) the decode-attention choice for calls shaped like ``q`` against ``k_cache``."""
    shape = decode_shape(q, k_cache)
    key = (q.dtype, compiled, *shape)
    if key not in _decode:
        _decode[key] = cpu_tune.choose("decode_attention", q.dtype, (compiled, *shape), "sdpa", DECODE_FORMS,
                              lambda: _measure_decode(shape, q.dtype, compiled))
    return _decode[key]


# ---------------------------------------------------------------- a decode session's shapes


def prepare_decode(model: torch.nn.Module, rows: int, tokens: tuple[int, ...], k_cache: torch.Tensor,
                   compiled: bool) -> None:
    """Tune every choice a CPU decode of ``rows`` cache rows will meet, before anything is traced: each weight
    shape at ``rows x t`` rows for each ``t`` in ``tokens`` (1, and the speculative window), compiled only (eager
    products always use gemm), and decode attention at each Tq."""
    if not cpu_tune.enabled():
        return
    param = next(model.parameters())
    cfg = model.cfg
    if compiled:
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for N, K in sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}):
            for t in tokens:
                tune_linear(rows * t, K, N, param.dtype, weight_bytes)
    for t in tokens:
        q = torch.empty(rows, cfg.n_heads, t, cfg.head_dim, dtype=param.dtype)
        tune_decode(q, k_cache, compiled)
