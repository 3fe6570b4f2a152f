"""Training throughput on one GPU: tokens/s and MFU of the real training step for model presets.

Random tokens packed into documents (so the document-masked attention path runs), a Chameleon-sized
vocabulary (65,536 ids with 8,192 image codes), bf16 autocast, fused AdamW, clipping: ``Trainer.train_step``
exactly as ``fusion train`` runs it. Before timing, the first step's loss must be finite and near ln(V), the
value a freshly initialised model gives on random tokens. Prints a table and appends rows to a CSV.

    python -m benchmarks.train --presets small 1b --seq-len 4096
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_csv
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.train.data import PackedDataset, TokenDocs
from fusion.train.distributed import DistInfo
from fusion.train.loop import TrainConfig, Trainer
from fusion.train.mfu import peak_flops
from fusion.vocab import Vocab

VOCAB = Vocab.build(65536 - 8192 - 5, 8192)  # Chameleon's total size, in fusion's layout


def random_docs(n_tokens: int, vocab: Vocab, seed: int = 0) -> TokenDocs:
    """Documents of 256..8192 random tokens adding up to ``n_tokens``."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = int(rng.integers(256, 8193))
        docs.append(rng.integers(vocab.text_start, vocab.size, n))
        total += n
    return TokenDocs.from_arrays(docs, vocab.size)


def bench(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = TrainConfig(steps=args.warmup + args.steps, warmup=1, batch_size=args.batch_size, seq_len=args.seq_len,
                      grad_accum=args.grad_accum, compile=args.compile,
                      activation_checkpointing=args.activation_checkpointing, progress=False, dtype="bf16")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset, VOCAB, max_seq_len=args.seq_len))
    n_seq = cfg.steps * cfg.grad_accum * cfg.batch_size
    data = PackedDataset(random_docs(n_seq * (cfg.seq_len + 1), VOCAB), cfg.seq_len, cfg.batch_size,
                         pad_id=VOCAB.pad_id)
    trainer = Trainer(cfg, model, None, data, None, args.out, info=DistInfo(device=device))
    first = trainer.train_step()
    expected = math.log(VOCAB.size)
    if not abs(first["loss"] - expected) < 0.5:
        raise RuntimeError(f"{preset}: first loss {first['loss']:.3f} is not near ln(V) = {expected:.3f}; "
                           "refusing to time a broken step")
    for _ in range(args.warmup - 1):
        trainer.train_step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / args.steps
    tokens = cfg.grad_accum * cfg.batch_size * cfg.seq_len
    flops = model.flops_per_token(cfg.seq_len) * tokens / dt
    peak = peak_flops(device)
    return {"date": date.today().isoformat(), "device": torch.cuda.get_device_name(device), "preset": preset,
            "params_M": round(model.num_params() / 1e6, 1), "seq_len": cfg.seq_len, "batch": cfg.batch_size,
            "grad_accum": cfg.grad_accum, "compile": cfg.compile, "act_ckpt": cfg.activation_checkpointing,
            "step_ms": round(dt * 1e3, 1), "tokens_per_s": round(tokens / dt), "TFLOP_s": round(flops / 1e12, 1),
            "peak_TFLOP_s": round(peak / 1e12) if peak else None, "MFU": round(flops / peak, 3) if peak else None,
            "peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 1),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "1b"], help="model presets to measure")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1, help="sequences per micro-step")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--csv", default="benchmarks/results/train.csv", help="append result rows here")
    ap.add_argument("--out", default="runs/bench-train", help="scratch run folder (nothing is saved)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("this benchmark needs a CUDA GPU (the CPU path is tested, not timed)")
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1")
    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    for preset in args.presets:
        rows.append(bench(preset, args, device))
        torch.cuda.empty_cache()
        r = rows[-1]
        print(f"{r['preset']:>6}  {r['params_M']:>8.1f}M  seq {r['seq_len']}  x{r['batch']}x{r['grad_accum']}  "
              f"{r['step_ms']:>8.1f} ms/step  {r['tokens_per_s']:>9} tok/s  {r['TFLOP_s']:>6.1f} TFLOP/s  "
              f"MFU {r['MFU']}  mem {r['peak_mem_GiB']} GiB")
    write_csv(rows, Path(args.csv), append=True)
    print(f"appended {len(rows)} row(s) to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
