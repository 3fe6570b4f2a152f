"""How good a VQ tokenizer is: PSNR, SSIM, codebook usage and perplexity, the oracle's reading, a PNG grid."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from fusion.data.synthetic import read_image
from fusion.files import atomic_path
from fusion.tokenizers.image import ImageTokenizer, to_pil
from fusion.train.vq.data import ImageSet


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR in dB for pixels in [-1, 1] (peak = 1 on the [0, 1] scale)."""
    mse = (((x - y) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004) with a uniform window, on [0, 1] pixels, averaged over channels."""
    x, y = (x + 1) / 2, (y + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    pool = lambda t: F.avg_pool2d(t, window, stride=1)
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def code_stats(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code histogram)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())


def evaluate(tokenizer: ImageTokenizer, held: ImageSet) -> dict[str, float]:
    """Reconstruction and codebook metrics on held-out images (+ oracle accuracy for synthetic scenes)."""
    x = held.batch(torch.arange(len(held.pixels)))
    codes = tokenizer.encode(x)
    recon = tokenizer.decode(codes)
    usage, perplexity = code_stats(codes, tokenizer.codebook_size)
    out = dict(psnr=psnr(recon, x), ssim=ssim(recon, x), usage=usage, perplexity=perplexity)
    if held.scenes is not None:
        readings = [read_image(im) for im in to_pil(recon)]
        out["oracle_accuracy"] = sum(r is not None and (r.colour, r.shape) == (s.colour, s.shape)
                                     for r, s in zip(readings, held.scenes, strict=True)) / len(held.scenes)
    return out


def save_grid(path: str | os.PathLike, originals: torch.Tensor, recons: torch.Tensor) -> None:
    """A PNG with originals on the top row and their reconstructions below (atomic write)."""
    images = to_pil(torch.cat([originals, recons]))
    n, (w, h) = len(originals), images[0].size
    grid = PILImage.new("RGB", (n * w, 2 * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % n) * w, (i // n) * h))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
