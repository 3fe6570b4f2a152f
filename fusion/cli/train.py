"""``fusion train``: pretrain the decoder on a corpus (or a folder it was tokenized into).

One process: ``fusion train ...``; several: ``torchrun --nproc_per_node N -m fusion.train ...`` (FSDP2 or DDP).
``--batch-size`` is global (split over the processes). Run the same command again to resume from the newest
complete checkpoint in ``--out``, on any number of processes; a larger ``--steps`` extends a finished run.
The corpus is tokenized first (rank 0, into ``--out/tokens``; finished shards are kept, other data or tokenizers
get fresh ones); mixture weights set each source's share of the training tokens.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from fusion.cli.corpus_args import add_data_args, corpus_spec
from fusion.cli.flags import add_config_flags, config_overrides
from fusion.data.tokenize import TokenizeOptions
from fusion.model.config import MODEL_PRESETS
from fusion.train.config import TRAIN_PRESETS, TrainConfig

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fusion train", description=__doc__.splitlines()[0])
    add_data_args(ap, help_suffix=", or a folder the corpus was tokenized into")
    ap.add_argument("--checkpoint", help="start from this checkpoint folder, or a run folder's newest checkpoint")
    ap.add_argument("--text-model", help="a trained text.model, or its folder (with --vq, for a fresh model)")
    ap.add_argument("--vq", help="a trained VQ folder (vq.safetensors + vq.json)")
    ap.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS.keys() | TRAIN_PRESETS.keys()),
                    help=f"model preset for a fresh model, and the training preset of that name where there is one "
                         f"(training presets: {', '.join(sorted(TRAIN_PRESETS))})")
    ap.add_argument("--out", default="runs/train", help="run folder: checkpoints, metrics.jsonl, loss.png")
    ap.add_argument("--eval-fraction", type=float, default=0.02, help="documents held out for evaluation")
    add_config_flags(ap, TrainConfig)
    add_config_flags(ap, TokenizeOptions)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    cfg = train_config(args)

    from fusion.train.distributed import init_distributed, leave_process_group

    info = init_distributed(timeout_s=cfg.dist_timeout_s)
    _train(args, cfg, info)  # its model, optimizer and data are gone when it returns
    leave_process_group()
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """``--preset``'s training preset with the flags given; a model-only preset takes the field defaults, said
    in a warning."""
    cfg = TrainConfig.preset(args.preset if args.preset in TRAIN_PRESETS else None,
                             **config_overrides(args, TrainConfig))
    if args.preset not in TRAIN_PRESETS:
        log.warning("--preset %s is a model preset only (training presets: %s): training uses TrainConfig's defaults "
                    "and the flags given: steps=%d, batch_size=%d, seq_len=%d, lr=%g, warmup=%d", args.preset,
                    ", ".join(sorted(TRAIN_PRESETS)), cfg.steps, cfg.batch_size, cfg.seq_len, cfg.lr, cfg.warmup)
    return cfg


def _train(args, cfg: TrainConfig, info) -> None:
    """Tokenize (rank 0), pack, train and print the data report."""
    from fusion.data.mixture import record_mixture, training_docs
    from fusion.train.datasets import training_datasets
    from fusion.train.distributed import prepare_on_main
    from fusion.train.loop import Trainer

    model, tokenizer = _model_and_tokenizer(args, cfg.seed)
    # rank 0 tokenizes while the others wait outside the collective timeout (a large corpus takes hours)
    prepare_on_main(lambda: _tokenize(args, cfg, tokenizer, info.device))
    train_docs, eval_docs, shares = training_docs(_tokens_dir(args), args.eval_fraction, seed=cfg.seed)
    if info.is_main:
        log.info("%s", _mixture_text(shares))
        record_mixture(_tokens_dir(args), shares)
    train_data, eval_data = training_datasets(cfg, tokenizer.vocab, train_docs, eval_docs, info)
    if eval_data is None:
        log.warning("no documents held out for evaluation (%d documents, --eval-fraction %s): eval is off",
                    len(train_docs), args.eval_fraction)
    Trainer(cfg, model, tokenizer, train_data, eval_data, args.out, info=info).fit()
    if info.is_main:
        _print_report(_tokens_dir(args), shares)


def _model_and_tokenizer(args, seed: int):
    """The model and tokenizers to train: a checkpoint's, or a fresh ``--preset`` model over given tokenizers."""
    import torch

    from fusion.model.config import ModelConfig
    from fusion.model.transformer import Transformer
    from fusion.run_checkpoints import resolve_checkpoint
    from fusion.tokenizers.mixed import MixedTokenizer

    if args.checkpoint:
        folder = resolve_checkpoint(args.checkpoint)
        model = Transformer.from_pretrained(folder).train()
        return model, MixedTokenizer.from_pretrained(folder, model.cfg.vocab)
    if not (args.text_model and args.vq):
        raise SystemExit("fusion train: give --checkpoint DIR, or --text-model and --vq for a fresh model")
    from fusion.tokenizers.image import ImageTokenizer
    from fusion.tokenizers.text import TextTokenizer

    tokenizer = MixedTokenizer(TextTokenizer.from_pretrained(args.text_model),
                               ImageTokenizer.from_pretrained(args.vq))
    torch.manual_seed(seed)  # every rank draws the same initial weights (FSDP2 shards them as they are)
    return Transformer(ModelConfig.preset(args.preset, tokenizer.vocab)), tokenizer


def _pretokenized(args) -> bool:
    """The data is one folder a corpus was tokenized into (not a corpus to tokenize)."""
    from fusion.data.mixture import is_tokenized

    return len(args.data) == 1 and is_tokenized(args.data[0])


def _tokens_dir(args) -> Path:
    """A tokenized corpus given as the data, else ``--out/tokens``."""
    from fusion.checkpoint_layout import TOKENS

    return Path(args.data[0]) if _pretokenized(args) else Path(args.out) / TOKENS


def _tokenize(args, cfg: TrainConfig, tokenizer, device) -> None:
    """Tokenize the corpus into ``--out/tokens`` (finished shards are kept); rank 0 only."""
    import torch

    from fusion.data import tokenize

    if _pretokenized(args):
        return
    if torch.cuda.is_available() and isinstance(tokenizer.image, torch.nn.Module):
        tokenizer.image.to(device)  # batched VQ encoding on the GPU
    tokenize.tokenize_corpus(corpus_spec(args), tokenizer, _tokens_dir(args), progress=cfg.progress,
                             **config_overrides(args, TokenizeOptions))


def _print_report(folder: Path, shares: list[dict]) -> None:
    """The end-of-run data report: what reading the corpus skipped and why, and the realised mixture."""
    from fusion.data.report import CORPUS_FILE, IngestReport
    from fusion.files import read_json

    if (folder / CORPUS_FILE).is_file():
        corpus = read_json(folder / CORPUS_FILE)
        for record in corpus["sources"]:
            print(IngestReport.from_dict(record["report"]).summary(record["source"]["path"]))
    print(_mixture_text(shares))


def _mixture_text(shares: list[dict]) -> str:
    """The realised mixture, one line per source."""
    return "\n".join(f"mixture: {r['source']}: {r['token_share']:.1%} of the training tokens, {r['documents']} "
                     f"documents (x{r['repeats']:.2f} its tokens)"
                     + (f", weight {r['weight']}" if r["weight"] is not None else "") for r in shares)
