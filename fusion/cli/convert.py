"""``fusion convert``: import a local HF-format Chameleon / Anole checkpoint as a fusion checkpoint folder."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusion convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="local HF Chameleon / Anole folder (config.json + safetensors)")
    parser.add_argument("dst", help="fusion checkpoint folder to write")
    args = parser.parse_args(argv)

    from fusion.model.hf_chameleon import convert_hf_chameleon

    print(convert_hf_chameleon(args.src, args.dst))
    return 0
