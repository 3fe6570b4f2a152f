"""Choosing a CPU fast path by measuring it on the machine in use, once, and remembering the answer.

CPUs differ too much for one rule: a small-row product that streams weights fastest as a reduction on one
machine loses to the library gemm on another, and bf16 matmul is far slower than fp32 on one CPU and several
times faster on the next (figures: benchmarks/RESULTS.md, "Figures moved out of code comments"). So each choice
("site") has today's rule as its default and a few alternatives; the first time a shape class is needed, the
candidates are timed and an alternative replaces the default only when it is at least ``MARGIN`` faster. The
answer is written to ``tune.json`` in the user cache dir, keyed by the machine (CPU model, flags, torch version,
threads), the site, the dtype and the shape class, so it is measured once and the numerics do not change from
run to run. ``FUSION_TUNE=off`` pins today's rules (the test suite runs that way);
``FUSION_CACHE_DIR`` moves the file. A corrupt or stale entry is ignored with a warning: at worst a choice is
slower, never wrong, since every candidate computes the same thing. The sites and their candidates live in
``cpu_paths``; whether bf16 pays is decided here (``native_bf16``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MARGIN = 1.10  # an alternative replaces today's rule only when it is at least 10% faster
FORMAT = 1  # the cache file's layout; a file of another format is ignored (and rewritten)
# Instruction-set features that decide which fast paths exist (x86 /proc/cpuinfo "flags", Arm "Features").
FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "asimd", "sve", "bf16")
BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")  # native bf16 dot products (x86 AVX-512 / AMX, Arm v8.6)


# ---------------------------------------------------------------- the machine


@dataclass(frozen=True)
class Machine:
    """What a measured choice depends on besides the work: the CPU, its features, torch, the thread count."""

    cpu: str
    features: tuple[str, ...]
    torch: str
    threads: int

    @classmethod
    def current(cls) -> Machine:
        cpu, features = cpu_identity()
        return cls(cpu, features, torch.__version__, torch.get_num_threads())

    @property
    def native_bf16(self) -> bool:
        return any(f in self.features for f in BF16_FEATURES)

    def describe(self) -> str:
        return f"{self.cpu} [{' '.join(self.features) or 'no listed features'}], torch {self.torch}, " \
               f"{self.threads} threads"


@cache
def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """(model name, the ``FEATURES`` it has), read from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and value.strip():
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return name, tuple(f for f in FEATURES if f in flags)


# ---------------------------------------------------------------- the decision


def decide(default: str, seconds: Mapping[str, float]) -> str:
    """The candidate to use given each one's measured seconds: ``default`` unless another is ``MARGIN`` faster."""
    if default not in seconds:
        raise ValueError(f"the default {default!r} was not measured: {sorted(seconds)}")
    best = min(seconds, key=seconds.__getitem__)
    return best if seconds[default] >= MARGIN * seconds[best] else default


def enabled() -> bool:
    """False under ``FUSION_TUNE=off`` (or 0 / false / no): today's rules, nothing measured or read."""
    return os.environ.get("FUSION_TUNE", "on").strip().lower() not in ("off", "0", "false", "no")


def cache_path() -> Path:
    base = os.environ.get("FUSION_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                      "fusion")
    return Path(base) / "tune.json"


def entry_key(machine: Machine, site: str, dtype: torch.dtype, shape: tuple) -> str:
    """One line that names everything a choice depends on."""
    return json.dumps([asdict(machine), site, str(dtype).removeprefix("torch."), list(shape)], sort_keys=True)


class TuneCache:
    """The persisted choices: ``{"format": FORMAT, "entries": {entry_key: {"choice", "seconds"}}}``."""

    def __init__(self, path: Path) -> None:
        self.path, self.entries = path, {}
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"),
                                                                                               dict):
                raise ValueError(f"not a format-{FORMAT} tuning file")
            self.entries = data["entries"]
        except (OSError, ValueError) as e:
            log.warning("fusion.tune: ignoring %s (%s); the choices will be measured again", path, e)

    def get(self, key: str, candidates: tuple[str, ...]) -> str | None:
        """The stored choice, or None (a stale entry, naming a candidate that no longer exists, is ignored)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if not isinstance(entry, dict) or entry.get("choice") not in candidates:
            log.warning("fusion.tune: ignoring a stale entry %r for %s", entry, key)
            return None
        return entry["choice"]

    def put(self, key: str, choice: str, seconds: Mapping[str, float]) -> None:
        """Store and write the file atomically; a file that cannot be written keeps the choice for this process."""
        self.entries[key] = {"choice": choice, "seconds": dict(seconds)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": FORMAT, "entries": self.entries}, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning("fusion.tune: cannot write %s (%s); this process keeps its choices", self.path, e)


_cache: TuneCache | None = None


def _store() -> TuneCache:
    global _cache
    if _cache is None or _cache.path != cache_path():
        _cache = TuneCache(cache_path())
    return _cache


def choose(site: str, dtype: torch.dtype, shape: tuple, default: str, candidates: tuple[str, ...],
           measure: Callable[[], Mapping[str, float]]) -> str:
    """The remembered choice for (this machine, ``site``, ``dtype``, ``shape``), measured now if there is none."""
    if not enabled():
        return default
    store, key = _store(), entry_key(Machine.current(), site, dtype, shape)
    choice = store.get(key, candidates)
    if choice is None:
        seconds = measure()
        choice = decide(default, seconds)
        store.put(key, choice, seconds)
        log.info("fusion.tune: %s %s %s -> %s (%s)", site, str(dtype).removeprefix("torch."), shape, choice,
                 ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in seconds.items()))
    return choice


def choices() -> list[dict]:
    """This machine's remembered choices (for ``fusion bench cpu``): site, dtype, shape, choice, seconds."""
    if not enabled():
        return []
    mine = json.loads(json.dumps(asdict(Machine.current())))  # as the key holds it: tuples read back as lists
    rows = []
    for key, entry in _store().entries.items():
        try:
            machine, site, dtype, shape = json.loads(key)
        except (ValueError, TypeError):
            continue
        if machine == mine and isinstance(entry, dict):
            rows.append({"site": site, "dtype": dtype, "shape": tuple(shape), **entry})
    return rows


def time_calls(fns: Mapping[str, Callable[[], object]], reps: int = 15) -> dict[str, float]:
    """Median seconds per call of each function, the candidates taking turns (this machine's speed drifts)."""
    for fn in fns.values():  # warm up: first-call allocation, lazy initialisation
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------- bf16


def native_bf16() -> bool:
    """True where the CPU has native bf16 dot products AND a bf16 matmul measures ``MARGIN`` faster than fp32
    (remembered like every choice); ``FUSION_TUNE=off`` keeps fp32."""
    if not Machine.current().native_bf16:
        return False
    n = 1024

    def measure() -> dict[str, float]:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a16, b16 = a.bfloat16(), b.bfloat16()
        return time_calls({"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16}, reps=5)

    return choose("matmul dtype", torch.float32, (n, n, n), "fp32", ("fp32", "bf16"), measure) == "bf16"


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """What ``dtype="auto"`` means on ``device``: bf16 on CUDA, bf16 on a CPU where ``native_bf16``, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32
