"""The decoder's layers: RMSNorm, Chameleon's per-head QK LayerNorm, rotary tables, attention, SwiGLU MLP, block.

Every hot op goes through ``fusion.kernels.dispatch`` (Triton on CUDA, eager / SDPA on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.kernels import dispatch
from fusion.model.cache import KVCache
from fusion.model.config import ModelConfig

QK_NORM_EPS = 1e-5  # Chameleon hard-codes this eps for its QK LayerNorm, independent of norm_eps.


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.rms_norm(x, self.weight, self.eps)


class HeadNorm(nn.Module):
    """LayerNorm over head_dim whose weight and bias differ per head (Chameleon's QK-norm)."""

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., H, D]
        return F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS) * self.weight + self.bias


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, 1, T, D] for the rotate-half convention (HF Llama / Chameleon), computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Linear(nn.Linear):
    """``nn.Linear`` without bias, through ``dispatch.linear`` (a streaming reduction when decoding on a CPU)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.linear(x, self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.dim, cfg.head_dim
        self.q_proj = Linear(d, cfg.n_heads * hd)
        self.k_proj = Linear(d, cfg.n_kv_heads * hd)
        self.v_proj = Linear(d, cfg.n_kv_heads * hd)
        self.o_proj = Linear(cfg.n_heads * hd, d)
        if cfg.qk_norm:
            self.q_norm = HeadNorm(cfg.n_heads, hd)
            self.k_norm = HeadNorm(cfg.n_kv_heads, hd)

    def forward(self, x, cos, sin, *, doc_ids=None, cache: KVCache | None = None, layer: int = 0,
                slots=None) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = dispatch.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        if cache is None:
            out = dispatch.attention(q, k, v, causal=True, doc_ids=doc_ids)
        else:
            cache.write(layer, k, v, slots)
            # All T new tokens count as present: padded tail tokens of a ragged prefill sit after every valid
            # token of their row, so causality already hides them from valid queries.
            out = dispatch.decode_attention(q, cache.k[layer], cache.v[layer], cache.seqlens + T)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.ffn_dim)
        self.up_proj = Linear(cfg.dim, cfg.ffn_dim)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(dispatch.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm block, or with ``swin_norm`` Chameleon-34B's post-norm: h = x + norm(attn(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swin_norm = cfg.swin_norm
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, **attn_kwargs) -> torch.Tensor:
        if self.swin_norm:
            h = x + self.drop(self.attn_norm(self.attn(x, cos, sin, **attn_kwargs)))
            return h + self.drop(self.mlp_norm(self.mlp(h)))
        h = x + self.drop(self.attn(self.attn_norm(x), cos, sin, **attn_kwargs))
        return h + self.drop(self.mlp(self.mlp_norm(h)))
