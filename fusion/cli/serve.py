"""``fusion serve CHECKPOINT``: an HTTP server for a checkpoint: ``POST /v1/generate`` (fusion's own API, streamed
as Server-Sent Events or not), ``POST /v1/chat/completions`` (OpenAI's), ``GET /v1/models``, ``/health``,
``/metrics`` and a playground page at ``/``. SIGTERM stops it cleanly (exit 0)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16", "float64")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fusion serve", description=__doc__.replace("\n", " "))
    ap.add_argument("checkpoint", help="checkpoint folder (or a training run folder: its newest checkpoint)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    ap.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port, printed)")
    ap.add_argument("--max-batch", type=int, default=8, help="KV-cache rows decoded together; a request needs "
                    "num_return_sequences x guidance copies of them (default: 8)")
    ap.add_argument("--max-queue", type=int, default=64, help="requests waiting for rows before 429 (default: 64)")
    ap.add_argument("--api-key", default=os.environ.get("FUSION_API_KEY"),
                    help="require 'Authorization: Bearer KEY' (default: $FUSION_API_KEY; unset: open)")
    ap.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when present)")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="the decoder's dtype (default: the checkpoint's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode passes")
    ap.add_argument("--max-image-pixels", type=int, default=16_000_000,
                    help="refuse prompt images larger than this, read from their header (default: 16000000)")
    ap.add_argument("--shutdown-timeout", type=float, default=30.0,
                    help="on SIGTERM, seconds running requests may finish before they are cancelled (default: 30)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.max_batch < 1 or args.max_queue < 0 or args.max_image_pixels < 1 or args.shutdown_timeout < 0:
        ap.error("--max-batch and --max-image-pixels must be >= 1, --max-queue and --shutdown-timeout >= 0")

    import torch

    from fusion.api import Fusion
    from fusion.serve.app import create_app
    from fusion.serve.scheduler import Scheduler
    from fusion.serve.server import bind, serve, url

    try:
        sock = bind(args.host, args.port)  # before loading: a taken port fails at once
    except OSError as e:
        ap.error(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    model = Fusion.from_pretrained(args.checkpoint, device=args.device,
                                   dtype=getattr(torch, args.dtype) if args.dtype else None)
    scheduler = Scheduler(model, max_batch=args.max_batch, max_queue=args.max_queue, compile=args.compile).start()
    app = create_app(scheduler, model_name=Path(args.checkpoint).resolve().name, api_key=args.api_key,
                     max_image_pixels=args.max_image_pixels)
    serve(app, sock, scheduler, shutdown_timeout=args.shutdown_timeout,
          on_listening=lambda: print(f"fusion serve: listening on {url(sock)} (playground: {url(sock)}/)",
                                     flush=True))
    return 0
