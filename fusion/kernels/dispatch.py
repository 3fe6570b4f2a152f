"""Per-op backend choice: triton | flash_attn | sdpa | eager | chunked | math.

Every hot op of the model is called through this module, so a backend can be swapped without touching model
code. Each backend is a function registered with ``@register(op, name, ...)`` (``registry.py``) where it is
defined: here for the torch ones and the thin wrappers that import Triton and flash-attn on first call (so that
``import fusion`` needs neither package), ``cpu_paths`` for its CPU forms. The choice is explicit: what was asked
for (``set_backend``, else the env var ``FUSION_KERNELS="attention=sdpa,rms_norm=eager"``, read once and again
after each ``set_backend``), else on a CPU the form ``cpu_paths`` measured for this call, else the device default
(Triton on CUDA when installed, else the op's portable torch backend: SDPA, eager, or the ``chunked`` fused
linear-CE; flash_attn only when asked). Asking for a backend that is not registered, or cannot run on this
machine, is a ValueError naming those that can. Each op logs the backend it runs once.

Tensor layouts (the contract every backend implements):
- attention:   q [B, Hq, T, D], k/v [B, Hkv, T, D] (Hq % Hkv == 0), optional
               doc_ids [B, T] int (tokens attend only within equal ids) -> [B, Hq, T, D]
- decode_attention: q [B, Hq, Tq, D] new tokens, k/v cache [B, Hkv, Tmax, D],
               cache_seqlens [B] = valid cache length INCLUDING the Tq new tokens,
               which sit at positions cache_seqlens - Tq + i (causal among them)
- rms_norm:    x [..., N], weight [N] -> [..., N]
- swiglu:      gate, up [..., F] -> silu(gate) * up
- linear_cross_entropy: hidden [N, d], weight [V, d], targets [N] (ignore_index
               allowed) -> (ce [N], lse [N]) per token; ignored rows give 0
- rope:        q [B, Hq, T, D], k [B, Hk, T, D], cos/sin [T, D], [B, T, D] or
               [B, 1, T, D] (rotate-half convention) -> (q, k) rotated
- linear:      x [..., K], weight [N, K] -> [..., N] (no backend choice: ``linear``)

Triton backends on CPU run only under ``TRITON_INTERPRET=1`` (set before triton is imported); that is how tests
exercise them. A Triton kernel that fails to build on the GPU at hand falls back to the op's portable backend
with one warning (``fallback.py``; ``FUSION_STRICT_KERNELS=1`` makes it an error). The triton attention backend
reads ``doc_ids`` as contiguous runs (how packing lays documents out).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fusion.kernels import cpu_paths, fallback, registry
from fusion.kernels.overrides import requested, set_backend  # noqa: F401  (dispatch.set_backend is public)
from fusion.kernels.registry import ANY_DEVICE, register
from fusion.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
# The Triton backends: the default on CUDA; a kernel that cannot build sends its op to the portable backend.
TRITON = dict(available=HAS_TRITON, default_on=("cuda",), build_errors=fallback.compile_errors)
_logged: set[tuple[str, str]] = set()


def backend_for(op: str, device: torch.device, tuned: str | None = None) -> str:
    """The backend ``op`` runs on ``device``: override, env var, then ``tuned`` (a CPU choice measured on this
    machine, ``cpu_paths``), then the device default."""
    return _choose(op, device, tuned).name


def function_for(op: str, device: torch.device, tuned: str | None = None) -> Callable:
    """The function ``op`` runs on ``device`` (``backend_for``'s choice): what every public op below calls."""
    return _choose(op, device, tuned).fn


def _choose(op: str, device: torch.device, tuned: str | None) -> registry.Backend:
    # Plain lookups, no table changes: this runs inside compiled decode graphs.
    entry = registry.lookup(op, requested(op) or tuned or registry.default(op, device.type))
    if not torch.compiler.is_compiling() and (op, entry.name) not in _logged:  # traced, logging breaks the graph
        _logged.add((op, entry.name))
        log.info("fusion.kernels: %s -> %s (%s)", op, entry.name, device.type)
    return entry


def implementation(op: str, backend: str) -> Callable:
    """One backend of ``op`` by name, as dispatch runs it (a Triton one guarded by its fallback)."""
    return registry.lookup(op, backend).fn


# ---------------------------------------------------------------- linear

def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T``. A compiled CPU graph of few rows (a decode step) may write it as a reduction that streams
    the weights once, as ``cpu_paths.linear_form`` says (measured on this machine). Eager: always ``F.linear``."""
    if x.device.type == "cpu" and torch.compiler.is_compiling() and \
            cpu_paths.linear_form(x.numel() // x.shape[-1], x.shape[-1], weight.shape[0], x.dtype) == "reduce":
        return cpu_paths.reduce_linear(x, weight)
    return F.linear(x, weight)


# ---------------------------------------------------------------- eager / SDPA


def _doc_mask(doc_ids: torch.Tensor | None, T: int, causal: bool, device) -> torch.Tensor | None:
    """Boolean [B or 1, 1, T, T] mask, True where attention is allowed."""
    mask = None
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]
    if doc_ids is not None:
        same = (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
        mask = same if mask is None else mask & same
    return mask


@register("attention", "sdpa", default_on=ANY_DEVICE)
def _attention_sdpa(q, k, v, *, causal, doc_ids, scale):
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    mask = _doc_mask(doc_ids, q.shape[2], causal, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


@register("attention", "eager")
def _attention_eager(q, k, v, *, causal, doc_ids, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)).float() * (scale or 1 / math.sqrt(q.shape[-1]))
    mask = _doc_mask(doc_ids, q.shape[2], causal, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1).to(v.dtype)) @ v


@register("decode_attention", "sdpa", default_on=ANY_DEVICE)
def _decode_sdpa(q, k_cache, v_cache, cache_seqlens, *, scale):
    Tq, Tmax = q.shape[2], k_cache.shape[2]
    key_pos = torch.arange(Tmax, device=q.device)
    query_pos = cache_seqlens[:, None] - Tq + torch.arange(Tq, device=q.device)[None]  # [B, Tq]
    mask = (key_pos[None, None, :] <= query_pos[:, :, None])[:, None]  # [B, 1, Tq, Tmax]
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k_cache.shape[1])


@register("rms_norm", "eager", default_on=ANY_DEVICE)
def _rms_norm_eager(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


@register("swiglu", "eager", default_on=ANY_DEVICE)
def _swiglu_eager(gate, up):
    return F.silu(gate) * up


@register("linear_cross_entropy", "eager")
def _linear_cross_entropy_eager(hidden, weight, targets, *, ignore_index):
    logits = (hidden @ weight.t()).float()
    lse = torch.logsumexp(logits, -1)
    ce = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    return ce, lse * (targets != ignore_index)


def _rope_table(t: torch.Tensor) -> torch.Tensor:
    """cos/sin [T, D] | [B, T, D] | [B, 1, T, D] -> broadcastable against [B, H, T, D]."""
    return {2: lambda: t[None, None], 3: lambda: t[:, None], 4: lambda: t}[t.dim()]()


@register("rope", "eager", default_on=ANY_DEVICE)
def _rope_eager(q, k, cos, sin):
    cos, sin = _rope_table(cos), _rope_table(sin)

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rotate(q), rotate(k)


@register("linear_cross_entropy", "chunked", default_on=ANY_DEVICE)
def _linear_cross_entropy_chunked(hidden, weight, targets, *, ignore_index):
    from fusion.kernels.cross_entropy import linear_cross_entropy
    return linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index)


# ----------------------------------------------------- triton / flash_attn
# Imported on first call so that ``import fusion`` needs neither package.


@register("attention", "triton", **TRITON)
def _attention_triton(q, k, v, *, causal, doc_ids, scale):
    from fusion.kernels.attention import flash_attention
    return flash_attention(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)


@register("decode_attention", "triton", **TRITON)
def _decode_triton(q, k_cache, v_cache, cache_seqlens, *, scale):
    from fusion.kernels.decode import decode_attention
    return decode_attention(q, k_cache, v_cache, cache_seqlens, scale=scale)


@register("rms_norm", "triton", **TRITON)
def _rms_norm_triton(x, weight, eps):
    from fusion.kernels.rmsnorm import rms_norm
    return rms_norm(x, weight, eps)


@register("swiglu", "triton", **TRITON)
def _swiglu_triton(gate, up):
    from fusion.kernels.swiglu import swiglu
    return swiglu(gate, up)


@register("linear_cross_entropy", "triton", **TRITON)
def _linear_cross_entropy_triton(hidden, weight, targets, *, ignore_index):
    from fusion.kernels.cross_entropy import linear_cross_entropy
    return linear_cross_entropy(hidden, weight, targets, ignore_index=ignore_index, use_triton=True)


@register("rope", "triton", **TRITON)
def _rope_triton(q, k, cos, sin):
    from fusion.kernels.rope import rope
    return rope(q, k, cos, sin)


@register("attention", "flash_attn", available=HAS_FLASH_ATTN)
def _attention_flash(q, k, v, *, causal, doc_ids, scale):
    """flash-attn wants [B, T, H, D]; packed documents go through its varlen entry (one host sync)."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if doc_ids is None:
        return flash_attn_func(q, k, v, causal=causal, softmax_scale=scale).transpose(1, 2)
    B, T, H, D = q.shape
    from fusion.kernels.doc_runs import run_starts
    starts = run_starts(doc_ids).flatten().nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([B * T])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    flat = lambda x: x.reshape(B * T, x.shape[2], D)
    out = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu, cu, max_len, max_len, causal=causal,
                                 softmax_scale=scale)
    return out.view(B, T, H, D).transpose(1, 2)


