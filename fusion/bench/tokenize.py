"""Corpus tokenization on the CPU: images/s and peak memory for large JPEGs, and text tokens/s.

Each measurement runs ``fusion.data.tokenize.tokenize_corpus`` in a fresh process, so its peak RSS (``VmHWM``)
is that run's alone; the RSS just before tokenizing (imports and tokenizers loaded) is reported beside it. Before the
numbers count, the first documents' tokens must equal a direct ``MixedTokenizer.encode`` of the same rows.
The default run is small (a smoke test); ``--full`` is the target: 1,000 JPEGs of 3000x3000 under 1.5 GB.

    fusion bench tokenize --full
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

WORDS = ("the", "a", "red", "circle", "model", "reads", "image", "tokens", "quickly", "under", "bright", "sky",
         "river", "stone", "learns", "every", "small", "large", "blue", "square")


@dataclass(frozen=True)
class Options:
    """What to tokenize and with which VQ preset."""

    images: int = field(default=24, metadata={"help": "image rows to tokenize"})
    side: int = field(default=1024, metadata={"help": "width and height of each JPEG"})
    distinct: int = field(default=4, metadata={"help": "distinct JPEG files the rows cycle through"})
    text_docs: int = field(default=2000, metadata={"help": "text documents (about 100 words each)"})
    preset: str = field(default="tiny", metadata={"help": "VQ preset of the image tokenizer"})
    image_batch: int = field(default=16, metadata={"help": "images VQ-encoded at once"})
    full: bool = field(default=False, metadata={"help": "the target run: 1000 JPEGs of 3000x3000"})


def _write_corpus(folder: Path, opts: Options) -> tuple[Path, Path]:
    """A JSONL of image rows over ``distinct`` JPEG files and a JSONL of text rows."""
    rng = np.random.default_rng(0)
    side = opts.side
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for k in range(opts.distinct):  # smooth gradients plus noise: JPEG sizes like photos'
        noise = rng.normal(0, 12, (side, side, 3)).astype(np.float32)
        pixels = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1),
                           np.full((side, side), 40.0 * k)], -1) + noise
        PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k}.jpg", quality=90)
    images = folder / "images.jsonl"
    images.write_text("".join(json.dumps({"segments": [{"text": f"photo {i}: "},
                                                       {"image": f"{i % opts.distinct}.jpg"}]}) + "\n"
                              for i in range(opts.images)))
    words = random.Random(0)
    texts = folder / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": " ".join(words.choices(WORDS, k=100))}) + "\n"
                             for _ in range(opts.text_docs)))
    return images, texts


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, from Linux ``/proc``. The peak is read
    there, not from ``getrusage``: Linux carries ``ru_maxrss`` across exec, so a spawned child would report its
    parent's peak."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _measure(corpus: str, tokenizer_dir: str, out: str, image_batch: int) -> dict:
    """In a fresh process: tokenize ``corpus``, check the first documents, return timings and peak RSS."""
    import torch

    from fusion.data.shards import TokenDocs
    from fusion.data.spec import CorpusSpec
    from fusion.data.tokenize import tokenize_corpus
    from fusion.document import Document
    from fusion.tokenizers.mixed import MixedTokenizer

    tokenizer = MixedTokenizer.from_pretrained(tokenizer_dir)
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    record = tokenize_corpus(CorpusSpec.parse(corpus), tokenizer, out, image_batch=image_batch,
                             progress=False)["sources"][0]
    seconds = time.perf_counter() - start
    got = TokenDocs.from_dir(Path(out) / record["folder"])
    base = Path(corpus).parent
    for i, line in enumerate(Path(corpus).read_text().splitlines()[:2]):
        want = tokenizer.encode(Document.from_row(json.loads(line), base_dir=base))
        if got[i].tolist() != want.tolist():
            raise RuntimeError(f"{corpus}: document {i}'s tokens differ from a direct encode; refusing to time")
    return {"documents": record["documents"], "tokens": record["tokens"], "seconds": seconds,
            "peak_rss_mb": _status_mb("VmHWM"), "baseline_rss_mb": baseline, "threads": torch.get_num_threads()}


def run(opts: Options) -> list[dict]:
    """Two rows: image rows (images/s, peak RSS) and text rows (text tokens/s)."""
    import torch

    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.mixed import MixedTokenizer
    from fusion.tokenizers.text import TextTokenizer
    from fusion.tokenizers.vq_config import VQConfig

    if opts.full:
        opts = Options(**{**opts.__dict__, "images": 1000, "side": 3000})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images, texts = _write_corpus(folder, opts)
        torch.manual_seed(0)
        lines = (json.loads(x)["text"] for x in texts.read_text().splitlines()[:500])
        tok = MixedTokenizer(TextTokenizer.train(lines, 512), ImageTokenizer(VQConfig.preset(opts.preset)))
        tok.save_pretrained(folder / "tokenizer")
        for work, corpus in (("images", images), ("text", texts)):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # a fresh process: its own peak
                m = pool.submit(_measure, str(corpus), str(folder / "tokenizer"), str(folder / work),
                                opts.image_batch).result()
            image = work == "images"
            rows.append({"work": work, "documents": m["documents"], "side": opts.side if image else None,
                         "preset": opts.preset, "seconds": round(m["seconds"], 2),
                         "images_per_s": round(opts.images / m["seconds"], 2) if image else None,
                         "text_tokens_per_s": None if image else round(m["tokens"] / m["seconds"]),
                         "peak_rss_mb": round(m["peak_rss_mb"]), "baseline_rss_mb": round(m["baseline_rss_mb"]),
                         "threads": m["threads"]})
    return rows
