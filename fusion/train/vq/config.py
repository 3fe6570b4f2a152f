"""How the VQ image tokenizer trains: ``VQTrainConfig`` and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion.presets import pick_preset
from fusion.tokenizers.vq_config import VQConfig


@dataclass(frozen=True)
class VQTrainConfig:
    """Optimiser, losses, schedule and bookkeeping for ``train_vq``."""

    vq: VQConfig = field(default_factory=lambda: VQConfig.preset("tiny"))
    steps: int = 800                    # a margin over 600, which meets the targets narrowly (figures:
                                        # benchmarks/RESULTS.md, "Figures moved out of code comments")
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05          # cosine decay to lr * this
    warmup: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    disc_start: int | None = None       # step at which the PatchGAN hinge loss joins; None: no discriminator
    disc_weight: float = 0.1
    disc_channels: int = 32
    train_images: int = 4000            # synthetic world: scenes rendered for training
    eval_images: int = 256              # held-out images for metrics
    eval_every: int = 100
    save_every: int = 0                 # 0: save only at the end
    usage_warn: float = 0.5             # warn of codebook collapse when usage drops below this fraction
    seed: int = 0
    progress: bool = True

    @classmethod
    def preset(cls, name: str, **overrides) -> VQTrainConfig:
        """A named recipe from ``VQ_TRAIN_PRESETS``; its ``vq`` names a ``VQ_PRESETS`` entry; overrides win."""
        fields_ = {**pick_preset(VQ_TRAIN_PRESETS, name, "VQ training"), **overrides}
        if isinstance(fields_.get("vq"), str):
            fields_["vq"] = VQConfig.preset(fields_["vq"])
        return cls(**fields_)


VQ_TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(vq="tiny"),  # the synthetic world on a CPU
    # 512px with the PatchGAN joining at 20k steps
    "chameleon": dict(vq="chameleon", steps=100_000, batch_size=8, lr=1e-4, warmup=1000, weight_decay=0.01,
                      betas=(0.5, 0.9), disc_start=20_000, disc_channels=64, eval_every=1000, save_every=5000,
                      eval_images=64),
}
