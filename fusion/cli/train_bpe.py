"""``fusion train-bpe``: train the sentencepiece BPE text tokenizer on the texts of a corpus."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fusion.cli.corpus_args import add_data_args, corpus_spec


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusion train-bpe", description=__doc__.splitlines()[0])
    add_data_args(ap)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--out", default=".", help="folder to write text.model (and corpus.json, the data report) into")
    args = ap.parse_args(argv)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from fusion.data.corpus import corpus_texts
    from fusion.data.report import IngestReport, write_corpus_report
    from fusion.tokenizers.text import TextTokenizer

    spec, report = corpus_spec(args), IngestReport()
    if spec.weighted:
        print("note: mixture weights shape the decoder's training data; the BPE reads every text once")
    with logging_redirect_tqdm():
        texts = tqdm(corpus_texts(spec, report), desc="train-bpe: reading", unit="text")
        try:
            tok = TextTokenizer.train(texts, args.vocab_size)
        except ValueError as e:
            raise SystemExit(f"fusion train-bpe: {e}\n{report.summary('the corpus')}") from None
        texts.close()
    print(f"wrote {tok.save_pretrained(args.out)}: {tok.vocab_size} pieces")
    print(report.summary("train-bpe corpus"))
    write_corpus_report(args.out, spec, report)
    return 0
