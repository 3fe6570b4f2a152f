"""The multi-process half of test_checkpointer_ranks.py, launched by torchrun.

``TOKENIZER_DIR OUT_DIR TIMEOUT_S``: a 2-rank run (``dist_worker.make_run``) whose rank 1 skips the barrier that
opens the seal phase of every save, the fault a rank stuck elsewhere causes. The run must fail within about
the collective timeout, naming the rank and the phase, instead of hanging.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dist_worker import make_run, token_docs

from fusion.tokenizers.mixed import MixedTokenizer
from fusion.train import checkpointer
from fusion.train.distributed import init_distributed


def main(tokenizer_dir: str, out_dir: str, timeout_s: str) -> None:
    info = init_distributed(timeout_s=int(timeout_s))
    if info.rank == 1:
        checkpointer.barrier = lambda: None  # the checkpointer's one bare barrier opens the seal phase
    tokenizer = MixedTokenizer.from_pretrained(tokenizer_dir)
    make_run(tokenizer, token_docs(tokenizer), Path(out_dir), "tied-gqa-swin", dist_timeout_s=int(timeout_s)).fit()


if __name__ == "__main__":
    main(*sys.argv[1:])
