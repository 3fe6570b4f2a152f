"""What the static report compiles: the kernel launches the model makes, per preset, as ``Launch`` records.

Each case builds meta tensors (no memory, no device) with the shapes, dtypes and strides the decoder passes
(``fusion.model.transformer``: q/k come out of rope contiguous, v and dO are transposed views of [B, T, H, D];
the KV cache is [B, Hkv, max_len + 1, D]) and asks each op's own launch builder for its launches, so the
compiled binary is the one the host wrapper would launch. Shapes come from ``MODEL_PRESETS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from fusion.inference.config import GenerationConfig
from fusion.model.config import MODEL_PRESETS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VOCAB = 65536  # Chameleon's vocabulary: the output layer's width in the cross-entropy launches
# --all adds a head_dim-256 model (not a preset) to show which tiles still fit there.
EXTRA_SHAPES = {"hd256": dict(dim=4096, n_heads=16, n_kv_heads=16, ffn_dim=11008, max_seq_len=4096)}


@dataclass(frozen=True)
class Spec:
    """One specialisation: an op of a model shape in one dtype; ``variant`` picks the op's mode."""

    op: str
    preset: str
    dtype: str
    variant: str = ""

    def label(self) -> str:
        return " ".join(filter(None, (self.preset, self.dtype, self.variant)))

    def to_dict(self) -> dict:
        return asdict(self)


def _shape(preset: str) -> dict:
    return {**MODEL_PRESETS, **EXTRA_SHAPES}[preset]


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


def _attention(spec: Spec, sms: int) -> list:
    from fusion.kernels.attention import backward_launches, forward_launch

    s, dt = _shape(spec.preset), DTYPES[spec.dtype]
    H, Hkv, D, T = s["n_heads"], s["n_kv_heads"], s["dim"] // s["n_heads"], s["max_seq_len"]
    q, k = _meta(1, H, T, D, dtype=dt), _meta(1, Hkv, T, D, dtype=dt)
    v = _meta(1, T, Hkv, D, dtype=dt).transpose(1, 2)
    causal, docs = "causal" in spec.variant, "docs" in spec.variant
    doc_ids = _meta(1, T, dtype=torch.long) if docs else None
    fwd, o, lse = forward_launch(q, k, v, causal=causal, doc_ids=doc_ids)
    do = _meta(1, T, H, D, dtype=dt).transpose(1, 2)
    bwd, *_ = backward_launches(do, q, k, v, o, lse, causal=causal, doc_ids=doc_ids)
    return [fwd, *bwd]


def _decode(spec: Spec, sms: int) -> list:
    from fusion.kernels.decode import decode_launches

    s, dt = _shape(spec.preset), DTYPES[spec.dtype]
    H, Hkv, D, T = s["n_heads"], s["n_kv_heads"], s["dim"] // s["n_heads"], s["max_seq_len"]
    # one new token, a speculative window (the default width), or a prefill of a quarter of the cache
    tq = {"step": 1, "window": GenerationConfig().speculative_window}.get(spec.variant, T // 4)
    q = _meta(1, H, tq, D, dtype=dt)
    cache = _meta(1, Hkv, T + 1, D, dtype=dt)
    launches, _ = decode_launches(q, cache, cache, _meta(1, dtype=torch.long), sms=sms)
    return launches


def _rms_norm(spec: Spec, sms: int) -> list:
    from fusion.kernels.rmsnorm import backward_launch, forward_launch

    dim, dt = _shape(spec.preset)["dim"], DTYPES[spec.dtype]
    x, w = _meta(4096, dim, dtype=dt), _meta(dim, dtype=dt)
    fwd, _, rstd = forward_launch(x, w, 1e-5)
    return [fwd, backward_launch(_meta(4096, dim, dtype=dt), x, w, rstd, sms)[0]]


def _rope(spec: Spec, sms: int) -> list:
    from fusion.kernels.rope import rotate_launch

    s, dt = _shape(spec.preset), DTYPES[spec.dtype]
    H, D, T = s["n_heads"], s["dim"] // s["n_heads"], s["max_seq_len"]
    x = _meta(1, T, H, D, dtype=dt).transpose(1, 2)  # q straight from its projection
    cos = _meta(1, 1, T, D, dtype=dt)
    return [rotate_launch(x, cos, cos, backward)[0] for backward in (False, True)]


def _swiglu(spec: Spec, sms: int) -> list:
    from fusion.kernels.swiglu import backward_launch, forward_launch

    x = _meta(4096, _shape(spec.preset)["ffn_dim"], dtype=DTYPES[spec.dtype])
    return [forward_launch(x, x)[0], backward_launch(x, x, x)[0]]


def _cross_entropy(spec: Spec, sms: int) -> list:
    from fusion.kernels.cross_entropy_triton import ce_lse_launch, grad_launch
    from fusion.vocab import IGNORE_INDEX

    logits, targets = _meta(1024, VOCAB, dtype=DTYPES[spec.dtype]), _meta(1024, dtype=torch.long)
    launch, _, lse = ce_lse_launch(logits, targets, IGNORE_INDEX)
    return [launch, grad_launch(logits, targets, lse, lse, lse, IGNORE_INDEX)]


CASES = {"attention": _attention, "decode_attention": _decode, "rms_norm": _rms_norm, "rope": _rope,
         "swiglu": _swiglu, "linear_cross_entropy": _cross_entropy}
VARIANTS = {"attention": ("causal", "causal+docs"), "decode_attention": ("step", "window", "prefill")}
ALL_VARIANTS = {"attention": ("causal", "causal+docs", "full", "full+docs")}


def launches(spec: Spec, sms: int) -> list:
    """The kernel launches of ``spec`` on a GPU with ``sms`` multiprocessors (it sets split counts)."""
    return CASES[spec.op](spec, sms)


def specs(everything: bool = False, only: dict | None = None) -> list[Spec]:
    """Every preset's specialisations in bf16 and fp16 (causal, as the model calls attention); ``everything``
    adds fp32, full attention and a head_dim-256 shape. ``only`` keeps specs whose fields are in its lists,
    e.g. ``{"op": ["attention"], "preset": ["1b"]}``."""
    dtypes = ("bf16", "fp16", "fp32") if everything else ("bf16", "fp16")
    presets = [*MODEL_PRESETS, *(EXTRA_SHAPES if everything else ())]
    out = []
    for op in CASES:
        variants = (ALL_VARIANTS if everything else {}).get(op) or VARIANTS.get(op, ("",))
        out += [Spec(op, p, dt, v) for p in presets for dt in dtypes for v in variants]
    return [s for s in out if all(getattr(s, k) in v for k, v in (only or {}).items())]
