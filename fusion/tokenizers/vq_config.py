"""The VQ image tokenizer's shape: ``VQConfig``, its presets, and the taming / HF Chameleon config spellings.

Field names follow taming-transformers' ``ddconfig`` (in comments). An image of ``resolution`` pixels becomes a
``grid`` of codes, ``tokens_per_image`` of them, read in raster order.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fusion.presets import pick_preset

RESIZE_POLICIES = ("crop", "pad")


@dataclass(frozen=True)
class VQConfig:
    """Architecture (taming ``ddconfig`` names in comments) and codebook options."""

    resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3                               # out_ch
    base_channels: int = 32                             # ch
    channel_multiplier: tuple[int, ...] = (1, 2, 2)    # ch_mult; the grid is resolution / 2**(len - 1)
    num_res_blocks: int = 1                             # the decoder has one more per level, as in taming
    attn_resolutions: tuple[int, ...] = ()              # feature-map sizes that get self-attention blocks
    mid_attention: bool = True                          # attention in the mid block (taming / HF "vanilla")
    latent_channels: int = 64                           # z_channels
    embed_dim: int = 64                                 # codebook vector size after quant_conv
    num_embeddings: int = 256                           # codebook size (n_embed)
    norm_groups: int = 32                               # GroupNorm groups; 32 in taming / Chameleon
    dropout: float = 0.0
    decoder: bool = True                                # False: encoder only (HF Chameleon ships no decoder)
    # Codebook (vector-quantize-pytorch). Lookup in a low-dim, l2-normalised space is LlamaGen's recipe for
    # high codebook usage (Yu et al. 2021, "ViT-VQGAN"); EMA updates and k-means init are from Razavi et al. 2019.
    codebook_dim: int | None = None                     # None: look up in embed_dim itself
    use_cosine_sim: bool = False
    ema_decay: float = 0.99
    kmeans_init: bool = False
    threshold_ema_dead_code: float = 0.0                # re-seed codes whose EMA usage falls below this
    commitment_weight: float = 0.25                     # beta
    # Preprocessing: how an image that is not square becomes resolution x resolution. "crop" resizes the
    # shortest side to the resolution and keeps the centre (Chameleon's tokenizer); "pad" resizes the longest
    # side and pads the rest with white, keeping every pixel (extreme aspect ratios: panoramas, receipts).
    resize: str = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_multiplier", tuple(self.channel_multiplier))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        down = 2 ** (len(self.channel_multiplier) - 1)
        if not self.channel_multiplier or self.resolution % down:
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**(len(channel_multiplier)-1)"
                             f" = {down}")
        widths = [self.base_channels * m for m in self.channel_multiplier]
        if any(w % self.norm_groups for w in widths) or self.base_channels % self.norm_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide every channel count {widths}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2, got {self.num_embeddings}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // 2 ** (len(self.channel_multiplier) - 1)
        return side, side

    @property
    def tokens_per_image(self) -> int:
        h, w = self.grid
        return h * w

    @classmethod
    def preset(cls, name: str, **overrides) -> VQConfig:
        """A named size from ``VQ_PRESETS``; keyword overrides win."""
        return cls(**{**pick_preset(VQ_PRESETS, name, "VQ"), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VQConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown VQConfig keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict, *, decoder: bool = False) -> VQConfig:
        """HF ``ChameleonVQVAEConfig`` (as a dict) -> VQConfig; ``decoder``: the weights have one (HF-format Anole;
        HF Chameleon has none)."""
        if hf.get("double_latent"):
            raise ValueError("double_latent=True (a KL-VAE latent) is not a VQ tokenizer")
        vanilla = hf.get("attn_type", "vanilla") == "vanilla"
        return cls(resolution=hf.get("resolution", 512), in_channels=hf.get("in_channels", 3),
                   base_channels=hf.get("base_channels", 128),
                   channel_multiplier=tuple(hf.get("channel_multiplier", (1, 1, 2, 2, 4))),
                   num_res_blocks=hf.get("num_res_blocks", 2),
                   attn_resolutions=tuple(hf.get("attn_resolutions") or ()) if vanilla else (),
                   mid_attention=vanilla, latent_channels=hf.get("latent_channels", 256),
                   embed_dim=hf.get("embed_dim", 256), num_embeddings=hf.get("num_embeddings", 8192),
                   out_channels=hf.get("out_channels", 3), dropout=float(hf.get("dropout", 0.0)), decoder=decoder)

    @classmethod
    def from_taming(cls, yaml_config: dict | str | os.PathLike) -> VQConfig:
        """A taming ``vqgan.yaml`` (path or parsed dict; full file or just ``model.params``) -> VQConfig."""
        if not isinstance(yaml_config, dict):
            import yaml  # only needed for this one file format

            yaml_config = yaml.safe_load(Path(yaml_config).read_text())
        params = yaml_config.get("model", yaml_config)
        params = params.get("params", params)
        if "ddconfig" not in params:
            raise ValueError("taming config has no ddconfig (expected model.params.ddconfig)")
        dd = params["ddconfig"]
        if dd.get("double_z"):
            raise ValueError("ddconfig.double_z=True (a KL-VAE latent) is not a VQ tokenizer")
        missing = [k for k in ("n_embed", "embed_dim") if k not in params]
        if missing:
            raise ValueError(f"taming config lacks {missing}")
        return cls(resolution=dd["resolution"], in_channels=dd.get("in_channels", 3), out_channels=dd.get("out_ch", 3),
                   base_channels=dd["ch"], channel_multiplier=tuple(dd["ch_mult"]),
                   num_res_blocks=dd["num_res_blocks"], attn_resolutions=tuple(dd.get("attn_resolutions") or ()),
                   latent_channels=dd["z_channels"], embed_dim=params["embed_dim"], num_embeddings=params["n_embed"],
                   dropout=float(dd.get("dropout", 0.0)))

    def to_taming(self) -> dict:
        """The ``model.params`` part of a taming ``vqgan.yaml`` for this architecture."""
        check_plain_codebook(self)
        dd = dict(double_z=False, z_channels=self.latent_channels, resolution=self.resolution,
                  in_channels=self.in_channels, out_ch=self.out_channels, ch=self.base_channels,
                  ch_mult=list(self.channel_multiplier), num_res_blocks=self.num_res_blocks,
                  attn_resolutions=list(self.attn_resolutions), dropout=self.dropout)
        return {"model": {"params": {"ddconfig": dd, "n_embed": self.num_embeddings, "embed_dim": self.embed_dim}}}


VQ_PRESETS: dict[str, dict] = {
    # 32x32 -> 8x8 = 64 codes; small enough to train on a CPU within the demo. A Euclidean lookup in 32 dims, not
    # LlamaGen's 8-dim cosine lookup: it reconstructs these small scenes better (figures: benchmarks/RESULTS.md,
    # "Figures moved out of code comments").
    "tiny": dict(resolution=32, base_channels=16, channel_multiplier=(1, 2, 2), num_res_blocks=1,
                 mid_attention=False, latent_channels=32, embed_dim=32, num_embeddings=256, norm_groups=8,
                 ema_decay=0.9, kmeans_init=True, threshold_ema_dead_code=1.0),
    # Chameleon's tokenizer: 512px -> 32x32 = 1024 codes from 8192 x 256 (Meta's vqgan.yaml / HF vq_config).
    "chameleon": dict(resolution=512, base_channels=128, channel_multiplier=(1, 1, 2, 2, 4), num_res_blocks=2,
                      attn_resolutions=(), mid_attention=True, latent_channels=256, embed_dim=256,
                      num_embeddings=8192, norm_groups=32),
}


def check_plain_codebook(cfg: VQConfig) -> None:
    """taming / Chameleon checkpoints hold a plain Euclidean codebook in embed_dim; refuse anything else."""
    if cfg.codebook_dim not in (None, cfg.embed_dim) or cfg.use_cosine_sim:
        raise ValueError("taming/Chameleon checkpoints hold a plain Euclidean codebook in embed_dim; this config "
                         f"uses codebook_dim={cfg.codebook_dim}, use_cosine_sim={cfg.use_cosine_sim}")
