"""The decoder: Llama-style (RMSNorm, SwiGLU, RoPE, GQA) with Chameleon's stabilisers.

QK-norm is Chameleon's: a LayerNorm over head_dim with its own weight and bias
per head; ``swin_norm`` moves the block norms after attention / MLP. The maths
matches HF ``ChameleonForConditionalGeneration`` (see tests/model/test_convert.py).
All hot ops go through ``fusion.kernels.dispatch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusion import checkpoint_layout as layout
from fusion.files import read_json, save_tensors, write_json
from fusion.kernels import dispatch
from fusion.kernels.doc_runs import run_positions
from fusion.model.cache import KVCache
from fusion.model.config import ModelConfig
from fusion.model.layers import Block, Linear, RMSNorm, rope_cos_sin
from fusion.model.weights import load_weights, weights_source
from fusion.numerics import refuse_nonfinite
from fusion.vocab import IGNORE_INDEX


@dataclass
class LossOutput:
    """Scalar tensors. Means over an empty set are 0 (never NaN); the counts tell whether a split was present."""

    loss: torch.Tensor     # ce + z_loss_weight * z_loss: what to backprop
    ce: torch.Tensor       # mean cross-entropy over non-ignored targets
    z_loss: torch.Tensor   # mean logsumexp^2 over non-ignored targets (unweighted)
    ce_text: torch.Tensor  # mean CE over targets that are not image codes
    ce_image: torch.Tensor  # mean CE over targets that are image codes
    n_text: torch.Tensor
    n_image: torch.Tensor


class Transformer(nn.Module):
    """Decoder-only transformer over the unified vocabulary; ``forward`` returns fp32 logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        V = cfg.vocab.size
        self.embed = nn.Embedding(V, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, V)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1 or name.endswith("_norm.weight") or name.endswith("_norm.bias"):
                continue  # norms keep their ones / zeros
            # Residual-branch outputs are scaled down by depth (GPT-2) so the residual stream starts O(1).
            scale = (2 * self.cfg.n_layers) ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
            nn.init.normal_(p, std=std * scale)

    # -------------------------------------------------------------- forward

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.long, torch.int):
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        if ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len={self.cfg.max_seq_len}")
        # The range check syncs with the device, which neither compile nor CUDA-graph capture allows.
        capturing = ids.is_cuda and torch.cuda.is_current_stream_capturing()
        if ids.numel() and not (torch.compiler.is_compiling() or capturing):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.cfg.vocab.size:
                raise ValueError(f"ids must lie in [0, {self.cfg.vocab.size}), got [{lo}, {hi}]")

    def hidden(self, ids, *, positions=None, doc_ids=None, cache: KVCache | None = None,
               lengths=None) -> torch.Tensor:
        """Final-norm hidden states [B, T, dim] (``forward`` without the LM head)."""
        self._check_ids(ids)
        B, T = ids.shape
        for name, t in (("positions", positions), ("doc_ids", doc_ids)):
            if t is not None and t.shape != ids.shape:
                raise ValueError(f"{name} must have the shape of ids {tuple(ids.shape)}, got {tuple(t.shape)}")
        attn_kwargs = {"doc_ids": doc_ids}
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("doc_ids (packed documents) cannot be combined with a KV cache")
            if cache.batch != B:
                raise ValueError(f"cache holds {cache.batch} rows but ids has {B}")
            if T > cache.max_len:
                raise ValueError(f"{T} new tokens exceed the cache's max_len={cache.max_len}")
            if positions is None:
                positions = cache.seqlens[:, None] + torch.arange(T, device=ids.device)
            if lengths is not None and lengths.shape != (B,):
                raise ValueError(f"lengths must be [B]={B}, got shape {tuple(lengths.shape)}")
            attn_kwargs = {"cache": cache, "slots": cache.slots(T)}
        elif lengths is not None:
            raise ValueError("lengths only applies together with a KV cache")
        if positions is None:
            positions = (run_positions(doc_ids) if doc_ids is not None
                         else torch.arange(T, device=ids.device).expand(B, T))
        x = self.drop(self.embed(ids))
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            # the layer index only picks a cache slot: passed without a cache, it would make each compiled block
            # (training compiles them one by one) recompile per index
            x = layer(x, cos, sin, **attn_kwargs, **({"layer": i} if cache is not None else {}))
        if cache is not None:
            cache.advance(torch.full((B,), T, device=ids.device) if lengths is None else lengths.to(torch.long))
        return self.norm(x)

    def forward(self, ids, *, positions=None, doc_ids=None, cache: KVCache | None = None,
                lengths=None) -> torch.Tensor:
        """Logits [B, T, V] in fp32.

        ``doc_ids`` [B, T]: packed documents as contiguous runs of equal ids; attention stays inside a run and
        positions restart. ``cache``: the T new tokens are appended at each row's ``cache.seqlens``; for a
        ragged prefill pass left-aligned prompts padded to T and ``lengths`` [B] (valid tokens per row): the
        padded tail is written too but never seen by valid tokens, and the next step overwrites it because
        ``seqlens`` only grows by ``lengths``. Row b's next-token logits are then at ``lengths[b] - 1``.
        """
        return self.lm_head(self.hidden(ids, positions=positions, doc_ids=doc_ids, cache=cache,
                                        lengths=lengths)).float()

    def next_logits(self, ids: torch.Tensor, cache: KVCache, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``ids`` [B, T] to ``cache`` and return each row's next-token logits [B, V] in fp32.

        The logits are taken at each row's last valid position (``lengths - 1`` for a ragged prefill, else
        the last column), so only B rows go through the LM head.
        """
        h = self.hidden(ids, cache=cache, lengths=lengths)
        last = h[:, -1] if lengths is None else h[torch.arange(len(ids), device=h.device), lengths - 1]
        return self.lm_head(last).float()

    def loss(self, ids, targets, *, doc_ids=None, positions=None, ignore_index: int = IGNORE_INDEX) -> LossOutput:
        """Cross-entropy + z-loss without materialising full logits (``dispatch.linear_cross_entropy``)."""
        if targets.shape != ids.shape:
            raise ValueError(f"targets must have the shape of ids {tuple(ids.shape)}, got {tuple(targets.shape)}")
        h = self.hidden(ids, positions=positions, doc_ids=doc_ids)
        targets = targets.reshape(-1)
        ce, lse = dispatch.linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.lm_head.weight, targets,
                                                ignore_index=ignore_index)
        valid = targets != ignore_index
        image = valid & self.cfg.vocab.image_id_mask(targets)
        text = valid & ~image

        def mean(x, mask):  # mean over mask, 0 for an empty mask, no host sync
            return (x * mask).sum() / mask.sum().clamp(min=1)

        ce_all, z = mean(ce, valid), mean(lse.float() ** 2, valid)
        return LossOutput(loss=ce_all + self.cfg.z_loss_weight * z, ce=ce_all, z_loss=z,
                          ce_text=mean(ce, text), ce_image=mean(ce, image), n_text=text.sum(), n_image=image.sum())

    # -------------------------------------------------------------- sizes

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``exclude_embedding`` drops the input table unless tied."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding and not self.cfg.tie_embeddings:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), the PaLM convention used for MFU.

        6 * N for the matmul weights (lm_head included, the embedding lookup not) plus 12 * L * H * D * T for
        attention scores and values, counted without causal halving.
        """
        cfg = self.cfg
        return 6 * self.num_params(exclude_embedding=True) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

    # -------------------------------------------------------------- I/O

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (tied lm_head stored once, as ``embed.weight``)."""
        directory = Path(directory)
        state = self.state_dict()
        if self.cfg.tie_embeddings:
            state.pop("lm_head.weight")
        save_tensors(directory / layout.MODEL_WEIGHTS, state)
        write_json(directory / layout.MODEL_CONFIG, self.cfg.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, *, check_finite: bool = True) -> Transformer:
        """Read a folder written by ``save_pretrained``, ``convert`` or ``fusion export`` (weights in one file or in
        HF's sharded layout), or a training step folder that holds only its ``dcp/`` state; returned in eval mode.
        ``check_finite`` refuses weights holding NaN / inf, naming the tensors (one fast read of each)."""
        directory = Path(directory)
        cfg = ModelConfig.from_dict(read_json(directory / layout.MODEL_CONFIG))
        state = load_weights(directory, device=device or "cpu")
        if check_finite:
            refuse_nonfinite(state, str(weights_source(directory)))
        with torch.device("meta"):  # no allocation or init of weights that are about to be replaced
            model = cls(cfg)
        model.load_weights(state, dtype=dtype)
        return model.eval()

    def load_weights(self, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
        """Take ``state`` as this model's weights (assigned, not copied); names, shapes and dtypes are checked."""
        expected = {k: v for k, v in self.state_dict().items()
                    if not (self.cfg.tie_embeddings and k == "lm_head.weight")}
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {missing}, unexpected {extra}")
        bad_shape = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                     if state[k].shape != v.shape]
        if bad_shape:
            raise ValueError(f"wrong tensor shapes: {bad_shape}")
        want = state["embed.weight"].dtype
        bad_dtype = [f"{k}: {t.dtype}" for k, t in state.items() if t.dtype != want or not t.is_floating_point()]
        if bad_dtype:
            raise ValueError(f"weights must share one floating dtype ({want} from embed.weight); got {bad_dtype}")
        if dtype is not None:
            state = {k: t.to(dtype) for k, t in state.items()}
        self.load_state_dict(state, strict=not self.cfg.tie_embeddings, assign=True)
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

