"""``fusion demo``: the whole pipeline on the embedded synthetic world, on a CPU, with no network."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    from fusion.demo import DemoConfig, run

    ap = argparse.ArgumentParser(prog="fusion demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DemoConfig.out_dir)
    ap.add_argument("--quick", action="store_true", help="a short run on a small world (the test suite's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default=DemoConfig.dtype,
                    help="the decoder's training and decoding dtype; auto: bf16 on a CPU with native bf16 that "
                         "measures faster, else fp32")
    args = ap.parse_args(argv)
    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out_dir=args.out)
    report = run(replace(cfg, seed=args.seed, dtype=args.dtype, progress=sys.stderr.isatty()))
    total = sum(report.seconds.values())
    print(f"\nfusion demo ({total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()) + ")")
    print(f"  decoder in {report.dtype}: held-out cross-entropy {report.heldout_ce:.4f}")
    print(f"  text -> image  oracle accuracy (colour + shape): {report.text_to_image_accuracy:6.1%}  "
          f"(guidance scale {report.best_guidance_scale}, chosen on validation prompts)")
    print("  guidance scale -> held-out accuracy: " + ", ".join(f"{s}: {a['test']:.1%}"
                                                                for s, a in report.guidance.items()))
    print(f"  image -> text  caption accuracy (colour + shape): {report.image_to_caption_accuracy:6.1%}")
    for r in report.decoding:
        print(f"  {r['decoding']:>11} decoding: {r['passes_per_image']:.1f} passes per image, "
              f"{r['batch_seconds']:.1f} s for all held-out captions at once, {r['single_ms_per_image']:.0f} ms "
              f"per image one at a time, accuracy {r['accuracy']:.1%}")
    print(f"  documents: {Path(args.out) / 'index.html'}   checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0
