"""FlashAttention-2 forward and backward in Triton: causal or full, GQA/MQA, packed documents.

Layout q [B, Hq, T, D], k/v [B, Hkv, T, D] (any strides with a unit last stride). Packed documents are
``doc_ids [B, T]`` made of contiguous runs (how packing lays them out): a token sees keys with its id, and each
tile loop is clipped to the runs its rows can see, so fully-masked tiles are never visited. The forward keeps
the row logsumexp (natural log, fp32) for the backward, which runs two kernels without atomics: one per
key/value block that loops over the q heads of its GQA group (dk, dv) and one per query block (dq).
Plain pointer arithmetic only, so Triton 3.6 and 3.8 both compile it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fusion.kernels import fallback
from fusion.kernels.doc_runs import run_bounds
from fusion.kernels.triton_utils import LN2, LOG2E, Launch, autotune, check_launch, dot_precision, pow2, upcast_dots

# GPU autotune candidates (BLOCK_M, BLOCK_N, warps, stages): those that compile without register spills on
# sm_80 and sm_90 at head_dim 32, 64 and 128 (tests/bench/test_static.py holds them to it). Left out because
# they spill at head_dim 64 or 128 (GQA groups of 8 included, as in chameleon-34b) on sm_80 or sm_90: 128x128
# tiles, 4 warps at 128x64, dk/dv tiles of 64 queries, and dk/dv with 4 warps (the compile report's figures:
# benchmarks/RESULTS.md, "static compile report"). Larger head dims are pruned by shared memory (``_smem``).
_C = lambda m, n, w, s: triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
FWD_CONFIGS = [_C(128, 64, 8, 2), _C(128, 32, 8, 3), _C(64, 64, 4, 3), _C(64, 32, 4, 3)]
DKDV_CONFIGS = [_C(16, 128, 8, 3), _C(32, 64, 8, 2), _C(16, 64, 8, 3)]
DQ_CONFIGS = [_C(128, 32, 8, 3), _C(64, 64, 4, 3), _C(64, 32, 4, 2)]
INTERPRET_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})
_KEY = ["T", "BLOCK_D", "CAUSAL", "HAS_DOC"]


def _smem(streamed: str, resident: str, n_resident: int, n_rows: int):
    """Shared memory (bytes) of a kernel that keeps ``n_resident`` tiles of ``resident`` rows, streams two
    tiles of ``streamed`` rows (K and V, or Q and dO) and ``n_rows`` fp32/int32 row vectors (lse, delta, doc
    ids) through ``num_stages`` buffers. An upper bound: the static tests compare it with the compiler's."""

    def estimate(config: triton.Config, args: dict) -> int:
        stages, stream, keep = config.num_stages, config.kwargs[streamed], config.kwargs[resident]
        tiles = (stages * 2 * stream + n_resident * keep) * args["BLOCK_D"] * args["Q"].element_size()
        return tiles + stages * stream * n_rows * 4

    return estimate


