"""The decoder's shape as a dataclass, plus a table of named sizes.

A preset gives shapes only; the vocabulary comes from the tokenizers (or from a
converted checkpoint), so ``ModelConfig.preset(name, vocab)`` takes a ``Vocab``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from fusion.presets import pick_preset
from fusion.vocab import Vocab

# Shapes only. chameleon-* follow the released Chameleon models (7B: MHA, 34B: GQA + swin_norm).
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=512,
                 tie_embeddings=True),
    "small": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, max_seq_len=2048),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, max_seq_len=4096),
    "chameleon-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, max_seq_len=4096),
    "chameleon-34b": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim=22016, max_seq_len=4096,
                          swin_norm=True),
}


@dataclass(frozen=True)
class ModelConfig:
    """Decoder hyper-parameters; ``head_dim`` is derived as ``dim // n_heads``."""

    vocab: Vocab
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = True
    swin_norm: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    z_loss_weight: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"vocab must be a fusion.vocab.Vocab, got {type(self.vocab).__name__}")
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0 or self.z_loss_weight < 0:
            raise ValueError("rope_theta, norm_eps and init_std must be positive and z_loss_weight >= 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def preset(cls, name: str, vocab: Vocab, **overrides) -> ModelConfig:
        """A named size from ``MODEL_PRESETS`` with ``vocab``; keyword overrides win."""
        return cls(vocab=vocab, **{**pick_preset(MODEL_PRESETS, name, "model"), **overrides})

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocab"] = self.vocab.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**{**d, "vocab": Vocab.from_dict(d["vocab"])})
