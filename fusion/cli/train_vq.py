"""``fusion train-vq``: train the VQ image tokenizer on the images of a corpus (default: the synthetic world)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from fusion.cli.corpus_args import add_data_args, corpus_spec
from fusion.cli.flags import add_config_flags, config_overrides
from fusion.train.vq.config import VQ_TRAIN_PRESETS, VQTrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion train-vq", description=__doc__.splitlines()[0])
    add_data_args(p, default=["synthetic"])
    p.add_argument("--out", default="vq_out", help="output folder (vq.safetensors, vq.json, metrics.jsonl, PNG, "
                                                    "corpus.json: the data report)")
    p.add_argument("--preset", default="tiny", choices=sorted(VQ_TRAIN_PRESETS), help="training preset")
    p.add_argument("--resize", choices=("crop", "pad"), default=None,
                   help="how non-square images become square: centre crop (Chameleon) or pad (keeps every pixel); "
                        "default: the preset's")
    p.add_argument("--init", default=None, help="fine-tune the tokenizer in this folder instead of a fresh one")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    add_config_flags(p, VQTrainConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import dataclasses

    import torch

    from fusion.data.report import write_corpus_report
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.train.vq.data import CorpusImages
    from fusion.train.vq.loop import train_vq

    cfg = VQTrainConfig.preset(args.preset, **config_overrides(args, VQTrainConfig))
    if args.resize:
        cfg = dataclasses.replace(cfg, vq=dataclasses.replace(cfg.vq, resize=args.resize))
    tokenizer = ImageTokenizer.from_pretrained(args.init) if args.init else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    corpus = CorpusImages(corpus_spec(args))
    _, metrics = train_vq(cfg, corpus, args.out, tokenizer=tokenizer, device=device)
    print(json.dumps(metrics, indent=2))
    if corpus.report.rows:  # the synthetic world is rendered, not read
        print(corpus.report.summary("train-vq corpus"))
    write_corpus_report(args.out, corpus.spec, corpus.report)
    return 0
