"""``fusion train``: pretrain the decoder on documents (JSONL / parquet / datasets folders / token shards).

One process: ``fusion train ...``; several: ``torchrun --nproc_per_node N -m fusion.train ...`` (FSDP2 or DDP).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from fusion.cli.flags import add_config_flags, config_overrides
from fusion.train.config import TRAIN_PRESETS, TrainConfig

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fusion train", description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="*", help="document files/folders, or a folder of token shards (shard_NNNNN/)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="train on N synthetic-world documents")
    ap.add_argument("--checkpoint", help="start from this checkpoint folder (model + tokenizers)")
    ap.add_argument("--text-model", help="a trained text.model, or its folder (with --vq, for a fresh model)")
    ap.add_argument("--vq", help="a trained VQ folder (vq.safetensors + vq.json)")
    ap.add_argument("--preset", default="tiny", help="model preset for a fresh model and training preset")
    ap.add_argument("--out", default="runs/train", help="run folder: checkpoints, metrics.jsonl, loss.png")
    ap.add_argument("--eval-fraction", type=float, default=0.02, help="documents held out for evaluation")
    add_config_flags(ap, TrainConfig)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if bool(args.data) == bool(args.synthetic):
        ap.error("give data paths or --synthetic N (one of them)")
    overrides = config_overrides(args, TrainConfig)
    cfg = TrainConfig.preset(args.preset, **overrides) if args.preset in TRAIN_PRESETS else TrainConfig(**overrides)

    import torch.distributed as dist

    from fusion.train.distributed import init_distributed
    from fusion.train.loop import Trainer
    from fusion.train.packing import PackedDataset

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
    """The model and tokenizers to train: a checkpoint's, or a fresh ``--preset`` model over given tokenizers."""
    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.tokenizers.mixed import MixedTokenizer

    if args.checkpoint:
        model = Transformer.from_pretrained(args.checkpoint)
        return model, MixedTokenizer.from_pretrained(args.checkpoint, model.cfg.vocab)
    if not (args.text_model and args.vq):
        raise SystemExit("fusion train: give --checkpoint DIR, or --text-model and --vq for a fresh model")
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.text import TextTokenizer

    tokenizer = MixedTokenizer(TextTokenizer.from_pretrained(args.text_model),
                               ImageTokenizer.from_pretrained(args.vq))
    return Transformer(ModelConfig.preset(args.preset, tokenizer.vocab)), tokenizer


def _token_docs(args, tokenizer, info):
    """Token documents for the run: existing shards, freshly tokenized files, or the synthetic world."""
    import torch
    import torch.distributed as dist

    from fusion.data.shards import SHARD_GLOB, TokenDocs, tokenize_corpus

    if args.synthetic:
        from fusion.data.synthetic import SyntheticWorld

        docs = list(SyntheticWorld(seed=0).documents(args.synthetic))
        return TokenDocs.from_arrays(tokenizer.encode_batch(docs), tokenizer.vocab.size)
    if len(args.data) == 1 and any(Path(args.data[0]).glob(SHARD_GLOB)):
        return TokenDocs.from_dir(args.data[0])
    shards = Path(args.out) / "tokens"
    if info.is_main:  # one writer; the others wait, then memory-map the finished shards
        if torch.cuda.is_available() and isinstance(tokenizer.image, torch.nn.Module):
            tokenizer.image.to(info.device)  # batched VQ encoding on the GPU
        tokenize_corpus(args.data, tokenizer, shards)
    if dist.is_initialized():
        dist.barrier()
    return TokenDocs.from_dir(shards)
