"""``fusion train``: pretrain the decoder on documents (JSONL / parquet / datasets folders / token shards).

One process: ``fusion train ...``; several: ``torchrun --nproc_per_node N -m fusion.train ...`` (FSDP2 or DDP).
``--batch-size`` is global (split over the processes). Run the same command again to resume from the newest
complete checkpoint in ``--out``, on any number of processes; a larger ``--steps`` extends a finished run.
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
    ap.add_argument("--checkpoint", help="start from this checkpoint folder, or a run folder's newest checkpoint")
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
    cfg = TrainConfig.preset(args.preset if args.preset in TRAIN_PRESETS else None,
                             **config_overrides(args, TrainConfig))

    import torch.distributed as dist

    from fusion.train.distributed import init_distributed, prepare_on_main
    from fusion.train.loop import Trainer
    from fusion.train.packing import ConditionDropout, PackedDataset

    model, tokenizer = _model_and_tokenizer(args, cfg.seed)
    info = init_distributed(timeout_s=cfg.dist_timeout_s)
    # rank 0 tokenizes while the others wait outside the collective timeout (a large corpus takes hours)
    prepare_on_main(lambda: _tokenize(args, tokenizer, info.device))
    train_docs, eval_docs = _token_docs(args, tokenizer).split(args.eval_fraction)
    common = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size, pad_id=tokenizer.vocab.pad_id,
                  rank=info.rank, world_size=info.world_size)
    train_data = PackedDataset(train_docs, seed=cfg.seed, condition_dropout=ConditionDropout(
        cfg.condition_dropout, tokenizer.vocab.bos_id, tokenizer.vocab.boi_id), **common)
    eval_data = PackedDataset(eval_docs, seed=cfg.seed, drop_last=False, **common) if len(eval_docs) else None
    if eval_data is None:
        log.warning("no documents held out for evaluation (%d documents, --eval-fraction %s): eval is off",
                    len(train_docs), args.eval_fraction)
    Trainer(cfg, model, tokenizer, train_data, eval_data, args.out, info=info).fit()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _model_and_tokenizer(args, seed: int):
    """The model and tokenizers to train: a checkpoint's, or a fresh ``--preset`` model over given tokenizers."""
    import torch

    from fusion.checkpoint import resolve_checkpoint
    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.tokenizers.mixed import MixedTokenizer
    from fusion.train.export import load_decoder

    if args.checkpoint:
        folder = resolve_checkpoint(args.checkpoint)
        model = load_decoder(folder).train()
        return model, MixedTokenizer.from_pretrained(folder, model.cfg.vocab)
    if not (args.text_model and args.vq):
        raise SystemExit("fusion train: give --checkpoint DIR, or --text-model and --vq for a fresh model")
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.text import TextTokenizer

    tokenizer = MixedTokenizer(TextTokenizer.from_pretrained(args.text_model),
                               ImageTokenizer.from_pretrained(args.vq))
    torch.manual_seed(seed)  # every rank draws the same initial weights (FSDP2 shards them as they are)
    return Transformer(ModelConfig.preset(args.preset, tokenizer.vocab)), tokenizer


def _tokenize(args, tokenizer, device) -> None:
    """Tokenize document files into ``--out/tokens/`` shards (finished shards are kept); rank 0 only."""
    import torch

    from fusion.checkpoint import TOKENS
    from fusion.data.shards import SHARD_GLOB, tokenize_corpus

    if args.synthetic or (len(args.data) == 1 and any(Path(args.data[0]).glob(SHARD_GLOB))):
        return
    if torch.cuda.is_available() and isinstance(tokenizer.image, torch.nn.Module):
        tokenizer.image.to(device)  # batched VQ encoding on the GPU
    tokenize_corpus(args.data, tokenizer, Path(args.out) / TOKENS)


def _token_docs(args, tokenizer):
    """Token documents for the run: existing shards, the shards ``_tokenize`` wrote, or the synthetic world."""
    from fusion.checkpoint import TOKENS
    from fusion.data.shards import SHARD_GLOB, TokenDocs

    if args.synthetic:
        from fusion.data.synthetic import SyntheticWorld

        docs = list(SyntheticWorld(seed=0).documents(args.synthetic))
        return TokenDocs.from_arrays(tokenizer.encode_batch(docs), tokenizer.vocab.size)
    if len(args.data) == 1 and any(Path(args.data[0]).glob(SHARD_GLOB)):
        return TokenDocs.from_dir(args.data[0])
    return TokenDocs.from_dir(Path(args.out) / TOKENS)
