"""VQ image tokenizer throughput: images/s and codes/s for encode and decode per preset.

Before timing, encoding must be deterministic (two passes give identical codes) and decoding finite.
``--device cpu`` runs the same checks and timings on a CPU (a smoke test, not a number).

    fusion bench vq --presets tiny chameleon --batch-size 16
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import date

import torch

from fusion.bench.common import ready, sync, timeit
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.vq_config import VQConfig


@dataclass(frozen=True)
class Options:
    """VQ encode / decode throughput options."""

    presets: tuple[str, ...] = field(default=("tiny", "chameleon"), metadata={"help": "VQ presets to measure"})
    batch_size: int = field(default=16, metadata={"help": "images per call"})
    dtype: str = field(default="bf16", metadata={"help": "model dtype", "choices": ["fp32", "bf16"]})
    warmup: int = field(default=3, metadata={"help": "untimed calls before timing"})
    iters: int = field(default=10, metadata={"help": "timed calls (the median is reported)"})
    device: str = field(default="cuda", metadata={"help": "cuda to time; cpu for a smoke run"})


def bench(preset: str, opts: Options, device: torch.device) -> dict:
    dtype = torch.bfloat16 if opts.dtype == "bf16" else torch.float32
    batch = opts.batch_size
    torch.manual_seed(0)
    model = ImageTokenizer(VQConfig.preset(preset, kmeans_init=False)).to(device, dtype).eval()
    r = model.resolution
    pixels = (torch.rand(batch, 3, r, r, device=device) * 2 - 1).to(dtype)
    codes = model.encode(pixels, batch_size=batch)
    if not torch.equal(codes, model.encode(pixels, batch_size=batch)):
        raise RuntimeError(f"{preset}: encode is not deterministic; refusing to time it")
    if not torch.isfinite(model.decode(codes, batch_size=batch)).all():
        raise RuntimeError(f"{preset}: decode gave non-finite pixels; refusing to time it")
    enc = timeit(lambda: model.encode(pixels, batch_size=batch), device, opts.warmup, opts.iters) / 1e3
    dec = timeit(lambda: model.decode(codes, batch_size=batch), device, opts.warmup, opts.iters) / 1e3
    sync(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return dict(date=str(date.today()), device=name, torch=torch.__version__, python=platform.python_version(),
                preset=preset, resolution=r, tokens=model.tokens_per_image, batch=batch, dtype=str(dtype),
                encode_img_s=round(batch / enc, 1), decode_img_s=round(batch / dec, 1),
                encode_tok_s=round(batch * model.tokens_per_image / enc))


def run(opts: Options) -> list[dict]:
    """One row per VQ preset: encode / decode images per second and codes per second."""
    if not ready("vq", opts.device):
        return []
    return [bench(name, opts, torch.device(opts.device)) for name in opts.presets]
