"""What every benchmark suite shares: the one attention FLOP formula, run options, timing, roofs, CSV/PNG output."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool, mode: str) -> float:
    """FlashAttention's count: fwd = 4*B*H*T^2*D (half if causal), bwd = 2.5x fwd, mode in fwd|bwd|fwd_bwd."""
    fwd = 4 * batch * heads * seqlen**2 * head_dim / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd_bwd": 3.5 * fwd}[mode]


def use_interpreter_on_cpu(device: str) -> None:
    """Our Triton kernels run on a CPU only in the interpreter, which must be chosen before triton loads."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


STATIC_HINT = "`fusion bench static` compiles every kernel for sm_80 / sm_90 without a GPU"


@dataclass(frozen=True)
class RunOptions:
    """The options every kernel timing suite shares."""

    dtype: str = field(default="bf16", metadata={"help": "input dtype", "choices": sorted(DTYPES)})
    tol: float = field(default=2e-2, metadata={"help": "max abs error vs the reference before timing"})
    warmup: int = field(default=5, metadata={"help": "untimed calls before timing"})
    iters: int = field(default=20, metadata={"help": "timed calls (the median is reported)"})
    device: str = field(default="cuda", metadata={
        "help": "cuda to time; cpu runs tiny shapes through the Triton interpreter (a smoke test, not a number)"})
    out: str = field(default="bench_out", metadata={"help": "folder for the CSV / PNG files"})


def ready(suite: str, device: str) -> bool:
    """False (after saying so in one line) when ``device`` is CUDA and there is none; picks the interpreter on CPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"fusion bench {suite}: timings need a CUDA GPU and there is none here ({STATIC_HINT}; "
              f"--device cpu smoke-tests this suite)")
        return False
    use_interpreter_on_cpu(device)
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn``: CUDA events on a GPU, wall clock elsewhere; warm-up runs first."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak bytes allocated above the starting point while ``fn`` runs (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def matmul_roof(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured TFLOP/s of one large n^3 matmul: the compute ceiling of this run."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = timeit(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_roof(device: torch.device, nbytes: int = 2**30) -> float:
    """Measured TB/s of a device-to-device copy (bytes read + bytes written): the bandwidth ceiling."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timeit(lambda: dst.copy_(src), device, warmup=3, iters=10)
    return 2 * nbytes / (ms * 1e-3) / 1e12


def read_roof(device: torch.device, nbytes: int = 2**30) -> float:
    """Measured TB/s of a read-only pass (a sum over a large fp32 tensor): what reading weights can reach."""
    x = torch.ones(nbytes // 4, device=device)
    ms = timeit(lambda: x.sum(), device, warmup=2, iters=10)
    return nbytes / (ms * 1e-3) / 1e12


def env_info(device: torch.device) -> dict[str, str]:
    """Device and versions to record next to every number."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "cuda": str(torch.version.cuda)}


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def write_csv(rows: list[dict], path: Path, *, append: bool = False) -> None:
    """Write ``rows`` (header from the first row); ``append`` adds to an existing file's rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = not (append and path.exists())
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if header:
            writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], x: str, y: str, series: list[str], panels: list[str], path: Path,
         roof: float | None = None, roof_label: str = "") -> None:
    """One panel per value combination of ``panels``, one line per value combination of ``series``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = lambda r, names: " ".join(f"{n}={r[n]}" for n in names)
    panel_keys = sorted({key(r, panels) for r in rows})
    fig, axes = plt.subplots(1, len(panel_keys), figsize=(5 * len(panel_keys), 4), squeeze=False)
    for ax, pk in zip(axes[0], panel_keys, strict=True):
        sub = [r for r in rows if key(r, panels) == pk and isinstance(r.get(y), float)]
        for sk in sorted({key(r, series) for r in sub}):
            line = sorted((r[x], r[y]) for r in sub if key(r, series) == sk)
            ax.plot(*zip(*line, strict=True), marker="o", label=sk)
        if roof:
            ax.axhline(roof, color="k", linestyle="--", label=roof_label)
        ax.set(title=pk, xlabel=x, ylabel=y)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
