"""``fusion export RUN_DIR OUT_DIR``: a training run's newest complete checkpoint as an inference folder.

Writes ``config.json``, the tokenizers and the weights in HF's sharded layout (``model-0000i-of-0000N.safetensors``
+ ``model.safetensors.index.json``), one shard at a time: the model never has to fit in memory at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusion export", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a training run folder (its newest complete checkpoint) or one of its step folders")
    ap.add_argument("out", help="the inference folder to write")
    ap.add_argument("--max-shard-mb", type=float, help="largest weight file, in MiB (default: HF's 5 GiB)")
    args = ap.parse_args(argv)

    from fusion.train.export import MAX_SHARD_BYTES, export

    limit = MAX_SHARD_BYTES if args.max_shard_mb is None else int(args.max_shard_mb * 2**20)
    out = export(args.run, args.out, max_shard_bytes=limit)
    print(f"{out}: ready for fusion.load / fusion generate --checkpoint")
    return 0
