"""The ``fusion`` command: demo | train | train-vq | train-bpe | fetch-images | generate | serve | export | convert |
bench."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each sub-command is a module fusion/cli/<name>.py exposing main(argv); importing it lazily keeps `fusion --help`
# free of torch.
COMMANDS = {
    "demo": "train the whole stack on the synthetic world (CPU, no network) and score it",
    "train": "pretrain the decoder on interleaved documents",
    "train-vq": "train the VQ image tokenizer",
    "train-bpe": "train the sentencepiece BPE text tokenizer",
    "fetch-images": "fetch a corpus's image URLs into the local cache (for offline training)",
    "generate": "generate a mixed text+image document from a prompt",
    "serve": "an HTTP server: native and OpenAI-compatible APIs, metrics, a playground page",
    "export": "a training run's newest checkpoint as an inference folder (HF sharded safetensors)",
    "convert": "import a local Chameleon / Anole checkpoint (HF or Meta layout), or attach a VQGAN decoder",
    "bench": "benchmarks: GPU kernel timings, the static sm_80 / sm_90 compile report",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="fusion", description=__doc__)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, help_text in COMMANDS.items():
            sub.add_parser(name, help=help_text)
        parser.parse_args(argv[:1] or ["--help"])
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = importlib.import_module(f"fusion.cli.{argv[0].replace('-', '_')}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
