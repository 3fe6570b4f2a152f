"""The data argument the trainers share: a corpus named by its sources (or one spec file), plus the spec's flags."""

from __future__ import annotations

import argparse

from fusion.cli.flags import add_config_flags, config_overrides
from fusion.data.spec import CorpusSpec

DATA_HELP = ("the corpus: sources PATH[?OPTION=VALUE&...][:WEIGHT] (.jsonl, .parquet, .txt, a datasets folder, an "
             "image folder, hf:NAME, synthetic?n=N), or one .yaml / .json corpus spec; see fusion/data/spec.py")


def add_data_args(parser: argparse.ArgumentParser, *, default: list[str] | None = None, help_suffix: str = "",
                  skip: tuple[str, ...] = ()) -> None:
    """The positional corpus sources and ``--image-cache`` / ``--fetch`` (from ``CorpusSpec``'s fields, less
    ``skip``)."""
    parser.add_argument("data", nargs="*" if default else "+", default=default,
                        help=DATA_HELP + help_suffix + (f" (default: {' '.join(default)})" if default else ""))
    add_config_flags(parser, CorpusSpec, skip=("sources", *skip))


def corpus_spec(args: argparse.Namespace) -> CorpusSpec:
    return CorpusSpec.parse(args.data, **config_overrides(args, CorpusSpec))
