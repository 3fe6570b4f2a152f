"""The VQ tokenizer's training loop: reconstruction + commitment losses, an optional PatchGAN, held-out metrics.

Every ``eval_every`` steps PSNR, SSIM, codebook usage and perplexity on held-out images (and, for the synthetic
world, the oracle's colour+shape accuracy) are appended to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fusion.tokenizers.image import ImageTokenizer
from fusion.train.metrics_log import MetricsLog
from fusion.train.schedule import warmup_cosine
from fusion.train.vq.config import VQTrainConfig
from fusion.train.vq.data import ImageSet, build_sets
from fusion.train.vq.losses import PatchDiscriminator, hinge_d_loss, reconstruction_loss
from fusion.train.vq.metrics import evaluate, save_grid

log = logging.getLogger(__name__)


class _Discriminator:
    """The PatchGAN and its optimizer, joining at ``cfg.disc_start``."""

    def __init__(self, cfg: VQTrainConfig, device) -> None:
        self.cfg = cfg
        self.net = PatchDiscriminator(cfg.disc_channels).to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, betas=cfg.betas)

    def active(self, step: int) -> bool:
        return step >= self.cfg.disc_start

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        loss = hinge_d_loss(self.net(real), self.net(fake.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _warn_on_collapse(cfg: VQTrainConfig, model: ImageTokenizer, usage: float) -> None:
    if usage < cfg.usage_warn:
        log.warning("codebook collapse: %.0f%% of %d codes used on held-out images (< %.0f%%); %s",
                    100 * usage, model.codebook_size, 100 * cfg.usage_warn,
                    f"codes with EMA usage < {cfg.vq.threshold_ema_dead_code} are re-seeded from the batch"
                    if cfg.vq.threshold_ema_dead_code > 0 else "set threshold_ema_dead_code to re-seed them")


def _finish(model: ImageTokenizer, held: ImageSet, out: Path) -> None:
    """Save the tokenizer and a grid of held-out originals over their reconstructions."""
    model.eval()
    model.save_pretrained(out)
    originals = held.batch(torch.arange(min(8, len(held.pixels))))
    save_grid(out / "reconstructions.png", originals, model.decode(model.encode(originals)))


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
    metrics = MetricsLog(out)
    metrics.path.unlink(missing_ok=True)
    before = last = evaluate(model, held)
    metrics.append({"step": 0, **before})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio))
    disc = _Discriminator(cfg, device) if cfg.disc_start is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    start, bar = time.perf_counter(), tqdm(range(cfg.steps), desc="train-vq", disable=not cfg.progress)
    model.train()
    for step in bar:
        x = train_set.batch(torch.randint(len(train_set.pixels), (cfg.batch_size,), generator=gen)).to(device)
        recon, _, commit = model(x)
        rec = reconstruction_loss(recon, x, cfg.l1_weight, cfg.l2_weight)
        loss = rec + commit - (cfg.disc_weight * disc.net(recon).mean() if disc and disc.active(step) else 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if disc and disc.active(step):
            disc.update(x, recon)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(model, held)
            model.train()
            record = {"step": done, "loss": loss.item(), "rec_loss": rec.item(), "commit_loss": commit.item(),
                      "seconds": round(time.perf_counter() - start, 1), **last}
            metrics.append(record)
            log.info("train-vq %s", json.dumps(record))
            _warn_on_collapse(cfg, model, last["usage"])
        if cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps:
            model.save_pretrained(out)
    _finish(model, held, out)
    return model, {**last, "seconds": round(time.perf_counter() - start, 1),
                   **{f"initial_{k}": v for k, v in before.items()}}
