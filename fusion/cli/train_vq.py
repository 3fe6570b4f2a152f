"""``fusion train-vq``: train the VQ image tokenizer (synthetic world, an image folder or a saved HF dataset)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from fusion.cli.flags import add_config_flags, config_overrides
from fusion.train.vq.config import VQ_TRAIN_PRESETS, VQTrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion train-vq", description=__doc__.splitlines()[0])
    p.add_argument("--images", default="synthetic",
                   help="'synthetic[:seed]' (default), a folder of image files, or a saved HF dataset folder")
    p.add_argument("--image-column", default=None, help="image column of a HF dataset (default: the only one)")
    p.add_argument("--out", default="vq_out", help="output folder (vq.safetensors, vq.json, metrics.jsonl, PNG)")
    p.add_argument("--preset", default="tiny", choices=sorted(VQ_TRAIN_PRESETS), help="training preset")
    p.add_argument("--init", default=None, help="fine-tune the tokenizer in this folder instead of a fresh one")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    add_config_flags(p, VQTrainConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from fusion.tokenizers.image import ImageTokenizer
    from fusion.train.vq.data import image_column
    from fusion.train.vq.loop import train_vq

    cfg = VQTrainConfig.preset(args.preset, **config_overrides(args, VQTrainConfig))
    source = args.images
    if not source.startswith("synthetic") and (Path(source) / "dataset_info.json").is_file():
        from datasets import load_from_disk

        dataset = load_from_disk(source)
        source = dataset[image_column(dataset, args.image_column)]
    tokenizer = ImageTokenizer.from_pretrained(args.init) if args.init else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _, metrics = train_vq(cfg, source, args.out, tokenizer=tokenizer, device=device)
    print(json.dumps(metrics, indent=2))
    return 0
