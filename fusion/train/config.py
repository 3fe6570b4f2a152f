"""The decoder's training configuration, its presets, and the LR schedule it implies."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from fusion.presets import pick_preset
from fusion.train.schedule import warmup_cosine


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is sequences per rank per micro-step."""

    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    batch_size: int = 8
    seq_len: int = 512
    grad_accum: int = 1
    clip: float = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    dtype: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "fsdp"         # fsdp | ddp, used when world_size > 1
    max_bad_steps: int = 5         # consecutive non-finite steps before giving up
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "max_bad_steps", "eval_every", "save_every",
                     "keep_last", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.parallel not in ("fsdp", "ddp"):
            raise ValueError(f"parallel must be fsdp or ddp, got {self.parallel!r}")
        if self.warmup < 0 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need warmup >= 0, lr > 0 and 0 <= min_lr_ratio <= 1")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        """A named size from ``TRAIN_PRESETS``; keyword overrides win."""
        return cls(**{**pick_preset(TRAIN_PRESETS, name, "training"), **overrides})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as they come back from JSON


TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=300, lr=3e-3, warmup=20, batch_size=8, seq_len=256, eval_every=100, save_every=100),
    "small": dict(steps=20_000, lr=6e-4, warmup=1000, batch_size=16, seq_len=2048),
    "1b": dict(steps=100_000, lr=3e-4, warmup=2000, batch_size=8, seq_len=4096, activation_checkpointing=True),
}
# Fields that change bookkeeping only: a resume may change them; any other difference is refused.
RESUMABLE_CHANGES = ("eval_every", "eval_batches", "save_every", "keep_last", "log_every", "progress", "compile",
                     "activation_checkpointing")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_lr_ratio`` at ``steps``."""
    return warmup_cosine(step, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
