"""``fusion generate``: a prompt (text and / or images) -> the generated document(s), written as an HTML page.

Sampling flags are ``GenerationConfig``'s fields and override the checkpoint's ``generation_config.json``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fusion.cli.flags import add_config_flags, config_overrides
from fusion.inference.config import MODES, GenerationConfig


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusion generate", description=__doc__.replace("\n", " "))
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder")
    ap.add_argument("--prompt", default="", help="prompt text (comes after the images)")
    ap.add_argument("--image", action="append", default=[], help="prompt image file (repeatable)")
    add_config_flags(ap, GenerationConfig, choices={"mode": MODES})
    ap.add_argument("--seed", type=int, default=None, help="seed every row's random stream (default: fresh)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA)")
    ap.add_argument("--out", default="out.html", help="HTML file to write")
    args = ap.parse_args(argv)
    if not (args.image or args.prompt):
        ap.error("give --prompt and / or --image")

    from fusion.api import Fusion
    from fusion.document import Document, write_html
    from fusion.images import open_image

    prompt = Document.of(*[open_image(p) for p in args.image], *([args.prompt] if args.prompt else []))
    model = Fusion.from_pretrained(args.checkpoint, device=args.device)
    try:
        config = model.generation_config.replace(**config_overrides(args, GenerationConfig))
    except ValueError as e:  # a flag's value out of range: the config says which and why
        ap.error(str(e))
    docs = model.generate([prompt], config, seed=args.seed, compile=args.compile)
    write_html(args.out, [Document(prompt.segments + d.segments) for d in docs],
               title=f"fusion generate: {args.prompt[:60]}")
    texts, images = sum(len(d.texts) for d in docs), sum(len(d.images) for d in docs)
    print(f"{Path(args.out)}: {len(docs)} document(s), {texts} text and {images} image segments")
    return 0
