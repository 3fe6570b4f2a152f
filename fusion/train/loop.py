"""The pretraining loop: AdamW + warmup/cosine, accumulation, clipping, bf16 autocast, eval, checkpoints, resume.

``Trainer(cfg, model, tokenizer, train_data, eval_data, out_dir).fit()`` resumes from ``out_dir/latest`` when
one exists and continues the loss curve exactly (model, optimizer, schedule, data position and RNG restored).
The same code runs one process on a CPU or many under ``torchrun`` (FSDP2 or DDP, see ``distributed.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
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

from fusion.io import atomic_path
from fusion.model.transformer import Transformer
from fusion.train import checkpointing as ckpt
from fusion.train.data import IGNORE_INDEX, PackedDataset, TokenDocs, tokenize_corpus
from fusion.train.distributed import DistInfo, all_reduce_, init_distributed, parallelize
from fusion.train.mfu import mfu, peak_flops

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is sequences per rank per micro-step."""

    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    batch_size: int = 8
    seq_len: int = 512
    grad_accum: int = 1
    clip: float = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    dtype: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "fsdp"         # fsdp | ddp, used when world_size > 1
    max_bad_steps: int = 5         # consecutive non-finite steps before giving up
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "max_bad_steps", "eval_every", "save_every",
                     "keep_last", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.parallel not in ("fsdp", "ddp"):
            raise ValueError(f"parallel must be fsdp or ddp, got {self.parallel!r}")
        if self.warmup < 0 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need warmup >= 0, lr > 0 and 0 <= min_lr_ratio <= 1")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown training preset {name!r}; presets are {sorted(TRAIN_PRESETS)}")
        return cls(**{**TRAIN_PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as they come back from JSON


TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=300, lr=3e-3, warmup=20, batch_size=8, seq_len=256, eval_every=100, save_every=100),
    "small": dict(steps=20_000, lr=6e-4, warmup=1000, batch_size=16, seq_len=2048),
    "1b": dict(steps=100_000, lr=3e-4, warmup=2000, batch_size=8, seq_len=4096, activation_checkpointing=True),
}
# Fields that change bookkeeping only: a resume may change them; any other difference is refused.
RESUMABLE_CHANGES = ("eval_every", "eval_batches", "save_every", "keep_last", "log_every", "progress", "compile",
                     "activation_checkpointing")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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
        self.info = info or _current_dist()
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
        self.peak = peak_flops(self.device)
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        torch.manual_seed(cfg.seed + self.info.rank)  # dropout differs per rank; resume restores it exactly

    # ------------------------------------------------------------ training

    def fit(self) -> list[dict]:
        """Train to ``cfg.steps`` (resuming first if a checkpoint exists); returns this call's step metrics."""
        folder = ckpt.latest_checkpoint(self.out_dir)
        if folder is not None:
            self.resume(folder)
        self._truncate_metrics()
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.cfg.progress and self.info.is_main),
                   desc="train", dynamic_ncols=True)
        while self.step < self.cfg.steps:
            m = self.train_step()
            if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps:
                m.update(self.evaluate())
            self._record(m)
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
                                   f"{ckpt.latest_checkpoint(self.out_dir)}")
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

    def _record(self, m: dict) -> None:
        self.history.append(m)
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(m) + "\n")

    def save(self) -> Path | None:
        """Write ``out_dir/step_NNNNNNN/`` (rank 0 writes; every rank takes part in gathering)."""
        model_sd, optim_sd = self._full_state()
        bad = [k for k, t in model_sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        bad = sum(_gather_objects(bad), [])  # only rank 0 holds the full state; every rank must stop alike
        if bad:
            raise TrainingDiverged(f"refusing to save a model with non-finite weights ({bad[:3]}); the last good "
                                   f"checkpoint is {ckpt.latest_checkpoint(self.out_dir)}")
        rngs = _gather_objects(ckpt.rng_state())
        folder = None
        if self.info.is_main:
            state = {"step": self.step, "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                     "world_size": self.info.world_size, "data": self.train_data.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rngs,
                     "metrics": self.history[-1] if self.history else {}}
            folder = ckpt.save_training_checkpoint(self.out_dir, self.step, write_model=self._model_writer(model_sd),
                                                   optimizer_state=optim_sd, trainer_state=state,
                                                   keep_last=self.cfg.keep_last)
            self.plot()
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
        from fusion.checkpoint import save_checkpoint

        def write(folder: Path) -> None:
            model = self.model
            if self.info.enabled:  # the live model is sharded: save an unsharded CPU twin sharing model_sd
                with torch.device("meta"):
                    model = type(self.model)(self.model.cfg)
                model.load_weights(model_sd)
            save_checkpoint(folder, model, self.tokenizer)

        return write

    def resume(self, folder: str | os.PathLike) -> None:
        """Restore everything from a step folder; refuses when the config differs (naming the fields)."""
        folder = Path(folder)
        state = ckpt.load_trainer_state(folder)
        diff = ckpt.config_diff(state["config"], self.cfg.to_dict(), ignore=RESUMABLE_CHANGES)
        diff += ["model." + d for d in ckpt.config_diff(state["model_config"], self.model.cfg.to_dict())]
        if state["world_size"] != self.info.world_size:
            diff.append(f"world_size: {state['world_size']} -> {self.info.world_size}")
        if diff:
            raise ValueError(f"cannot resume from {folder}: the configuration changed: " + "; ".join(diff))
        weights = Transformer.from_pretrained(folder).state_dict()
        optim = ckpt.load_optimizer_state(folder)
        if self.info.enabled:
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.wrapped, self.optimizer, optim, options=opts)
        else:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_data.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"][self.info.rank])
        self.step, self.bad_steps = int(state["step"]), 0
        log.info("resumed from %s at step %d", folder, self.step)

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the current step (a killed run's tail), so the curve has no duplicates."""
        path = self.out_dir / METRICS_FILE
        if not (self.info.is_main and path.is_file()):
            return
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines))

    def plot(self) -> None:
        """loss.png: training loss per modality, plus held-out CE, from metrics.jsonl."""
        path = self.out_dir / METRICS_FILE
        if not path.is_file():
            return
        from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for key in ("loss", "ce_text", "ce_image", "eval_ce"):
            pts = [(r["step"], r[key]) for r in rows if key in r and not r.get("skipped")]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key, marker="o" if key == "eval_ce" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(self.out_dir / PLOT_FILE) as tmp:
            fig.savefig(tmp, format="png", dpi=100)


