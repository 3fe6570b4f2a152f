"""``fusion train-bpe``: train the sentencepiece BPE text tokenizer on files or on the synthetic world."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator, Sequence


def corpus_texts(paths: Sequence[str]) -> Iterator[str]:
    """Texts of JSONL document files (their text segments) or of plain-text files (their lines)."""
    from fusion.document import read_jsonl

    for p in paths:
        if p.endswith(".jsonl"):
            for doc in read_jsonl(p):
                yield "".join(doc.texts)
        else:
            with open(p, encoding="utf-8") as f:
                yield from (line.rstrip("\n") for line in f)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusion train-bpe", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", help="JSONL document files or plain-text files")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N synthetic-world documents")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--out", default=".", help="folder to write text.model into")
    args = ap.parse_args(argv)
    if not args.inputs and not args.synthetic:
        ap.error("give input files and/or --synthetic N")

    from fusion.data.synthetic import SyntheticWorld
    from fusion.tokenizers.text import TextTokenizer

    texts = itertools.chain(corpus_texts(args.inputs), SyntheticWorld().texts(args.synthetic))
    tok = TextTokenizer.train(texts, args.vocab_size)
    print(f"wrote {tok.save_pretrained(args.out)}: {tok.vocab_size} pieces")
    return 0
