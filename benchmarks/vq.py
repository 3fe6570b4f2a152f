"""VQ image tokenizer throughput on one GPU: images/s and codes/s for encode and decode per preset.

Before timing, encoding must be deterministic (two passes give identical codes) and decoding finite.
Prints a table and appends rows to a CSV.

    python -m benchmarks.vq --presets tiny chameleon --batch-size 16
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import torch

from benchmarks.common import write_csv
from fusion.tokenizers.image import ImageTokenizer, VQConfig


def cuda_time(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def bench(preset: str, batch: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    model = ImageTokenizer(VQConfig.preset(preset, kmeans_init=False)).cuda().to(dtype).eval()
    r = model.resolution
    pixels = (torch.rand(batch, 3, r, r, device="cuda") * 2 - 1).to(dtype)
    codes = model.encode(pixels, batch_size=batch)
    if not torch.equal(codes, model.encode(pixels, batch_size=batch)):
        raise RuntimeError(f"{preset}: encode is not deterministic; refusing to time it")
    if not torch.isfinite(model.decode(codes, batch_size=batch)).all():
        raise RuntimeError(f"{preset}: decode gave non-finite pixels; refusing to time it")
    enc = cuda_time(lambda: model.encode(pixels, batch_size=batch))
    dec = cuda_time(lambda: model.decode(codes, batch_size=batch))
    return dict(date=str(date.today()), device=torch.cuda.get_device_name(), torch=torch.__version__,
                preset=preset, resolution=r, tokens=model.tokens_per_image, batch=batch, dtype=str(dtype),
                encode_img_s=round(batch / enc, 1), decode_img_s=round(batch / dec, 1),
                encode_tok_s=round(batch * model.tokens_per_image / enc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "chameleon"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--csv", default="benchmarks/vq.csv")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.vq needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = [bench(name, args.batch_size, dtype) for name in args.presets]
    keys = list(rows[0])
    print(" | ".join(keys[3:]))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys[3:]))
    write_csv(rows, Path(args.csv), append=True)
    print(f"python {platform.python_version()}, rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
