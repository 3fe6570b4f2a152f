"""``fusion convert``: import a local Chameleon / Anole checkpoint (HF layout or Meta's original release) as a fusion
checkpoint folder, or attach a VQGAN decoder to a converted one."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusion convert", description=__doc__.replace("\n", " "))
    parser.add_argument("src", help="local folder: HF Chameleon / Anole (config.json + safetensors), Meta's release "
                                    "(models/<size>/ + tokenizer/), or with --vqgan alone a converted fusion folder")
    parser.add_argument("dst", nargs="?", help="fusion checkpoint folder to write (omit to attach --vqgan to SRC)")
    parser.add_argument("--vqgan", help="taming / Meta vqgan.ckpt whose decoder the converted folder gets")
    parser.add_argument("--vqgan-config", help="its vqgan.yaml")
    args = parser.parse_args(argv)
    if (args.vqgan is None) != (args.vqgan_config is None):
        parser.error("--vqgan and --vqgan-config go together")
    if args.dst is None and args.vqgan is None:
        parser.error("give DST, or --vqgan / --vqgan-config to attach a decoder to the folder SRC")

    from fusion.convert import attach_vqgan, convert

    if args.dst is None:
        print(attach_vqgan(args.src, args.vqgan, args.vqgan_config))
    else:
        print(convert(args.src, args.dst, vqgan=args.vqgan, vqgan_config=args.vqgan_config))
    return 0