@triton.jit
def _partner_range(DOC_LO, DOC_HI, b, start, T, lo, hi, HAS_DOC: tl.constexpr, SPAN: tl.constexpr,
                   ALIGN: tl.constexpr):
    """Clip [lo, hi) to the document runs of tokens start..start+SPAN-1; lo is aligned down to ALIGN."""
    if HAS_DOC:
        last = tl.minimum(start + SPAN, T) - 1
        lo = tl.maximum(lo, tl.load(DOC_LO + b * T + start))
        hi = tl.minimum(hi, tl.load(DOC_HI + b * T + last))
    return (lo // ALIGN) * ALIGN, hi


@triton.jit
def _allowed(offs_m, offs_n, doc_m, doc_n, T, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr):
    """[M, N] mask of (query, key) pairs that may attend."""
    ok = (offs_m[:, None] < T) & (offs_n[None, :] < T)
    if CAUSAL:
        ok = ok & (offs_m[:, None] >= offs_n[None, :])
    if HAS_DOC:
        ok = ok & (doc_m[:, None] == doc_n[None, :])
    return ok


@triton.jit
def _load_kv_tile(k_base, v_base, skt, svt, DOC, b, T, offs_n, offs_d, d_ok,
                  UPCAST: tl.constexpr, HAS_DOC: tl.constexpr):
    """One K/V tile (rows ``offs_n``, zero past T) and its document ids (the position itself without docs)."""
    kv_mask = (offs_n[:, None] < T) & d_ok[None, :]
    k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    doc_n = offs_n
    if HAS_DOC:
        doc_n = tl.load(DOC + b * T + offs_n, mask=offs_n < T, other=-2)
    return k, v, doc_n


@autotune(FWD_CONFIGS, INTERPRET_CONFIG, _KEY, _smem("BLOCK_N", "BLOCK_M", 1, 1))
@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, DOC, DOC_LO, DOC_HI,
                sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                H, T, D, G, scale_log2,
                CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, BLOCK_D: tl.constexpr,
                PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    kvh = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=(offs_m[:, None] < T) & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b.to(tl.int64) * skb + kvh * skh
    v_base = V + b.to(tl.int64) * svb + kvh * svh
    doc_m = offs_m
    if HAS_DOC:
        doc_m = tl.load(DOC + b * T + offs_m, mask=offs_m < T, other=-1)

    hi = T
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, T)
    lo, hi = _partner_range(DOC_LO, DOC_HI, b, start_m, T, 0, hi, HAS_DOC, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, doc_n = _load_kv_tile(k_base, v_base, skt, svt, DOC, b, T, offs_n, offs_d, d_ok, UPCAST, HAS_DOC)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
        s = tl.where(_allowed(offs_m, offs_n, doc_m, doc_n, T, CAUSAL, HAS_DOC), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at 0
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=(offs_m[:, None] < T) & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, (m_i + tl.log2(l_safe)) * LN2, mask=offs_m < T)


@autotune(DKDV_CONFIGS, INTERPRET_CONFIG, _KEY, _smem("BLOCK_M", "BLOCK_N", 2, 3))
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DOC, DOC_LO, DOC_HI,
                     sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                     HKV, T, D, G, scale, scale_log2,
                     CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, BLOCK_D: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, kvh = pid_bh // HKV, pid_bh % HKV
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    nd_mask = (offs_n[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(K + b.to(tl.int64) * skb + kvh * skh + offs_n[:, None] * skt + offs_d[None, :], mask=nd_mask, other=0.0)
    v = tl.load(V + b.to(tl.int64) * svb + kvh * svh + offs_n[:, None] * svt + offs_d[None, :], mask=nd_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    doc_n = offs_n
    if HAS_DOC:
        doc_n = tl.load(DOC + b * T + offs_n, mask=offs_n < T, other=-2)
    lo = 0
    if CAUSAL:
        lo = start_n
    lo, hi = _partner_range(DOC_LO, DOC_HI, b, start_n, T, lo, T, HAS_DOC, BLOCK_N, BLOCK_M)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, G):
        h = kvh * G + g
        q_base = Q + b.to(tl.int64) * sqb + h * sqh
        do_base = DO + b.to(tl.int64) * sdb + h * sdh
        row_base = (b * HKV * G + h).to(tl.int64) * T
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            md_mask = (offs_m[:, None] < T) & (offs_d[None, :] < D)
            q = tl.load(q_base + offs_m[:, None] * sqt + offs_d[None, :], mask=md_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdt + offs_d[None, :], mask=md_mask, other=0.0)
            if UPCAST:
                q, do = q.to(tl.float32), do.to(tl.float32)
            lse = tl.load(LSE + row_base + offs_m, mask=offs_m < T, other=0.0) * LOG2E
            delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < T, other=0.0)
            doc_m = offs_m
            if HAS_DOC:
                doc_m = tl.load(DOC + b * T + offs_m, mask=offs_m < T, other=-1)
            # Transposed tiles [N, M]: rows are this program's keys.
            s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * scale_log2
            ok_t = tl.trans(_allowed(offs_m, offs_n, doc_m, doc_n, T, CAUSAL, HAS_DOC))
            p_t = tl.where(ok_t, tl.exp2(s_t - lse[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)

    out = b.to(tl.int64) * HKV * T * D + kvh * T * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=nd_mask)


@autotune(DQ_CONFIGS, INTERPRET_CONFIG, _KEY, _smem("BLOCK_N", "BLOCK_M", 2, 1))
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, DOC, DOC_LO, DOC_HI,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                   H, T, D, G, scale, scale_log2,
                   CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, BLOCK_D: tl.constexpr,
                   PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    kvh = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    md_mask = (offs_m[:, None] < T) & d_ok[None, :]
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=md_mask, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :], mask=md_mask,
                 other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0) * LOG2E
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + b.to(tl.int64) * skb + kvh * skh
    v_base = V + b.to(tl.int64) * svb + kvh * svh
    doc_m = offs_m
    if HAS_DOC:
        doc_m = tl.load(DOC + b * T + offs_m, mask=offs_m < T, other=-1)
    hi = T
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M, T)
    lo, hi = _partner_range(DOC_LO, DOC_HI, b, start_m, T, 0, hi, HAS_DOC, BLOCK_M, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, doc_n = _load_kv_tile(k_base, v_base, skt, svt, DOC, b, T, offs_n, offs_d, d_ok, UPCAST, HAS_DOC)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
        ok = _allowed(offs_m, offs_n, doc_m, doc_n, T, CAUSAL, HAS_DOC)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)

    out = pid_bh.to(tl.int64) * T * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=md_mask)


# ------------------------------------------------------------------ host side


