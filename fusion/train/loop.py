"""The pretraining loop: AdamW + warmup/cosine, accumulation, clipping, bf16 autocast, eval, checkpoints, resume.

``Trainer(cfg, model, tokenizer, train_data, eval_data, out_dir).fit()`` resumes from the newest complete
checkpoint in ``out_dir`` and continues the loss curve: model and optimizer come back through DCP, the LR is a
function of the step, the data position is a global batch index, and every random draw is seeded from the
step, the micro-batch and the global index of the rank's first sample, never from the rank. So a run resumes
exactly on the same number of processes and continues the same curve on another (up to float summation order).
The same code runs one process on a CPU or many under ``torchrun`` (FSDP2 or DDP, see ``distributed.py``);
``checkpointer.py`` decides which ranks do what when saving and resuming, ``step_totals.py`` names what a step
adds up over the ranks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fusion.train.checkpointer import Checkpointer, TrainingDiverged
from fusion.train.config import RESUMABLE_CHANGES, TrainConfig, lr_factor
from fusion.train.distributed import (
    DistInfo,
    all_reduce_,
    compile_blocks,
    current_dist,
    gather_objects,
    parallelize,
    together,
)
from fusion.train.metrics_log import MetricsLog
from fusion.train.mfu import mfu, peak_flops
from fusion.train.packing import PackedDataset
from fusion.train.precision import recorded_dtype, resolve_dtype
from fusion.train.run_folder import config_diff
from fusion.train.step_totals import StepTotals, eval_metrics, train_metrics
from fusion.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)


def micro_seed(seed: int, step: int, micro: int, first_sample: int) -> int:
    """The torch seed of one micro-batch on one rank (dropout): keyed by the step, the micro-batch and the global
    index of the rank's first sample, so no draw depends on the rank number or on what ran before."""
    return int(np.random.SeedSequence([seed, step, micro, first_sample]).generate_state(1)[0])


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
        if train_data.batch_size != cfg.batch_size:
            raise ValueError(f"train data packs global batches of {train_data.batch_size} sequences but the config "
                             f"says batch_size={cfg.batch_size}")
        self.device = self.info.device
        self.model = model.to(self.device)
        self.wrapped = parallelize(self.model, self.info, mode=cfg.parallel, compile=cfg.compile,
                                   activation_checkpointing=cfg.activation_checkpointing)
        params = [p for p in self.wrapped.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # norms and biases
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           fused=self.device.type == "cuda")
        # rank 0 resolves (and may measure) "auto"; every rank trains in its answer
        self.use_dtype(gather_objects(together(lambda: resolve_dtype(cfg.dtype, self.device), main_only=True))[0])
        self.step, self.bad_steps = 0, 0
        self.history: list[dict] = []
        self.log = MetricsLog(self.out_dir, enabled=self.info.is_main)
        self.checkpointer = Checkpointer(self.out_dir, self.info, keep_last=cfg.keep_last,
                                         timeout_s=cfg.dist_timeout_s)
        self.peak = peak_flops(self.device)
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)

    def use_dtype(self, dtype: str) -> None:
        """Train and evaluate in ``dtype`` ("bf16": autocast over fp32 master weights; "fp32": no autocast)."""
        self.dtype = dtype
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    # ------------------------------------------------------------ training

    def fit(self) -> list[dict]:
        """Train to ``cfg.steps`` (resuming first if a checkpoint exists); returns this call's step metrics.

        With ``cfg.compile`` on one process the blocks run compiled while training and eagerly again once ``fit``
        returns, so generating with the model next does not recompile the training graphs.
        """
        local_compile = self.cfg.compile and not self.info.enabled  # sharded blocks stay compiled (FSDP order)
        if local_compile:
            compile_blocks(self.model)  # again, where an earlier fit() gave the eager blocks back
        try:
            return self._train_to_end()
        finally:
            if local_compile:
                compile_blocks(self.model, on=False)

    def _train_to_end(self) -> list[dict]:
        folder = self.checkpointer.latest()
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
        micro, seeds = [], []
        for i in range(cfg.grad_accum):
            b = next(self.train_data)
            seeds.append(micro_seed(cfg.seed, self.step, i, int(b.pop("sample")[0])))
            micro.append({k: v.to(self.device, non_blocking=True) for k, v in b.items()})
        # Weight each micro-batch by its share of the global target count, so the step's gradient is the
        # token mean over all ranks and micro-batches (what one big batch gives), whatever the padding.
        counts = torch.stack([(b["targets"] != IGNORE_INDEX).sum() for b in micro]).double()
        total = all_reduce_(counts.sum().clone()).clamp(min=1)
        totals = StepTotals(self.device)
        for b, n, seed in zip(micro, counts, seeds, strict=True):
            torch.manual_seed(seed)
            with self.autocast:
                out = self.wrapped(b["ids"], b["targets"], b["doc_ids"])
            (out.loss * (n * self.info.world_size / total).float()).backward()
            totals.add(out, n / total, n)
        losses = train_metrics(totals.reduced())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        loss = losses["loss"]
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        lr = cfg.lr * lr_factor(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            log.warning("step %d: non-finite loss %s / grad norm %s, update skipped (%d in a row, limit %d)",
                        self.step + 1, loss, grad_norm, self.bad_steps, cfg.max_bad_steps)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.bad_steps >= cfg.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} consecutive steps had a non-finite loss or gradient "
                                   f"(last at step {self.step}); stopping. The last good checkpoint is "
                                   f"{self.checkpointer.previous()}")
        dt = time.perf_counter() - t0
        tokens = cfg.grad_accum * cfg.batch_size * cfg.seq_len  # batch_size is global
        m = {"step": self.step, **losses, "lr": lr, "grad_norm": grad_norm, "skipped": not finite,
             "tokens_per_s": tokens / dt}
        util = mfu(tokens / dt / self.info.world_size, self.flops_per_token, self.peak)  # per rank
        if util is not None:
            m["mfu"] = util
        return m

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Token-mean CE (overall, text, image) over up to ``eval_batches`` held-out batches."""
        if self.eval_data is None:
            return {}
        self.wrapped.eval()
        totals = StepTotals(self.device)  # each batch weighted by its target count
        for i, b in enumerate(self.eval_data.epoch_batches(0)):
            if i == self.cfg.eval_batches:
                break
            b = {k: v.to(self.device) for k, v in b.items() if k != "sample"}
            with self.autocast:
                out = self.wrapped(b["ids"], b["targets"], b["doc_ids"])
            n = (b["targets"] != IGNORE_INDEX).sum().double()
            totals.add(out, n, n)
        return eval_metrics(totals.reduced())

    # ------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Write ``out_dir/step_NNNNNNN/`` (a collective; the last step of the run adds the HF-layout export).
        A full disk raises ``CheckpointDiskFull``, the older checkpoints intact."""
        folder = self.checkpointer.save(self.step, self.model, self.optimizer, self.tokenizer, self.trainer_state(),
                                        export=self.step == self.cfg.steps)
        if self.info.is_main:
            self.log.plot()
        return folder

    def trainer_state(self) -> dict:
        """trainer_state.json: where the run stands (the model config is the step folder's config.json)."""
        return {"step": self.step, "config": self.cfg.to_dict(), "world_size": self.info.world_size,
                "dtype": self.dtype, "data": self.train_data.state_dict(),
                "metrics": self.history[-1] if self.history else {}}

    def resume(self, folder: str | os.PathLike) -> None:
        """Restore model, optimizer and data position from a step folder, on any number of ranks; refuses a changed
        config (naming the fields) but ``RESUMABLE_CHANGES``, and an explicit dtype other than the run's (kept)."""
        folder = Path(folder)
        state, model_config = self.checkpointer.saved_state(folder)
        recorded = recorded_dtype(state, self.device)
        ignore = RESUMABLE_CHANGES + (("dtype",) if recorded else ())
        diff = config_diff(state["config"], self.cfg.to_dict(), ignore=ignore)
        if recorded and self.cfg.dtype not in ("auto", recorded):
            diff.append(f"dtype: the run trained in {recorded}, the config asks for {self.cfg.dtype}")
        diff += ["model." + d for d in config_diff(model_config, self.model.cfg.to_dict())]
        if state["step"] > self.cfg.steps:
            diff.append(f"steps: {self.cfg.steps} is before the checkpoint's step {state['step']}")
        if diff:
            raise ValueError(f"cannot resume from {folder}: the configuration changed: " + "; ".join(diff))
        self.train_data.load_state_dict(state["data"])
        self.checkpointer.restore(folder, self.model, self.optimizer)
        self.step, self.bad_steps = int(state["step"]), 0
        if recorded and recorded != self.dtype:  # "auto" resolved otherwise here: the numerics stay the run's
            log.info("keeping the run's %s (auto would pick %s here)", recorded, self.dtype)
            self.use_dtype(recorded)
        saved_steps = state["config"]["steps"]
        if self.info.is_main and saved_steps != self.cfg.steps:
            before = self.cfg.lr * lr_factor(dataclasses.replace(self.cfg, steps=saved_steps), self.step)
            log.warning("the run goes on to %d steps instead of %d: the cosine now ends at step %d, so step %d "
                        "trains at LR %.3g instead of %.3g", self.cfg.steps, saved_steps, self.cfg.steps,
                        self.step + 1, self.cfg.lr * lr_factor(self.cfg, self.step), before)
        log.info("resumed from %s at step %d in %s (saved by %d process(es), now %d)", folder, self.step,
                 self.dtype, state["world_size"], self.info.world_size)
