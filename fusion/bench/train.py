"""Training throughput on one GPU: tokens/s and MFU of the real training step for model presets.

Random tokens packed into documents (so the document-masked attention path runs), a Chameleon-sized
vocabulary (65,536 ids with 8,192 image codes), bf16 autocast, fused AdamW, clipping: ``Trainer.train_step``
exactly as ``fusion train`` runs it. Before timing, the first step's loss must be finite and near ln(V), the
value a freshly initialised model gives on random tokens. ``--device cpu`` runs the same step on a CPU
(a smoke test, not a number).

    fusion bench train --presets small 1b --seq-len 4096
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import torch

from fusion.bench.common import ready, sync
from fusion.data.shards import TokenDocs
from fusion.interop.hf_chameleon import released_vocab
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.train.config import TrainConfig
from fusion.train.distributed import DistInfo, init_distributed, leave_process_group
from fusion.train.loop import Trainer
from fusion.train.mfu import peak_flops
from fusion.train.packing import PackedDataset
from fusion.vocab import Vocab

VOCAB = released_vocab()  # Chameleon's id layout and size


def random_docs(n_tokens: int, vocab: Vocab, seed: int = 0) -> TokenDocs:
    """Documents of 256..8192 random tokens adding up to ``n_tokens``."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = int(rng.integers(256, 8193))
        docs.append(rng.integers(vocab.text_start, vocab.size, n))
        total += n
    return TokenDocs.from_arrays(docs, vocab.size)


@dataclass(frozen=True)
class Options:
    """Training-step throughput options."""

    presets: tuple[str, ...] = field(default=("small", "1b"), metadata={"help": "model presets to measure"})
    seq_len: int = field(default=4096, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=1, metadata={"help": "sequences per rank per micro-step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per step"})
    steps: int = field(default=10, metadata={"help": "timed steps"})
    warmup: int = field(default=3, metadata={"help": "untimed steps first (compile, allocator)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each block"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute blocks in the backward"})
    dtype: str = field(default="bf16", metadata={"help": "training precision", "choices": ["bf16", "fp32", "auto"]})
    device: str = field(default="cuda", metadata={"help": "cuda to time; cpu for a smoke run"})
    out: str = field(default="runs/bench-train", metadata={"help": "scratch run folder (nothing is saved)"})


def _memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None


def bench(preset: str, args: Options, info: DistInfo) -> dict:
    """Time ``Trainer.train_step`` for one preset; under torchrun every rank trains its share (FSDP2)."""
    device = info.device
    cfg = TrainConfig(steps=args.warmup + args.steps, warmup=1, batch_size=args.batch_size * info.world_size,
                      seq_len=args.seq_len,
                      grad_accum=args.grad_accum, compile=args.compile,
                      activation_checkpointing=args.activation_checkpointing, progress=False, dtype=args.dtype)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset, VOCAB, max_seq_len=args.seq_len))
    n_seq = cfg.steps * cfg.grad_accum * cfg.batch_size
    data = PackedDataset(random_docs(n_seq * (cfg.seq_len + 1), VOCAB), cfg.seq_len, cfg.batch_size,
                         pad_id=VOCAB.pad_id, rank=info.rank, world_size=info.world_size)
    trainer = Trainer(cfg, model, None, data, None, args.out, info=info)
    first = trainer.train_step()
    expected = math.log(VOCAB.size)
    if not abs(first["loss"] - expected) < 0.5:
        raise RuntimeError(f"{preset}: first loss {first['loss']:.3f} is not near ln(V) = {expected:.3f}; "
                           "refusing to time a broken step")
    for _ in range(args.warmup - 1):
        trainer.train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    tokens = cfg.grad_accum * cfg.batch_size * cfg.seq_len / info.world_size  # per rank
    flops = model.flops_per_token(cfg.seq_len) * tokens / dt
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"date": date.today().isoformat(), "device": name, "preset": preset, "ranks": info.world_size,
            "parallel": cfg.parallel if info.world_size > 1 else "none",
            "params_M": round(model.num_params() / 1e6, 1), "seq_len": cfg.seq_len, "global_batch": cfg.batch_size,
            "grad_accum": cfg.grad_accum, "compile": cfg.compile, "act_ckpt": cfg.activation_checkpointing,
            "step_ms": round(dt * 1e3, 1), "tokens_per_s": round(tokens * info.world_size / dt),
            "tokens_per_s_per_rank": round(tokens / dt), "TFLOP_s_per_rank": round(flops / 1e12, 1),
            "peak_TFLOP_s": round(peak / 1e12) if peak else None, "MFU": round(flops / peak, 3) if peak else None,
            "peak_mem_GiB": _memory_gib(device),
            "torch": torch.__version__, "python": platform.python_version()}


def run(opts: Options) -> list[dict]:
    """One row per preset: step time, tokens/s (all ranks and per rank), TFLOP/s and MFU per rank.

    ``torchrun --nproc_per_node N -m fusion.cli bench train`` measures FSDP2 over N GPUs (gloo on a CPU);
    rank 0 reports.
    """
    if opts.warmup < 1 or opts.steps < 1:
        raise ValueError("warmup and steps must be >= 1")
    if not ready("train", opts.device):
        return []
    info = init_distributed(opts.device)
    rows = []
    for preset in opts.presets:
        rows.append(bench(preset, opts, info))
        if info.device.type == "cuda":
            torch.cuda.empty_cache()
    leave_process_group()
    return rows if info.is_main else []
