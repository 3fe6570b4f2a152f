"""VQGAN training losses: pixel reconstruction, and the PatchGAN discriminator with its hinge loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Sequential):
    """PatchGAN (Isola et al. 2017) as in taming: stride-2 4x4 convs, one real/fake logit per patch."""

    def __init__(self, channels: int = 64, n_layers: int = 3, in_channels: int = 3) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers + 1):
            nxt = channels * min(2**i, 8)
            layers += [nn.Conv2d(c, nxt, 4, 2 if i < n_layers else 1, 1), nn.GroupNorm(min(32, nxt // 4), nxt),
                       nn.LeakyReLU(0.2)]
            c = nxt
        super().__init__(*layers, nn.Conv2d(c, 1, 4, 1, 1))


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, l1_weight: float, l2_weight: float) -> torch.Tensor:
    """Weighted L1 + L2 pixel loss."""
    return l1_weight * (recon - x).abs().mean() + l2_weight * ((recon - x) ** 2).mean()
