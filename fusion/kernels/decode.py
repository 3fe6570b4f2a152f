"""Split-KV (flash-decoding) attention of Tq new tokens against a KV cache, in Triton.

q [B, Hq, Tq, D], cache k/v [B, Hkv, Tmax, D], ``cache_seqlens [B]`` = valid length including the new
tokens, which sit at positions ``cache_seqlens - Tq + i`` (causal among themselves). One program takes all
``Tq * G`` query rows of a kv head (G = Hq // Hkv), so each cache tile is read once per group, and one slice
of the cache; a second kernel merges the slices by their logsumexp. Decoding is bound by reading K and V,
so the split count is chosen to give every SM work even at batch 1. Inference only: no backward.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fusion.kernels.triton_utils import (
    LOG2E,
    Launch,
    autotune,
    check_launch,
    dot_precision,
    interpreting,
    pow2,
    upcast_dots,
)

SPLIT_ALIGN = 128  # slice length is a multiple of every BLOCK_N candidate

# Decoding streams K/V once: tiles of 64 or 128 keys, 2 or 3 stages. Spilling on sm_80, dropped: 128 keys with
# 4 warps, 64 keys with 4 warps and 3 stages (a head_dim-32 prefill, the tiny preset), and 128 keys with 8 warps
# and 2 stages (a head_dim-32 speculative window of 16 tokens). Figures: benchmarks/RESULTS.md, "static compile
# report".
SPLIT_CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
                 for bn, w, s in ((64, 4, 2), (64, 8, 3), (128, 8, 3))]
INTERPRET_CONFIG = triton.Config({"BLOCK_N": 32})


def _smem(config: triton.Config, args: dict) -> int:
    """Upper bound (bytes) on shared memory: K and V tiles in ``num_stages`` buffers plus the Q tile."""
    rows = config.num_stages * 2 * config.kwargs["BLOCK_N"] + args["BLOCK_M"]
    return rows * args["BLOCK_D"] * args["Q"].element_size()


@autotune(SPLIT_CONFIGS, INTERPRET_CONFIG, ["Tmax", "BLOCK_M", "BLOCK_D"], _smem)
@triton.jit
def _split_kernel(Q, K, V, SEQLENS, O_PART, LSE_PART,
                  sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                  HKV, Tq, Tmax, D, G, chunk, n_splits, scale_log2,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    pid_bh, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, kvh = pid_bh // HKV, pid_bh % HKV
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row = t * G + g
    t, h = rows // G, kvh * G + rows % G
    row_ok = rows < Tq * G
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    seqlen = tl.load(SEQLENS + b)
    q_pos = seqlen - Tq + t
    q = tl.load(Q + b.to(tl.int64) * sqb + h[:, None] * sqh + t[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b.to(tl.int64) * skb + kvh * skh
    v_base = V + b.to(tl.int64) * svb + kvh * svh

    lo = split * chunk
    last_t = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, Tq * G - 1) // G
    hi = tl.minimum(lo + chunk, seqlen - Tq + last_t + 1)  # no tile beyond the last visible key
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < hi) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
        ok = (offs_n[None, :] <= q_pos[:, None]) & (offs_n[None, :] < hi)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    # Partial results in fp32: out [B, Hq, Tq, S, D], lse [B, Hq, Tq, S] in log2 units (-inf: empty slice).
    part = ((b * HKV * G + h).to(tl.int64) * Tq + t) * n_splits + split
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(O_PART + part[:, None] * D + offs_d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + part, tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe)), mask=row_ok)


@triton.jit
def _combine_kernel(O_PART, LSE_PART, OUT, n_splits, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # one (b, h, t)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    lse = tl.load(LSE_PART + row * n_splits + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    o = tl.load(O_PART + (row * n_splits + offs_s)[:, None] * D + offs_d[None, :],
                mask=s_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(OUT + row * D + offs_d, out.to(OUT.dtype.element_ty), mask=offs_d < D)


def split_count(sms: int, programs: int, Tmax: int) -> int:
    """Enough slices that ~2 programs run per SM, never slices shorter than SPLIT_ALIGN keys."""
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(Tmax, SPLIT_ALIGN)))


def _device_sms(device: torch.device) -> int | None:
    if device.type != "cuda" or interpreting():
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def _validate(q, k_cache, v_cache, cache_seqlens) -> None:
    if q.dim() != 4 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"q must be [B, Hq, Tq, D] and k/v caches equal [B, Hkv, Tmax, D]; got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, Hq, Tq, D = q.shape
    if k_cache.shape[0] != B or k_cache.shape[3] != D or Hq % k_cache.shape[1] or Tq > k_cache.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if tuple(cache_seqlens.shape) != (B,) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cache_seqlens must be an int tensor [B={B}], got {cache_seqlens.dtype} "
                         f"{tuple(cache_seqlens.shape)}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q and caches must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad):
        raise RuntimeError("the triton decode_attention backend has no backward; call it under torch.no_grad()")
    check_launch(q, k_cache, v_cache, cache_seqlens)


def decode_launches(q, k_cache, v_cache, cache_seqlens, *, scale: float | None = None,
                    num_splits: int | None = None, sms: int | None = None):
    """The split and combine ``Launch``es and the output [B, Hq, Tq, D] they fill. The split count comes
    from ``num_splits``, else from ``sms`` (the device's SM count), else 1."""
    unit = lambda x: x if x.stride(-1) == 1 else x.contiguous()
    q, k_cache, v_cache = unit(q), unit(k_cache), unit(v_cache)
    B, Hq, Tq, D = q.shape
    Hkv, Tmax = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    block_m = pow2(min(Tq * G, 64))
    m_blocks = triton.cdiv(Tq * G, block_m)
    splits = num_splits or (split_count(sms, B * Hkv * m_blocks, Tmax) if sms else 1)
    chunk = triton.cdiv(triton.cdiv(Tmax, splits), SPLIT_ALIGN) * SPLIT_ALIGN
    splits = triton.cdiv(Tmax, chunk)
    o_part = torch.empty(B, Hq, Tq, splits, D, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(B, Hq, Tq, splits, device=q.device, dtype=torch.float32)
    out = torch.empty(B, Hq, Tq, D, device=q.device, dtype=q.dtype)
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    split = Launch(_split_kernel, (B * Hkv, m_blocks, splits), dict(
        Q=q, K=k_cache, V=v_cache, SEQLENS=cache_seqlens.to(torch.int32), O_PART=o_part, LSE_PART=lse_part,
        sqb=q.stride(0), sqh=q.stride(1), sqt=q.stride(2), skb=k_cache.stride(0), skh=k_cache.stride(1),
        skt=k_cache.stride(2), svb=v_cache.stride(0), svh=v_cache.stride(1), svt=v_cache.stride(2),
        HKV=Hkv, Tq=Tq, Tmax=Tmax, D=D, G=G, chunk=chunk, n_splits=splits, scale_log2=scale * LOG2E.value,
        BLOCK_M=block_m, BLOCK_D=pow2(D), PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.dtype)))
    combine = Launch(_combine_kernel, (B * Hq * Tq,), dict(
        O_PART=o_part, LSE_PART=lse_part, OUT=out, n_splits=splits, D=D, BLOCK_S=pow2(splits, 2),
        BLOCK_D=pow2(D)))
    return [split, combine], out


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, scale: float | None = None,
                     num_splits: int | None = None) -> torch.Tensor:
    """Attention of q's Tq tokens against the valid part of the cache -> [B, Hq, Tq, D] in q's dtype."""
    _validate(q, k_cache, v_cache, cache_seqlens)
    launches, out = decode_launches(q, k_cache, v_cache, cache_seqlens, scale=scale, num_splits=num_splits,
                                    sms=_device_sms(q.device))
    for launch in launches:
        launch.run()
    return out
