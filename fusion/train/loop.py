"""The pretraining loop: AdamW + warmup/cosine, accumulation, clipping, bf16 autocast, eval, checkpoints, resume.

``Trainer(cfg, model, tokenizer, train_data, eval_data, out_dir).fit()`` resumes from ``out_dir/latest`` when
one exists and continues the loss curve exactly (model, optimizer, schedule, data position and RNG restored).
The same code runs one process on a CPU or many under ``torchrun`` (FSDP2 or DDP, see ``distributed.py``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from fusion.model.transformer import Transformer
from fusion.train import run_folder
from fusion.train.config import RESUMABLE_CHANGES, TrainConfig, lr_factor
from fusion.train.distributed import DistInfo, all_reduce_, current_dist, gather_objects, parallelize
from fusion.train.metrics_log import MetricsLog
from fusion.train.mfu import mfu, peak_flops
from fusion.train.packing import PackedDataset
from fusion.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class Trainer:
    """One training run in ``out_dir``: metrics.jsonl, loss.png and step_NNNNNNN/ checkpoints."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, tokenizer, train_data: PackedDataset,
                 eval_data: PackedDataset | None = None, out_dir: str | os.PathLike = "runs/train",
                 *, info: DistInfo | None = None) -> None:
        if train_data.seq_len != cfg.seq_len:
            raise ValueError(f"train data packs seq_len={train_data.seq_len} but the config says {cfg.seq_len}")
        self.cfg, self.tokenizer, self.train_data, self.eval_data = cfg, tokenizer, train_data, eval_data
        self.out_dir = Path(out_dir)
        self.info = info or current_dist()
        if train_data.world_size != self.info.world_size or train_data.rank != self.info.rank:
            raise ValueError(f"train data is sharded for rank {train_data.rank} of {train_data.world_size}, "
                             f"this process is rank {self.info.rank} of {self.info.world_size}")
        self.device = self.info.device
        self.model = model.to(self.device)
        self.wrapped = parallelize(self.model, self.info, mode=cfg.parallel, compile=cfg.compile,
                                   activation_checkpointing=cfg.activation_checkpointing)
        params = [p for p in self.wrapped.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # norms and biases
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(cfg, s))
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.step, self.bad_steps = 0, 0
        self.history: list[dict] = []
        self.log = MetricsLog(self.out_dir, enabled=self.info.is_main)
        self.peak = peak_flops(self.device)
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        torch.manual_seed(cfg.seed + self.info.rank)  # dropout differs per rank; resume restores it exactly

    # ------------------------------------------------------------ training

    def fit(self) -> list[dict]:
        """Train to ``cfg.steps`` (resuming first if a checkpoint exists); returns this call's step metrics."""
        folder = run_folder.latest_checkpoint(self.out_dir)
        if folder is not None:
            self.resume(folder)
        self.log.truncate(self.step)
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.cfg.progress and self.info.is_main),
                   desc="train", dynamic_ncols=True)
        while self.step < self.cfg.steps:
            m = self.train_step()
            if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps:
                m.update(self.evaluate())
            self.history.append(m)
            self.log.append(m)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", tok_s=f"{m['tokens_per_s']:.0f}")
            if self.step % self.cfg.log_every == 0 and self.info.is_main:
                log.info("step %d  %s", self.step, "  ".join(f"{k}={v:.4g}" for k, v in m.items()
                                                               if isinstance(v, float)))
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                self.save()
        bar.close()
        return self.history

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; a non-finite step is skipped, not applied."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.wrapped.train()
        micro = [{k: v.to(self.device, non_blocking=True) for k, v in next(self.train_data).items()}
                 for _ in range(cfg.grad_accum)]
        # Weight each micro-batch by its share of the global target count, so the step's gradient is the
        # token mean over all ranks and micro-batches (what one big batch gives), whatever the padding.
        counts = torch.stack([(b["targets"] != IGNORE_INDEX).sum() for b in micro]).double()
        total = all_reduce_(counts.sum().clone()).clamp(min=1)
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        for b, n in zip(micro, counts, strict=True):
            with self.autocast:
                out = self.wrapped(b["ids"], b["targets"], b["doc_ids"])
            (out.loss * (n * self.info.world_size / total).float()).backward()
            sums += self._sums(out, n / total)
        all_reduce_(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        loss = float(sums[0])
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            log.warning("step %d: non-finite loss %s / grad norm %s, update skipped (%d in a row, limit %d)",
                        self.step + 1, loss, grad_norm, self.bad_steps, cfg.max_bad_steps)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        if self.bad_steps >= cfg.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                                   f"(last at step {self.step}); stopping. The last good checkpoint is "
                                   f"{run_folder.latest_checkpoint(self.out_dir)}")
        dt = time.perf_counter() - t0
        tokens = cfg.grad_accum * cfg.batch_size * cfg.seq_len * self.info.world_size
        n_text, n_image = float(sums[5]), float(sums[6])
        m = {"step": self.step, "loss": loss, "ce": float(sums[1]), "z_loss": float(sums[2]),
             "ce_text": float(sums[3]) / max(n_text, 1), "ce_image": float(sums[4]) / max(n_image, 1),
             "lr": lr, "grad_norm": grad_norm, "skipped": not finite, "tokens_per_s": tokens / dt}
        util = mfu(tokens / dt, self.flops_per_token, self.peak)
        if util is not None:
            m["mfu"] = util
        return m

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Token-mean CE (overall, text, image) over up to ``eval_batches`` held-out batches."""
        if self.eval_data is None:
            return {}
        self.wrapped.eval()
        sums = torch.zeros(8, dtype=torch.float64, device=self.device)  # _sums weighted by count, then count
        for i, b in enumerate(self.eval_data.epoch_batches(0)):
            if i == self.cfg.eval_batches:
                break
            b = {k: v.to(self.device) for k, v in b.items()}
            with self.autocast:
                out = self.wrapped(b["ids"], b["targets"], b["doc_ids"])
            n = (b["targets"] != IGNORE_INDEX).sum().double()
            sums += torch.cat([self._sums(out, n), n[None]])
        all_reduce_(sums)
        n, n_text, n_image = float(sums[7]), float(sums[5]), float(sums[6])
        return {"eval_ce": float(sums[1]) / max(n, 1), "eval_ce_text": float(sums[3]) / max(n_text, 1),
                "eval_ce_image": float(sums[4]) / max(n_image, 1)}

    @staticmethod
    def _sums(out, w: torch.Tensor) -> torch.Tensor:
        """[loss*w, ce*w, z*w, ce_text*n_text, ce_image*n_image, n_text, n_image] in fp64 for reduction."""
        return torch.stack([out.loss.detach().double() * w, out.ce.detach().double() * w,
                            out.z_loss.detach().double() * w, out.ce_text.detach().double() * out.n_text,
                            out.ce_image.detach().double() * out.n_image, out.n_text.double(),
                            out.n_image.double()])

    # ------------------------------------------------------------ bookkeeping

    def save(self) -> Path | None:
        """Write ``out_dir/step_NNNNNNN/`` (rank 0 writes; every rank takes part in gathering)."""
        model_sd, optim_sd = self._full_state()
        bad = [k for k, t in model_sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        bad = sum(gather_objects(bad), [])  # only rank 0 holds the full state; every rank must stop alike
        if bad:
            raise TrainingDiverged(f"refusing to save a model with non-finite weights ({bad[:3]}); the last good "
                                   f"checkpoint is {run_folder.latest_checkpoint(self.out_dir)}")
        rngs = gather_objects(run_folder.rng_state())
        folder = None
        if self.info.is_main:
            state = {"step": self.step, "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                     "world_size": self.info.world_size, "data": self.train_data.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rngs,
                     "metrics": self.history[-1] if self.history else {}}
            folder = run_folder.save_training_checkpoint(
                self.out_dir, self.step, write_model=self._model_writer(model_sd), optimizer_state=optim_sd,
                trainer_state=state, keep_last=self.cfg.keep_last)
            self.log.plot()
        if dist.is_initialized():
            dist.barrier()
        return folder

    def _full_state(self) -> tuple[dict, dict]:
        """Unsharded model and optimizer state (on rank 0's CPU when distributed)."""
        if not self.info.enabled:
            return self.model.state_dict(), self.optimizer.state_dict()
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=opts),
                get_optimizer_state_dict(self.wrapped, self.optimizer, options=opts))

    def _model_writer(self, model_sd: dict):
        """A callback writing model + tokenizers into a folder, from the (gathered) state dict."""
        def write(folder: Path) -> None:
            model = self.model
            if self.info.enabled:  # the live model is sharded: save an unsharded CPU twin sharing model_sd
                with torch.device("meta"):
                    model = type(self.model)(self.model.cfg)
                model.load_weights(model_sd)
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        return write

    def resume(self, folder: str | os.PathLike) -> None:
        """Restore everything from a step folder; refuses when the config differs (naming the fields)."""
        folder = Path(folder)
        state = run_folder.load_trainer_state(folder)
        diff = run_folder.config_diff(state["config"], self.cfg.to_dict(), ignore=RESUMABLE_CHANGES)
        diff += ["model." + d for d in run_folder.config_diff(state["model_config"], self.model.cfg.to_dict())]
        if state["world_size"] != self.info.world_size:
            diff.append(f"world_size: {state['world_size']} -> {self.info.world_size}")
        if diff:
            raise ValueError(f"cannot resume from {folder}: the configuration changed: " + "; ".join(diff))
        weights = Transformer.from_pretrained(folder).state_dict()
        optim = run_folder.load_optimizer_state(folder)
        if self.info.enabled:
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.wrapped, self.optimizer, optim, options=opts)
        else:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_data.load_state_dict(state["data"])
        run_folder.set_rng_state(state["rng"][self.info.rank])
        self.step, self.bad_steps = int(state["step"]), 0
        log.info("resumed from %s at step %d", folder, self.step)