def _current_dist() -> DistInfo:
    """The running process group's rank and size (single process when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                        else torch.device("cpu"))
    return init_distributed()


def _gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train(cfg: TrainConfig, model: torch.nn.Module, tokenizer, train_data: PackedDataset,
          eval_data: PackedDataset | None, out_dir: str | os.PathLike) -> list[dict]:
    """Train (resuming from ``out_dir/latest`` if present); returns this call's per-step metrics."""
    return Trainer(cfg, model, tokenizer, train_data, eval_data, out_dir).fit()


# ------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``fusion train``: pretrain the decoder on documents (JSONL / parquet / datasets folders / token shards)."""
    import argparse

    ap = argparse.ArgumentParser(prog="fusion train", description=main.__doc__)
    ap.add_argument("data", nargs="*", help="document files/folders, or a folder of token shards (shard_NNNNN/)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="train on N synthetic-world documents")
    ap.add_argument("--checkpoint", help="start from this checkpoint folder (model + tokenizers)")
    ap.add_argument("--text-model", help="a trained text.model (with --vq, for a fresh model)")
    ap.add_argument("--vq", help="a trained VQ folder (vq.safetensors + vq.json)")
    ap.add_argument("--preset", default="tiny", help="model preset for a fresh model and training preset")
    ap.add_argument("--out", default="runs/train", help="run folder: checkpoints, metrics.jsonl, loss.png")
    ap.add_argument("--eval-fraction", type=float, default=0.02, help="documents held out for evaluation")
    for f in fields(TrainConfig):
        if f.type in ("int", "float", "str"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type={"int": int, "float": float, "str": str}[f.type])
        elif f.type == "bool":
            ap.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction)
    args = ap.parse_args(argv)
    if bool(args.data) == bool(args.synthetic):
        ap.error("give data paths or --synthetic N (one of them)")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = TrainConfig.preset(args.preset, **overrides) if args.preset in TRAIN_PRESETS else TrainConfig(**overrides)

    info = init_distributed()
    model, tokenizer = _model_and_tokenizer(args)
    train_docs, eval_docs = _token_docs(args, tokenizer, info).split(args.eval_fraction)
    common = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size, pad_id=tokenizer.vocab.pad_id,
                  rank=info.rank, world_size=info.world_size)
    train_data = PackedDataset(train_docs, seed=cfg.seed, **common)
    eval_data = PackedDataset(eval_docs, seed=cfg.seed, drop_last=False, **common) if len(eval_docs) else None
    if eval_data is None:
        log.warning("no documents held out for evaluation (%d documents, --eval-fraction %s): eval is off",
                    len(train_docs), args.eval_fraction)
    Trainer(cfg, model, tokenizer, train_data, eval_data, args.out, info=info).fit()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _model_and_tokenizer(args):
    from fusion.model.config import ModelConfig
    from fusion.tokenizers.mixed import MixedTokenizer

    if args.checkpoint:
        from fusion.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint)
    if not (args.text_model and args.vq):
        raise SystemExit("fusion train: give --checkpoint DIR, or --text-model and --vq for a fresh model")
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.text import TextTokenizer

    tokenizer = MixedTokenizer(TextTokenizer.load(args.text_model), ImageTokenizer.from_pretrained(args.vq))
    return Transformer(ModelConfig.preset(args.preset, tokenizer.vocab)), tokenizer


def _token_docs(args, tokenizer, info: DistInfo):
    """Token documents for the run: existing shards, freshly tokenized files, or the synthetic world."""
    if args.synthetic:
        from fusion.data.synthetic import SyntheticWorld

        docs = list(SyntheticWorld(seed=0).documents(args.synthetic))
        return TokenDocs.from_arrays(tokenizer.encode_batch(docs), tokenizer.vocab.size)
    if len(args.data) == 1 and any(Path(args.data[0]).glob("shard_*")):
        return TokenDocs.from_dir(args.data[0])
    shards = Path(args.out) / "tokens"
    if info.is_main:  # one writer; the others wait, then memory-map the finished shards
        if torch.cuda.is_available() and isinstance(tokenizer.image, torch.nn.Module):
            tokenizer.image.to(info.device)  # batched VQ encoding on the GPU
        tokenize_corpus(args.data, tokenizer, shards)
    if dist.is_initialized():
        dist.barrier()
    return TokenDocs.from_dir(shards)
