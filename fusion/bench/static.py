"""The static kernel report as a suite: ``fusion bench static`` (see ``fusion.bench.static_report``).

Compile-only figures for sm_80 (A100) and sm_90 (H100), optionally sm_100: never a speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from fusion.bench.static_report import report

COLUMNS = ("kernel", "config", "target", "status", "regs", "spill_stack", "spill_local", "smem", "smem_est",
           "blocks_per_sm", "mma", "compile_s", "used_by")


@dataclass(frozen=True)
class Options:
    """Static compile report options."""

    all: bool = field(default=False, metadata={
        "help": "the full matrix: fp32, full attention, head_dim 256, and every config (pruned ones marked)"})
    targets: tuple[int, ...] = field(default=(80, 90), metadata={"help": "compute capabilities (80, 90, 100)"})
    ops: tuple[str, ...] = field(default=(), metadata={"help": "only these dispatch ops (default: all)"})
    presets: tuple[str, ...] = field(default=(), metadata={"help": "only these model presets (default: all)"})
    dtypes: tuple[str, ...] = field(default=(), metadata={"help": "only these dtypes (default: all)"})
    workers: int = field(default=0, metadata={"help": "compile processes (0: one per CPU core)"})


def _used_by(labels: str) -> str:
    """'1b bf16 causal, small bf16 causal' -> 'small, 1b | bf16 | causal' (presets | dtypes | variants)."""
    parts = [label.split(" ") for label in labels.split(", ")]
    groups = [sorted({p[i] for p in parts if len(p) > i}, key=labels.index) for i in range(3)]
    return " | ".join(", ".join(g) for g in groups if g)


def run(opts: Options) -> list[dict]:
    """One row per distinct (kernel binary, config, target), in ``COLUMNS`` order."""
    import triton

    only = {k: list(v) for k, v in (("op", opts.ops), ("preset", opts.presets), ("dtype", opts.dtypes)) if v}
    print(f"# static compile report {date.today()}, triton {triton.__version__}, targets "
          f"{', '.join(f'sm_{t}' for t in opts.targets)} (compile-only: no speed is measured)")
    rows = report(everything=opts.all, targets=opts.targets, only=only or None, workers=opts.workers or None)
    return [{c: (_used_by(r[c]) if c == "used_by" else r.get(c)) for c in COLUMNS} for r in rows]
