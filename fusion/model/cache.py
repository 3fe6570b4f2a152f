"""A static, preallocated KV cache: per-layer k/v buffers written in place at each row's length.

Rows may hold different lengths (ragged batches). Every write is an index op on
device tensors, so a decode step needs no host sync and can be captured by
``torch.compile`` / CUDA graphs. Each buffer has one extra scratch slot at the
end: the padded tail of a ragged prefill may run past ``max_len``, and those
writes land there instead of out of bounds (they are never attended to).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.model.config import ModelConfig


def bucket_length(needed: int, max_seq_len: int) -> int:
    """``needed`` rounded up to one of four lengths per power of two (64, 80, 96, 112, 128, 160, ...), at most
    ``max_seq_len``: a compiled decode step's shapes then follow a few buckets, not every prompt length, and
    at most a fifth of a cache is slack."""
    if needed <= 64:
        return min(64, max_seq_len)
    quarter = 1 << (needed.bit_length() - 3)  # a quarter of the power of two below needed
    return min(-(-needed // quarter) * quarter, max_seq_len)


@dataclass
class KVCache:
    """``k[i]``, ``v[i]``: layer ``i``'s buffers [B, Hkv, max_len + 1, D]; ``seqlens`` [B]: valid length per row."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    seqlens: torch.Tensor

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int, max_len: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> KVCache:
        """Zeroed buffers for ``batch`` rows of up to ``max_len`` tokens each."""
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"batch and max_len must be positive, got {batch}, {max_len}")
        if max_len > cfg.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        shape = (batch, cfg.n_kv_heads, max_len + 1, cfg.head_dim)
        k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        return cls(k, v, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch(self) -> int:
        return self.seqlens.shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2] - 1

    def reset(self) -> None:
        """Forget every row (buffers keep their memory and addresses)."""
        self.seqlens.zero_()

    def slots(self, n_new: int) -> torch.Tensor:
        """[B, n_new] buffer positions for ``n_new`` tokens appended to every row; overflow goes to scratch."""
        pos = self.seqlens[:, None] + torch.arange(n_new, device=self.seqlens.device)
        return pos.clamp_(max=self.max_len)

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, slots: torch.Tensor) -> None:
        """Store k/v [B, Hkv, T, D] of layer ``layer`` at ``slots`` [B, T]."""
        rows = torch.arange(self.batch, device=slots.device)[:, None]
        # Advanced indices on dims 0 and 2 put them first: the target view is [B, T, Hkv, D].
        self.k[layer][rows, :, slots] = k_new.transpose(1, 2).to(self.k[layer].dtype)
        self.v[layer][rows, :, slots] = v_new.transpose(1, 2).to(self.v[layer].dtype)

    def advance(self, lengths: torch.Tensor) -> None:
        """Grow each row by its number of valid new tokens (in place, so the tensor keeps its address)."""
        self.seqlens.add_(lengths)

    def load(self, rows: torch.Tensor, other: KVCache) -> None:
        """Write ``other``'s rows into ``rows`` of this cache (a slot-indexed write: a prompt prefilled apart
        joins a running batch); ``other`` may be shorter, and what lies past its length is never read."""
        if other.max_len > self.max_len:
            raise ValueError(f"a cache of {other.max_len} positions does not fit in one of {self.max_len}")
        n = other.max_len
        for mine, theirs in zip(self.k + self.v, other.k + other.v, strict=True):
            mine[rows, :, :n] = theirs[:, :, :n].to(mine.dtype)
        self.seqlens[rows] = other.seqlens

    def select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding ``rows`` (a LongTensor of row indices) in that order, e.g. to drop or reorder."""
        return KVCache([k.index_select(0, rows) for k in self.k], [v.index_select(0, rows) for v in self.v],
                       self.seqlens.index_select(0, rows))
