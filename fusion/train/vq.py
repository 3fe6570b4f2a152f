"""Training the VQ image tokenizer: reconstruction + commitment losses, an optional PatchGAN, metrics.

Images come from an iterable of PIL images, a folder, a HF ``datasets`` image column or the synthetic world;
they are preprocessed once into a uint8 tensor (fine for the small sets this trains on; a streaming loader is
future work). Every ``eval_every`` steps PSNR, SSIM, codebook usage and perplexity on held-out images (and,
for the synthetic world, the oracle's colour+shape accuracy) are appended to ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn
from tqdm import tqdm

from fusion.data.synthetic import SyntheticWorld, read_image, render
from fusion.images import open_image
from fusion.io import atomic_path
from fusion.tokenizers.image import ImageTokenizer, VQConfig, to_pil

log = logging.getLogger(__name__)

SYNTHETIC_EVAL_OFFSET = 1_000_000  # held-out synthetic scenes come from a seed stream training never reads
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class VQTrainConfig:
    """Optimiser, losses, schedule and bookkeeping for ``train_vq``."""

    vq: VQConfig = field(default_factory=lambda: VQConfig.preset("tiny"))
    steps: int = 800                    # ~75 s on 2 quiet CPU cores for tiny; 600 meets the targets narrowly
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
        """``tiny``: the synthetic world on a CPU; ``chameleon``: 512px with the discriminator from 20k steps."""
        presets = {
            "tiny": cls(),
            "chameleon": cls(vq=VQConfig.preset("chameleon"), steps=100_000, batch_size=8, lr=1e-4, warmup=1000,
                             weight_decay=0.01, betas=(0.5, 0.9), disc_start=20_000, disc_channels=64,
                             eval_every=1000, save_every=5000, eval_images=64),
        }
        if name not in presets:
            raise ValueError(f"unknown VQ training preset {name!r}; presets are {sorted(presets)}")
        return replace(presets[name], **overrides)


# ----------------------------------------------------------------------------------------------- sources


def load_images(source, limit: int | None = None, *, column: str | None = None) -> list[PILImage.Image]:
    """PIL images from an iterable of PIL images, a folder of image files, or a HF ``datasets`` Dataset."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"image source {folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        return [open_image(p) for p in paths[:limit]]
    if hasattr(source, "features") and hasattr(source, "select"):  # a HF datasets.Dataset
        source = source[_image_column(source, column)]
    images = []
    for i, image in enumerate(source):
        if limit is not None and i >= limit:
            break
        if not isinstance(image, PILImage.Image):
            raise TypeError(f"item {i} of the image source is a {type(image).__name__}, expected a PIL image")
        images.append(image)
    if not images:
        raise ValueError("the image source is empty")
    return images


def _image_column(dataset, column: str | None) -> str:
    from datasets import Image as ImageFeature

    if column is not None:
        if column not in dataset.features:
            raise ValueError(f"dataset has no column {column!r}; columns are {list(dataset.features)}")
        return column
    found = [name for name, feat in dataset.features.items() if isinstance(feat, ImageFeature)]
    if len(found) != 1:
        raise ValueError(f"cannot pick the image column among {found or list(dataset.features)}; pass column=")
    return found[0]


@dataclass
class ImageSet:
    """Preprocessed pixels (uint8, [N, 3, R, R]) and, for the synthetic world, each image's scene."""

    pixels: torch.Tensor
    scenes: list | None = None

    @classmethod
    def build(cls, tokenizer: ImageTokenizer, images: list[PILImage.Image], scenes: list | None = None) -> ImageSet:
        x = torch.cat([tokenizer.preprocess(images[i:i + 256]) for i in range(0, len(images), 256)])
        return cls(((x + 1) * 127.5).round().to(torch.uint8), scenes)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.pixels[idx].float() / 127.5 - 1.0


def build_sets(cfg: VQTrainConfig, tokenizer: ImageTokenizer, source) -> tuple[ImageSet, ImageSet]:
    """(train, held-out) image sets from any supported source."""
    if isinstance(source, str) and source.startswith("synthetic"):
        source = SyntheticWorld(seed=int(source.partition(":")[2] or cfg.seed))
    if isinstance(source, SyntheticWorld):
        r = tokenizer.resolution
        train = source.scenes(cfg.train_images)
        held = source.scenes(cfg.eval_images, seed_offset=SYNTHETIC_EVAL_OFFSET)
        return (ImageSet.build(tokenizer, [render(s, r) for s in train], train),
                ImageSet.build(tokenizer, [render(s, r) for s in held], held))
    images = load_images(source)
    if len(images) < 2:
        raise ValueError("need at least 2 images (one to train on, one held out)")
    n_eval = min(cfg.eval_images, max(1, len(images) // 10))
    random.Random(cfg.seed).shuffle(images)
    return ImageSet.build(tokenizer, images[n_eval:]), ImageSet.build(tokenizer, images[:n_eval])


# ------------------------------------------------------------------------------------------------ metrics


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


# ---------------------------------------------------------------------------------------- discriminator


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


# -------------------------------------------------------------------------------------------------- loop


def _lr_at(cfg: VQTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_vq(cfg: VQTrainConfig, images, out_dir: str | os.PathLike, *, tokenizer: ImageTokenizer | None = None,
             device: str | torch.device = "cpu") -> tuple[ImageTokenizer, dict[str, float]]:
    """Train (or fine-tune ``tokenizer``) on ``images``; write checkpoint, metrics.jsonl and a PNG grid.

    ``images``: a SyntheticWorld, ``"synthetic[:seed]"``, a folder, a HF Dataset or an iterable of PIL images.
    Returns the trained tokenizer (eval mode) and the final held-out metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = (tokenizer or ImageTokenizer(cfg.vq)).to(device)
    train_set, held = build_sets(cfg, model, images)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    before = evaluate(model, held)
    _append(metrics_path, {"step": 0, **before})

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    disc = PatchDiscriminator(cfg.disc_channels).to(device) if cfg.disc_start is not None else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=cfg.betas) if disc is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    start, bar = time.perf_counter(), tqdm(range(cfg.steps), desc="train-vq", disable=not cfg.progress)
    last: dict[str, float] = dict(before)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        x = train_set.batch(torch.randint(len(train_set.pixels), (cfg.batch_size,), generator=gen)).to(device)
        recon, _, commit = model(x)
        rec = cfg.l1_weight * (recon - x).abs().mean() + cfg.l2_weight * ((recon - x) ** 2).mean()
        loss = rec + commit
        use_disc = disc is not None and step >= cfg.disc_start
        if use_disc:
            loss = loss - cfg.disc_weight * disc(recon).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if use_disc:
            d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(model, held)
            model.train()
            record = {"step": done, "loss": loss.item(), "rec_loss": rec.item(), "commit_loss": commit.item(),
                      "seconds": round(time.perf_counter() - start, 1), **last}
            _append(metrics_path, record)
            log.info("train-vq %s", json.dumps(record))
            if last["usage"] < cfg.usage_warn:
                log.warning("codebook collapse: %.0f%% of %d codes used on held-out images (< %.0f%%); %s",
                            100 * last["usage"], model.codebook_size, 100 * cfg.usage_warn,
                            f"codes with EMA usage < {cfg.vq.threshold_ema_dead_code} are re-seeded from the batch"
                            if cfg.vq.threshold_ema_dead_code > 0 else "set threshold_ema_dead_code to re-seed them")
        if cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps:
            model.save_pretrained(out)
    model.eval()
    model.save_pretrained(out)
    n = min(8, len(held.pixels))
    originals = held.batch(torch.arange(n))
    save_grid(out / "reconstructions.png", originals, model.decode(model.encode(originals)))
    last = {**last, "seconds": round(time.perf_counter() - start, 1),
            **{f"initial_{k}": v for k, v in before.items()}}
    return model, last


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion train-vq", description="train the VQ image tokenizer")
    p.add_argument("--images", default="synthetic",
                   help="'synthetic[:seed]' (default), a folder of image files, or a saved HF dataset folder")
    p.add_argument("--image-column", default=None, help="image column of a HF dataset (default: the only one)")
    p.add_argument("--out", default="vq_out", help="output folder (vq.safetensors, vq.json, metrics.jsonl, PNG)")
    p.add_argument("--preset", default="tiny", help="training preset: tiny | chameleon")
    p.add_argument("--init", default=None, help="fine-tune the tokenizer in this folder instead of a fresh one")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--disc-start", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                        disc_start=args.disc_start, seed=args.seed).items() if v is not None}
    cfg = VQTrainConfig.preset(args.preset, **overrides)
    source = args.images
    if not source.startswith("synthetic") and (Path(source) / "dataset_info.json").is_file():
        from datasets import load_from_disk

        dataset = load_from_disk(source)
        source = dataset[_image_column(dataset, args.image_column)]
    tokenizer = ImageTokenizer.from_pretrained(args.init) if args.init else None
    _, metrics = train_vq(cfg, source, args.out, tokenizer=tokenizer, device=args.device)
    print(json.dumps(metrics, indent=2))
    return 0


__all__ = ["VQTrainConfig", "train_vq", "evaluate", "load_images", "build_parser", "main", "psnr", "ssim",
           "code_stats", "PatchDiscriminator"]