def _validate(q, k, v, doc_ids) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share a dtype among fp16/bf16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if doc_ids is not None and tuple(doc_ids.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(f"doc_ids must be [B, T] = {(q.shape[0], q.shape[2])}, got {tuple(doc_ids.shape)}")
    check_launch(q, k, v)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _shared_args(q, k, v, causal: bool, doc_ids) -> dict:
    """Arguments every attention kernel takes alike: document runs, K/V strides, T, D, G and the constexprs."""
    if doc_ids is None:
        doc = dict(DOC=q, DOC_LO=q, DOC_HI=q, HAS_DOC=False)  # never read: HAS_DOC=False prunes every use
    else:
        lo, hi = run_bounds(doc_ids)
        doc = dict(DOC=doc_ids.to(torch.int32).contiguous(), DOC_LO=lo, DOC_HI=hi, HAS_DOC=True)
    D = q.shape[3]
    return dict(Q=q, K=k, V=v, **doc, skb=k.stride(0), skh=k.stride(1), skt=k.stride(2), svb=v.stride(0),
                svh=v.stride(1), svt=v.stride(2), T=q.shape[2], D=D, G=q.shape[1] // k.shape[1], CAUSAL=causal,
                BLOCK_D=pow2(D), PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.dtype))


def forward_launch(q, k, v, *, causal: bool, doc_ids=None, scale: float | None = None):
    """The forward's ``Launch`` and its outputs (o [B, H, T, D], lse [B, H, T] fp32) it will fill."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, H, T, D = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    o = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    args = dict(_shared_args(q, k, v, causal, doc_ids), OUT=o, LSE=lse, sqb=q.stride(0), sqh=q.stride(1),
                sqt=q.stride(2), sob=o.stride(0), soh=o.stride(1), sot=o.stride(2), H=H, scale_log2=scale * LOG2E.value)
    return Launch(_fwd_kernel, lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H), args), o, lse


def backward_launches(do, q, k, v, o, lse, *, causal: bool, doc_ids=None, scale: float | None = None):
    """The backward's two ``Launch``es (dk/dv, then dq) and the gradients (dq, dk, dv) they fill."""
    q, k, v, do = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(do)
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    delta = (o.float() * do.float()).sum(-1).contiguous()  # rowsum(dO * O) = rowsum(P * dP)
    dq = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, Hkv, T, D, device=q.device, dtype=k.dtype)
    dv = torch.empty(B, Hkv, T, D, device=q.device, dtype=v.dtype)
    args = dict(_shared_args(q, k, v, causal, doc_ids), DO=do, LSE=lse, DELTA=delta, sqb=q.stride(0),
                sqh=q.stride(1), sqt=q.stride(2), sdb=do.stride(0), sdh=do.stride(1), sdt=do.stride(2), scale=scale,
                scale_log2=scale * LOG2E.value)
    dkdv = Launch(_bwd_dkdv_kernel, lambda m: (triton.cdiv(T, m["BLOCK_N"]), B * Hkv),
                  dict(args, DK=dk, DV=dv, HKV=Hkv))
    dq_launch = Launch(_bwd_dq_kernel, lambda m: (triton.cdiv(T, m["BLOCK_M"]), B * H), dict(args, DQ=dq, H=H))
    return [dkdv, dq_launch], dq, dk, dv


def attention_forward(q, k, v, *, causal: bool, doc_ids=None, scale: float | None = None):
    """Attention output [B, Hq, T, D] and row logsumexp [B, Hq, T] (fp32, natural log)."""
    _validate(q, k, v, doc_ids)
    launch, o, lse = forward_launch(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
    launch.run()
    return o, lse


def attention_backward(do, q, k, v, o, lse, *, causal: bool, doc_ids=None, scale: float | None = None):
    """Gradients (dq, dk, dv) given the forward's output and logsumexp."""
    launches, dq, dk, dv = backward_launches(do, q, k, v, o, lse, causal=causal, doc_ids=doc_ids, scale=scale)
    for launch in launches:
        launch.run()
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, doc_ids, scale):
        o, lse = attention_forward(q, k, v, causal=causal, doc_ids=doc_ids, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse, doc_ids)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, doc_ids = ctx.saved_tensors
        opts = dict(causal=ctx.causal, doc_ids=doc_ids, scale=ctx.scale)
        run = lambda: attention_backward(do, q, k, v, o, lse, **opts)  # noqa: E731
        grads = fallback.backward("attention", run, lambda: (q, k, v), ctx.needs_input_grad[:3], (do,), **opts)
        return *grads, None, None, None


def flash_attention(q, k, v, *, causal: bool = True, doc_ids=None, scale: float | None = None) -> torch.Tensor:
    """Differentiable attention with the ``dispatch.attention`` contract."""
    return FlashAttentionFunction.apply(q, k, v, causal, doc_ids, scale)
