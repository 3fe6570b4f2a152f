"""The VQGAN's convolutional encoder and decoder (taming-transformers' ``Encoder`` / ``Decoder``).

Module and parameter names follow taming's VQGAN (``encoder.down.0.block.0.norm1.weight``), which HF's
``ChameleonVQVAE`` keeps too, so Meta's and HF's weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.tokenizers.vq_config import VQConfig


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