@register("decode_attention", "flash_attn", available=HAS_FLASH_ATTN)
def _decode_flash(q, k_cache, v_cache, cache_seqlens, *, scale):
    # flash-attn aligns causal queries to the end of cache_seqlens keys: our contract exactly.
    from flash_attn import flash_attn_with_kvcache
    out = flash_attn_with_kvcache(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                  cache_seqlens=cache_seqlens.to(torch.int32), softmax_scale=scale, causal=True)
    return out.transpose(1, 2)


# ------------------------------------------------------------------ public ops


def attention(q, k, v, *, causal: bool = True, doc_ids=None, scale: float | None = None):
    """Multi-head attention with GQA and optional packed-document masking."""
    return function_for("attention", q.device)(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, scale: float | None = None):
    """Attention of Tq new query tokens against a KV cache with per-row lengths. On a CPU: the form measured for
    this shape class and mode (eager / compiled) when a decode session prepared it (``cpu_paths``), else SDPA."""
    tuned = cpu_paths.decode_form(q, k_cache, torch.compiler.is_compiling()) if q.device.type == "cpu" else None
    return function_for("decode_attention", q.device, tuned)(q, k_cache, v_cache, cache_seqlens, scale=scale)


def decode_attention_impl(backend: str):
    """One decode-attention backend by name (what the CPU tuner times)."""
    return implementation("decode_attention", backend)


def rms_norm(x, weight, eps: float = 1e-5):
    return function_for("rms_norm", x.device)(x, weight, eps)


def swiglu(gate, up):
    return function_for("swiglu", gate.device)(gate, up)


def linear_cross_entropy(hidden, weight, targets, *, ignore_index: int = IGNORE_INDEX):
    """Per-token cross-entropy and logsumexp of ``hidden @ weight.T``."""
    return function_for("linear_cross_entropy", hidden.device)(hidden, weight, targets, ignore_index=ignore_index)


def rope(q, k, cos, sin):
    """Rotary embedding (rotate-half) of q and k -> (q, k)."""
    return function_for("rope", q.device)(q, k, cos, sin)
