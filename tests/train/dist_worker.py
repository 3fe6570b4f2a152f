"""The multi-process half of test_distributed.py, launched by torchrun.

``variants TOKENIZER_DIR OUT_DIR``: every structural variant of the decoder trains, saves and resumes under FSDP2
and under DDP; an FSDP2 checkpoint resumes under DDP; with dropout on, a resume on the same ranks repeats the
curve exactly. The pytest side imports ``make_run`` to train the same runs in one process as the reference.

``slow-tokenize SECONDS TRAIN_ARGS...``: ``fusion train`` whose rank 0 takes SECONDS longer to tokenize the
corpus (longer than the ``--dist-timeout-s`` given), which must not trip the collective timeout.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from fusion.data.shards import TokenDocs
from fusion.data.synthetic import SyntheticWorld
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.train.config import TrainConfig
from fusion.train.datasets import training_datasets
from fusion.train.distributed import barrier, init_distributed, leave_process_group
from fusion.train.loop import Trainer

# tied or not x GQA or not x swin_norm or not
VARIANTS = {f"{'tied' if tie else 'untied'}-{'gqa' if kv == 2 else 'mha'}-{'swin' if swin else 'pre'}":
            dict(tie_embeddings=tie, n_kv_heads=kv, swin_norm=swin)
            for tie in (True, False) for kv in (2, 4) for swin in (True, False)}


def token_docs(tokenizer: MixedTokenizer) -> TokenDocs:
    return TokenDocs.from_arrays(tokenizer.encode_batch(list(SyntheticWorld(seed=1).documents(40))))


def make_run(tokenizer: MixedTokenizer, docs: TokenDocs, out: Path, variant: str, *, parallel: str = "fsdp",
             seed: int = 0, dropout: float = 0.0, steps: int = 4, dist_timeout_s: int = 600) -> Trainer:
    """A 2-layer dim-32 decoder of ``variant``, global batches of 6 sequences, checkpoints at steps 2 and 4."""
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup=1, batch_size=6, seq_len=32, save_every=2, eval_every=steps,
                      eval_batches=1, keep_last=5, progress=False, parallel=parallel, dist_timeout_s=dist_timeout_s)
    model_cfg = ModelConfig(vocab=tokenizer.vocab, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=64,
                            dropout=dropout, **VARIANTS[variant])
    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    info = init_distributed()
    return Trainer(cfg, model, tokenizer, *training_datasets(cfg, tokenizer.vocab, *docs.split(0.2), info), out,
                   info=info)


def losses(history: list[dict]) -> list[float]:
    return [m["loss"] for m in history]


def kill_after_step_2(out: Path, rank: int) -> None:
    """What a run killed during step 4's save leaves behind: the step-2 checkpoint and a temp folder."""
    if rank == 0:
        shutil.rmtree(out / "step_0000004")
        (out / ".step_0000004.tmp").mkdir()
    barrier()


def main(tokenizer_dir: str, out_dir: str) -> None:
    info = init_distributed()
    tokenizer = MixedTokenizer.from_pretrained(tokenizer_dir)
    docs, root, results = token_docs(tokenizer), Path(out_dir), {}
    for parallel in ("fsdp", "ddp"):
        for variant in VARIANTS:
            out = root / f"{parallel}-{variant}"
            first = make_run(tokenizer, docs, out, variant, parallel=parallel).fit()
            kill_after_step_2(out, info.rank)
            again = make_run(tokenizer, docs, out, variant, parallel=parallel, seed=1).fit()
            results[out.name] = {"first": losses(first), "again": losses(again)}
    # an FSDP2 checkpoint resumed under DDP, and dropout drawn per (step, micro-batch, sample), not per rank
    out = root / "fsdp-then-ddp"
    if info.rank == 0:
        shutil.copytree(root / "fsdp-tied-gqa-swin", out)
    kill_after_step_2(out, info.rank)
    results["fsdp-then-ddp"] = {"again": losses(make_run(tokenizer, docs, out, "tied-gqa-swin", parallel="ddp",
                                                         seed=1).fit())}
    out = root / "dropout"
    first = make_run(tokenizer, docs, out, "tied-gqa-swin", dropout=0.2).fit()
    kill_after_step_2(out, info.rank)
    again = make_run(tokenizer, docs, out, "tied-gqa-swin", dropout=0.2, seed=1).fit()
    results["dropout"] = {"first": losses(first), "again": losses(again)}
    if info.rank == 0:
        (root / "results.json").write_text(json.dumps(results))


def slow_tokenize(seconds: str, *train_args: str) -> int:
    from fusion.cli.train import main as train_main
    from fusion.data import tokenize as tokenize_module

    tokenize = tokenize_module.tokenize_corpus

    def slow(*args, **kwargs):
        time.sleep(float(seconds))
        return tokenize(*args, **kwargs)

    tokenize_module.tokenize_corpus = slow
    return train_main(list(train_args))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "variants":
        main(*args)
        leave_process_group()
    else:
        sys.exit(slow_tokenize(*args))
