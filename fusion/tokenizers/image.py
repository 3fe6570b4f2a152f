"""The VQ image tokenizer: a VQGAN conv encoder/decoder around a vector-quantize-pytorch codebook.

Module and parameter names follow taming-transformers' VQGAN (``encoder.down.0.block.0.norm1.weight``,
``quant_conv``, ``post_quant_conv``), which HF's ``ChameleonVQVAE`` keeps too, so Chameleon's tokenizer loads
with one rename: the codebook ``quantize.embedding.weight`` <-> ``quantize._codebook.embed``. An image of
``resolution`` pixels becomes a ``grid`` of codes, ``tokens_per_image`` of them, read in raster order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from fusion.images import to_rgb
from fusion.io import load_tensors, read_json, save_tensors, write_json

WEIGHTS_FILE, CONFIG_FILE = "vq.safetensors", "vq.json"
HF_WEIGHTS_FILE, HF_CONFIG_FILE = "hf_vqmodel.safetensors", "hf_vq_config.json"  # written by model/convert.py
HF_PREFIX = "model.vqmodel."
TAMING_CODEBOOK, OUR_CODEBOOK = "quantize.embedding.weight", "quantize._codebook.embed"
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_RANGE_SLACK = 1e-3  # pixel tensors may overshoot [-1, 1] by float rounding, not more


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
        if name not in PRESETS:
            raise ValueError(f"unknown VQ preset {name!r}; presets are {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VQConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown VQConfig keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict) -> VQConfig:
        """HF ``ChameleonVQVAEConfig`` (as a dict) -> VQConfig; HF has no decoder weights."""
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
                   dropout=float(hf.get("dropout", 0.0)), decoder=False)

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
        _check_plain_codebook(self)
        dd = dict(double_z=False, z_channels=self.latent_channels, resolution=self.resolution,
                  in_channels=self.in_channels, out_ch=self.out_channels, ch=self.base_channels,
                  ch_mult=list(self.channel_multiplier), num_res_blocks=self.num_res_blocks,
                  attn_resolutions=list(self.attn_resolutions), dropout=self.dropout)
        return {"model": {"params": {"ddconfig": dd, "n_embed": self.num_embeddings, "embed_dim": self.embed_dim}}}


PRESETS: dict[str, VQConfig] = {
    # 32x32 -> 8x8 = 64 codes; small enough to train in a minute or two on a 2-core CPU.
    # A Euclidean lookup in 32 dims beat LlamaGen's 8-dim cosine lookup here (30 vs 21 dB PSNR after 600 steps).
    "tiny": VQConfig(resolution=32, base_channels=16, channel_multiplier=(1, 2, 2), num_res_blocks=1,
                     mid_attention=False, latent_channels=32, embed_dim=32, num_embeddings=256, norm_groups=8,
                     ema_decay=0.9, kmeans_init=True, threshold_ema_dead_code=1.0),
    # Chameleon's tokenizer: 512px -> 32x32 = 1024 codes from 8192 x 256 (Meta's vqgan.yaml / HF vq_config).
    "chameleon": VQConfig(resolution=512, base_channels=128, channel_multiplier=(1, 1, 2, 2, 4), num_res_blocks=2,
                          attn_resolutions=(), mid_attention=True, latent_channels=256, embed_dim=256,
                          num_embeddings=8192, norm_groups=32),
}


# ------------------------------------------------------------------------------------------------- blocks


def _norm(cfg: VQConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, with a 1x1 shortcut when the width changes (taming ``ResnetBlock``)."""

    def __init__(self, cfg: VQConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(cfg, out_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections (taming ``AttnBlock``)."""

    def __init__(self, cfg: VQConfig, channels: int) -> None:
        super().__init__()
        self.norm = _norm(cfg, channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (t(y).reshape(b, 1, c, h * w).transpose(-1, -2) for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom only (taming's asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(cfg: VQConfig, channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(cfg, channels, channels)
    mid.attn_1 = AttnBlock(cfg, channels) if cfg.mid_attention else nn.Identity()
    mid.block_2 = ResnetBlock(cfg, channels, channels)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Pixels [B, in, R, R] -> latents [B, z, R/f, R/f] (taming ``Encoder`` / HF ``ChameleonVQVAEEncoder``)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = cfg.resolution, ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cfg, block_in, ch * m))
                block_in = ch * m
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cfg, block_in))
            if i != len(mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(cfg, block_in)
        self.norm_out = _norm(cfg, block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents [B, z, R/f, R/f] -> pixels [B, out, R, R]; the encoder mirrored (taming ``Decoder``)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_channels, cfg.channel_multiplier
        block_in = ch * mult[-1]
        res = cfg.grid[0]
        self.conv_in = nn.Conv2d(cfg.latent_channels, block_in, 3, padding=1)
        self.mid = _mid(cfg, block_in)
        up: list[nn.Module] = []
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cfg, block_in, ch * mult[i]))
                block_in = ch * mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cfg, block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)  # indexed by resolution level like the encoder, as taming stores it
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(cfg, block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------- tokenizer


class ImageTokenizer(nn.Module):
    """PIL images <-> code grids. ``encode``/``decode`` are inference (no grad, eval); ``forward`` trains."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantize(
            dim=cfg.embed_dim, codebook_size=cfg.num_embeddings, codebook_dim=cfg.codebook_dim,
            decay=cfg.ema_decay, kmeans_init=cfg.kmeans_init, use_cosine_sim=cfg.use_cosine_sim,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code, commitment_weight=cfg.commitment_weight,
            sync_codebook=False)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg) if cfg.decoder else None

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def tokens_per_image(self) -> int:
        return self.cfg.tokens_per_image

    @property
    def codebook_size(self) -> int:
        return self.cfg.num_embeddings

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    def _param(self) -> torch.Tensor:
        return self.quant_conv.weight

    # ---------------------------------------------------------------- pixels

    def preprocess(self, images: Sequence[PILImage.Image]) -> torch.Tensor:
        """PIL images of any mode/size -> [B, 3, R, R] in [-1, 1]: RGB, shortest side to R (bicubic), centre crop."""
        r = self.resolution
        out = np.empty((len(images), r, r, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            if not isinstance(image, PILImage.Image):
                raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL image")
            out[i] = np.asarray(_square(to_rgb(image), r))
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def _pixels(self, images: Sequence[PILImage.Image] | torch.Tensor) -> torch.Tensor:
        """Validated [B, 3, R, R] float pixels in [-1, 1], from PIL images or a tensor."""
        if not isinstance(images, torch.Tensor):
            return self.preprocess(list(images))
        r = self.resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.cfg.in_channels, r, r):
            raise ValueError(f"pixel tensor must be [B, {self.cfg.in_channels}, {r}, {r}], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"pixel tensor must be floating point in [-1, 1], got {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("pixel tensor contains NaN or inf")
        if images.numel() and images.abs().max() > 1 + _RANGE_SLACK:
            raise ValueError(f"pixel values must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]")
        return images

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate a [B, h*w] integer code tensor; returns it as long."""
        if not isinstance(codes, torch.Tensor) or codes.dtype not in _INT_DTYPES:
            raise ValueError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.ndim != 2 or codes.shape[1] != self.tokens_per_image:
            raise ValueError(f"codes must be [B, {self.tokens_per_image}], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    # ---------------------------------------------------------------- codes

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> pre-quantisation vectors [B, h*w, embed_dim]."""
        z = self.quant_conv(self.encoder(x))
        return z.flatten(2).transpose(1, 2)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Vectors [..., embed_dim] -> code indices; the same arithmetic as HF Chameleon (ties: lowest index)."""
        q = self.quantize
        x = q.project_in(z).float()
        embed = q.codebook.float()
        if q.use_cosine_sim:
            return (F.normalize(x, dim=-1) @ embed.T).argmax(-1)
        flat = x.reshape(-1, x.shape[-1])
        dist = (flat**2).sum(1, keepdim=True) + (embed**2).sum(1) - 2 * torch.einsum("bd,dn->bn", flat, embed.T)
        return dist.argmin(1).view(x.shape[:-1])

    def encode(self, images: Sequence[PILImage.Image] | torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Images (PIL, any mode/size) or pixels [B, 3, R, R] in [-1, 1] -> codes LongTensor[B, h*w] on CPU."""
        x = self._pixels(images)
        if len(x) == 0:
            return torch.empty(0, self.tokens_per_image, dtype=torch.long)
        p = self._param()
        with _inference(self):
            return torch.cat([self.nearest_codes(self._latents(c.to(p.device, p.dtype))).cpu()
                              for c in x.split(batch_size)])

    def _decode_latents(self, quant: torch.Tensor) -> torch.Tensor:
        """Codebook vectors [B, h*w, embed_dim] -> pixels [B, 3, R, R] (unclamped)."""
        if self.decoder is None:
            raise RuntimeError("this image tokenizer has no decoder (HF Chameleon ships the VQ encoder only)")
        h, w = self.grid
        z = quant.transpose(1, 2).reshape(len(quant), -1, h, w)
        return self.decoder(self.post_quant_conv(z))

    def decode(self, codes: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Codes [B, h*w] -> pixels FloatTensor[B, 3, R, R] in [-1, 1] on CPU."""
        codes = self.check_codes(codes)
        r = self.resolution
        if len(codes) == 0:
            return torch.empty(0, self.cfg.out_channels, r, r)
        p = self._param()
        with _inference(self):
            return torch.cat([self._decode_latents(self.quantize.get_output_from_indices(c.to(p.device)).to(p.dtype))
                              .float().clamp(-1, 1).cpu() for c in codes.split(batch_size)])

    def decode_images(self, codes: torch.Tensor) -> list[PILImage.Image]:
        """Codes [B, h*w] -> RGB PIL images."""
        return to_pil(self.decode(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step: pixels -> (reconstruction, indices [B, h*w], commitment loss)."""
        quant, indices, commit = self.quantize(self._latents(x))
        return self._decode_latents(quant), indices, commit

    # ---------------------------------------------------------------- files

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``vq.safetensors`` then ``vq.json`` (each atomically)."""
        directory = Path(directory)
        save_tensors(directory / WEIGHTS_FILE, self.state_dict())
        write_json(directory / CONFIG_FILE, self.cfg.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> ImageTokenizer:
        """Read a folder written by ``save_pretrained``, or one ``fusion convert`` made from HF Chameleon."""
        directory = Path(directory)
        if (directory / CONFIG_FILE).is_file():
            model = cls(VQConfig.from_dict(read_json(directory / CONFIG_FILE)))
            model.load_state_dict(load_tensors(directory / WEIGHTS_FILE))
        elif (directory / HF_CONFIG_FILE).is_file():
            model = cls.from_hf_chameleon(load_tensors(directory / HF_WEIGHTS_FILE),
                                          read_json(directory / HF_CONFIG_FILE))
        else:
            raise FileNotFoundError(f"{directory}: neither {CONFIG_FILE} nor {HF_CONFIG_FILE} found")
        return model.to(device or "cpu").eval()

    @classmethod
    def from_hf_chameleon(cls, state_dict: dict[str, torch.Tensor], hf_vq_config: dict) -> ImageTokenizer:
        """HF ``ChameleonVQVAE`` weights (its own state dict or ``model.vqmodel.*``) -> an encoder-only tokenizer."""
        state = {k.removeprefix(HF_PREFIX): v for k, v in state_dict.items()}
        if any(k.startswith("model.") for k in state_dict) and not any(k.startswith(HF_PREFIX) for k in state_dict):
            raise ValueError(f"state dict has no {HF_PREFIX}* tensors")
        state = {k: v for k, v in state.items() if not k.startswith(("model.", "lm_head."))}
        return cls._load_taming_named(VQConfig.from_hf(hf_vq_config), state)

    @classmethod
    def from_taming(cls, ckpt_state_dict: dict, yaml_config: dict | str | os.PathLike) -> ImageTokenizer:
        """Meta's / taming's ``vqgan.ckpt`` state dict (or the ckpt dict holding it) and ``vqgan.yaml``."""
        state = ckpt_state_dict.get("state_dict", ckpt_state_dict)
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # the GAN/LPIPS training losses
        return cls._load_taming_named(VQConfig.from_taming(yaml_config), state)

    @classmethod
    def _load_taming_named(cls, cfg: VQConfig, state: dict[str, torch.Tensor]) -> ImageTokenizer:
        model = cls(cfg)
        ours = from_taming_state(state)
        missing, unexpected = model.load_state_dict(ours, strict=False)
        missing = [k for k in missing if not k.startswith("quantize._codebook.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
        return model.eval()

    def taming_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights under taming / Meta ``vqgan.ckpt`` names."""
        _check_plain_codebook(self.cfg)
        return to_taming_state(self.state_dict())


# ------------------------------------------------------------------------------------------------- naming


def _check_plain_codebook(cfg: VQConfig) -> None:
    if cfg.codebook_dim not in (None, cfg.embed_dim) or cfg.use_cosine_sim:
        raise ValueError("taming/Chameleon checkpoints hold a plain Euclidean codebook in embed_dim; this config "
                         f"uses codebook_dim={cfg.codebook_dim}, use_cosine_sim={cfg.use_cosine_sim}")


def to_taming_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> taming names: the codebook becomes ``quantize.embedding.weight`` [K, D]; EMA stats go."""
    out = {k: v for k, v in state.items() if not k.startswith("quantize.")}
    out[TAMING_CODEBOOK] = state[OUR_CODEBOOK][0]
    return out


def from_taming_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Taming / HF names -> ours: the codebook gets a head axis, and EMA stats start from it."""
    if TAMING_CODEBOOK not in state:
        raise ValueError(f"checkpoint has no {TAMING_CODEBOOK}")
    out = {k: v for k, v in state.items() if k != TAMING_CODEBOOK}
    embed = state[TAMING_CODEBOOK].float()[None]
    out[OUR_CODEBOOK] = embed
    out["quantize._codebook.embed_avg"] = embed.clone()
    out["quantize._codebook.cluster_size"] = torch.ones(embed.shape[:2])
    out["quantize._codebook.initted"] = torch.tensor(True)
    return out


# ------------------------------------------------------------------------------------------------ helpers


def _square(image: PILImage.Image, r: int) -> PILImage.Image:
    """Resize the shortest side to ``r`` (bicubic, antialiased when shrinking) and centre-crop to r x r."""
    w, h = image.size
    if (w, h) == (r, r):
        return image
    s = r / min(w, h)
    nw, nh = max(r, round(w * s)), max(r, round(h * s))
    image = image.resize((nw, nh), PILImage.BICUBIC)
    left, top = (nw - r) // 2, (nh - r) // 2
    return image.crop((left, top, left + r, top + r))


def to_pil(pixels: torch.Tensor) -> list[PILImage.Image]:
    """[B, 3, R, R] in [-1, 1] -> RGB PIL images."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [PILImage.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in arr]


@contextlib.contextmanager
def _inference(module: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block, then the previous mode back."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


__all__ = ["ImageTokenizer", "VQConfig", "PRESETS", "to_pil", "to_taming_state", "from_taming_state",
           "Encoder", "Decoder"]
