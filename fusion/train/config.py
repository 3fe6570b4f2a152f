"""The decoder's training configuration, its presets, and the LR schedule it implies."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from fusion.presets import pick_preset
from fusion.train.schedule import warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is the GLOBAL number of sequences per micro-step, split
    evenly over the ranks, so a run means the same optimisation on any number of processes."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps; raise it on a finished run to extend it "
                                                       "(the cosine then ends at the new value)"})
    lr: float = 3e-4
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    batch_size: int = field(default=8, metadata={"help": "sequences per micro-step over ALL processes (split "
                                                         "evenly between them)"})
    seq_len: int = 512
    grad_accum: int = 1
    clip: float = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    condition_dropout: float = field(default=0.0, metadata={
        "help": "probability that a document's text before its first image is dropped (per document and epoch), "
                "so the model learns what classifier-free guidance needs; LlamaGen uses 0.1"})
    whole_documents: bool = field(default=False, metadata={
        "help": "a document that fits in one sequence never straddles two (documents are placed first-fit; "
                "what is left of a sequence is padding): no caption trains apart from its image"})
    dtype: str = field(default="auto", metadata={
        "choices": ("auto", "bf16", "fp32"),
        "help": "compute dtype, kept on resume: bf16 autocasts over fp32 weights; auto is bf16 on CUDA and on a CPU "
                "with native bf16 that measures faster (remembered per machine), else fp32"})
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = field(default="fsdp", metadata={"help": "fsdp (FSDP2) or ddp, under torchrun"})
    max_bad_steps: int = 5         # consecutive non-finite steps before giving up
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True
    dist_timeout_s: int = field(default=600, metadata={"help": "seconds a collective may wait before the run "
                                                               "fails (a hung or dead rank)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must lie in [0, 1), got {self.condition_dropout}")
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "max_bad_steps", "eval_every", "save_every",
                     "keep_last", "log_every", "dist_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.parallel not in ("fsdp", "ddp"):
            raise ValueError(f"parallel must be fsdp or ddp, got {self.parallel!r}")
        if self.warmup < 0 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need warmup >= 0, lr > 0 and 0 <= min_lr_ratio <= 1")
        if self.warmup >= self.steps:
            raise ValueError(f"warmup={self.warmup} must be smaller than steps={self.steps}, or the cosine never "
                             f"starts")

    @classmethod
    def preset(cls, name: str | None, **overrides) -> TrainConfig:
        """A named size from ``TRAIN_PRESETS`` (None: the field defaults); keyword overrides win.

        A warmup the overrides leave alone is clamped to ``steps // 10`` (with a warning) when ``steps`` is too
        short for it; a warmup given explicitly is never changed.
        """
        values = {**(pick_preset(TRAIN_PRESETS, name, "training") if name is not None else {}), **overrides}
        steps, warmup = values.get("steps", cls.steps), values.get("warmup", cls.warmup)
        if "warmup" not in overrides and warmup >= steps:
            values["warmup"] = steps // 10
            log.warning("warmup %d (from the %s) is not shorter than steps=%d: using warmup=%d (pass --warmup to "
                        "choose)", warmup, f"{name!r} preset" if name else "defaults", steps, values["warmup"])
        return cls(**values)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as they come back from JSON


TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=300, lr=3e-3, warmup=20, batch_size=8, seq_len=256, eval_every=100, save_every=100),
    "small": dict(steps=20_000, lr=6e-4, warmup=1000, batch_size=16, seq_len=2048),
    "1b": dict(steps=100_000, lr=3e-4, warmup=2000, batch_size=8, seq_len=4096, activation_checkpointing=True),
}
# Fields a resume may change: bookkeeping, and ``steps`` (extending a run, see ``lr_factor``); any other
# difference is refused, naming the field. The world size is not a field: a run resumes on any number of ranks.
RESUMABLE_CHANGES = ("steps", "eval_every", "eval_batches", "save_every", "keep_last", "log_every", "progress",
                     "compile", "activation_checkpointing", "parallel", "max_bad_steps", "dist_timeout_s")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_lr_ratio`` at ``steps``.

    A pure function of the config and the step (nothing of it is saved). Extending a run (a larger ``steps`` on
    resume) therefore stretches the cosine to the new end: the LR from the resume point on is the one the
    longer run would have had there, which for a run that had finished means a rise from the floor.
    """
    return warmup_cosine(step, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
