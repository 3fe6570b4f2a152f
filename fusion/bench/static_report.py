"""Static GPU report: compile every Triton kernel of fusion for sm_80 / sm_90 (/ sm_100) on a machine without a GPU.

For each specialisation the model launches (``static_cases``) and each autotune config the shared-memory rule
keeps, Triton compiles the kernel to a cubin with its bundled ptxas, and its cuobjdump reads back registers,
spills (stack / local bytes), shared memory and the MMA instructions of the SASS. Occupancy follows from
those figures and the per-arch limits in ``ARCHS``. Compiles run in fresh subprocesses with
``TRITON_INTERPRET`` unset (triton reads it at import) and an empty ``TRITON_CACHE_DIR`` (a cached cubin skips
the front end, which is where interpreter-only code fails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of one target (CUDA occupancy calculator figures)."""

    name: str
    gpu: str
    smem_per_block: int  # opt-in maximum a block may request
    smem_per_sm: int
    sms: int
    max_blocks: int = 32
    max_warps: int = 64
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of this many
    smem_reserved: int = 1024  # the driver keeps this much per block


KIB = 1024
ARCHS = {
    80: Arch("sm_80", "A100", 163 * KIB, 164 * KIB, 108),
    90: Arch("sm_90", "H100", 227 * KIB, 228 * KIB, 132),
    100: Arch("sm_100", "B200", 227 * KIB, 228 * KIB, 148),
}


def occupancy(arch: Arch, regs: int, smem: int, warps: int) -> int:
    """Resident blocks per SM: the tightest of the block, warp, register and shared-memory limits."""
    regs_per_warp = -(-max(regs, 1) * 32 // arch.reg_unit) * arch.reg_unit
    by_regs = (arch.regs_per_sm // regs_per_warp) // warps
    by_smem = arch.smem_per_sm // (smem + arch.smem_reserved)
    return max(0, min(arch.max_blocks, arch.max_warps // warps, by_regs, by_smem))


def mma_class(sass: str) -> str:
    """The tensor-core instruction family in a SASS listing: HGMMA (wgmma, sm_90+), HMMA, or none."""
    for name in ("UTCHMMA", "UTCQMMA", "HGMMA", "HMMA"):  # UTC*: tcgen05 on sm_100
        if name in sass:
            return name
    return "none"


def _clean_env(cache_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_ALLOW_NON_CONSTEXPR_GLOBALS")}
    return {**env, "TRITON_CACHE_DIR": cache_dir}


def run_worker(entry: str, payload: dict) -> list[dict]:
    """Run ``fusion.bench.static_compile.<entry>`` in a clean subprocess: JSON in on stdin, JSON rows out."""
    with tempfile.TemporaryDirectory(prefix="fusion-triton-cache-") as cache:
        code = f"import fusion.bench.static_compile as m; m.{entry}()"
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True,
                              text=True, env=_clean_env(cache))
    if done.returncode != 0:
        raise RuntimeError(f"static compile worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(everything: bool = False, targets: tuple[int, ...] = (80, 90), only: dict | None = None,
           workers: int | None = None) -> list[dict]:
    """Compile and read back every kernel for ``targets``; one row per distinct binary (see module docstring).
    ``only`` narrows the specialisations (``static_cases.specs``)."""
    jobs = run_worker("plan", {"everything": everything, "targets": list(targets), "only": only})
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    shards = [jobs[i::workers] for i in range(workers)]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, shard in enumerate(shards):
            out = os.path.join(tmp, f"rows{i}.json")
            code = f"import fusion.bench.static_compile as m; m.compile_jobs({out!r})"
            procs.append(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True,
                                          stderr=subprocess.PIPE, env=_clean_env(os.path.join(tmp, f"c{i}"))))
            procs[-1].stdin.write(json.dumps(shard))
            procs[-1].stdin.close()
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"static compile worker failed:\n{p.stderr.read()[-4000:]}")
        rows = [r for i in range(workers) for r in json.load(open(os.path.join(tmp, f"rows{i}.json")))]
    return sorted(rows, key=lambda r: (r["order"], r["target"]))
