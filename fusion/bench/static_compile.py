"""The compiling side of the static report; runs only in the clean subprocesses ``static.py`` starts.

``plan`` turns the specialisations into distinct (kernel, config, target) jobs, keyed by exactly what Triton
keys its binaries on (signature, constexprs, divisibility attributes, options); ``compile_jobs`` compiles
them and reads the cubins back. Arguments are specialised by Triton's own ``native_specialize_impl``, the
function its launcher calls, so tensors and ints get the attributes a real launch would give them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner

from fusion.bench.static_cases import Spec, launches, specs
from fusion.bench.static_report import ARCHS, mma_class, occupancy
from fusion.kernels.triton_utils import fitting

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
OPTIONS = ("num_warps", "num_stages")  # launch options a host wrapper may pass next to the arguments


def _backend(target: int):
    return make_backend(GPUTarget("cuda", target, 32))


def kernel_name(kernel) -> str:
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def candidates(kernel, args: dict, smem_limit: int) -> list[tuple[int, triton.Config, bool]]:
    """(index, config, pruned) for every GPU config of ``kernel``; pruned ones fail the shared-memory rule."""
    if not isinstance(kernel, Autotuner):  # CUDA's defaults unless the wrapper passes its own
        return [(0, triton.Config({}, num_warps=args.get("num_warps", 4), num_stages=args.get("num_stages", 3)),
                 False)]
    kept = fitting(kernel.gpu_configs, args, kernel.smem_estimate, smem_limit)
    return [(j, c, not any(c is k for k in kept)) for j, c in enumerate(kernel.gpu_configs)]


def specialise(kernel, args: dict, config: triton.Config, target: int) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) of ``kernel`` launched with ``args`` under ``config``."""
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    backend, values = _backend(target), {**args, **config.kwargs}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        ty, key = native_specialize_impl(type(backend), value, p.is_const, not p.do_not_specialize,
                                         not p.do_not_specialize_on_alignment)
        signature[p.name] = ty
        if ty == "constexpr":  # ints equal to 1 become constants
            constexprs[p.name] = key
        elif isinstance(key, str):
            attrs[(i,)] = backend.parse_attr(key)
    options = {k: v for k, v in config.all_kwargs().items() if k not in config.kwargs and v is not None}
    return signature, constexprs, attrs, options


def _config_label(config: triton.Config) -> str:
    tiles = " ".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in config.kwargs.items())
    return f"{tiles} w{config.num_warps} s{config.num_stages}".strip()


def plan() -> None:
    """stdin {everything, targets, only} -> stdout: the distinct compile jobs as JSON."""
    payload = json.loads(sys.stdin.read())
    jobs: dict[str, dict] = {}
    for spec in specs(payload["everything"], payload.get("only")):
        for target in payload["targets"]:
            arch = ARCHS[target]
            for i, launch in enumerate(launches(spec, arch.sms)):
                for j, config, pruned in candidates(launch.kernel, launch.args, arch.smem_per_block):
                    if pruned and not payload["everything"]:
                        continue
                    sig, const, attrs, opts = specialise(launch.kernel, launch.args, config, target)
                    key = repr((kernel_name(launch.kernel), sig, sorted(const.items()), sorted(attrs.items()),
                                sorted(opts.items()), target))
                    job = jobs.setdefault(key, dict(spec=spec.to_dict(), target=target, launch=i, config=j,
                                                    pruned=pruned, used_by=[], order=len(jobs)))
                    job["used_by"].append(spec.label())
    print(json.dumps(list(jobs.values())))


def _read_cubin(cubin: bytes) -> tuple[dict, str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = lambda *a: subprocess.run([f"{BIN}/cuobjdump", *a, f.name], capture_output=True, text=True).stdout
        usage, sass = run("--dump-resource-usage"), run("-sass")
    line = next(ln for ln in usage.splitlines() if "REG:" in ln)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {k: int(fields[k]) for k in ("REG", "STACK", "LOCAL")}, sass


def compile_job(job: dict) -> dict:
    """Compile one job and read back its resources; a failure becomes the row's status."""
    spec, arch = Spec(**job["spec"]), ARCHS[job["target"]]
    launch = launches(spec, arch.sms)[job["launch"]]
    _, config, _ = candidates(launch.kernel, launch.args, arch.smem_per_block)[job["config"]]
    est = launch.kernel.smem_estimate(config, launch.args) if isinstance(launch.kernel, Autotuner) else None
    row = dict(kernel=kernel_name(launch.kernel), config=_config_label(config), target=arch.name,
               used_by=", ".join(job["used_by"]), order=job["order"], smem_est=est)
    sig, const, attrs, opts = specialise(launch.kernel, launch.args, config, job["target"])
    fn = launch.kernel.fn if isinstance(launch.kernel, Autotuner) else launch.kernel
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", job["target"], 32),
                                  options=opts)
        usage, sass = _read_cubin(compiled.asm["cubin"])
    except Exception as e:  # the report shows compile failures; the tests fail on them
        msg = str(e).strip().splitlines()
        return dict(row, status=f"error: {type(e).__name__}: {msg[-1][:200] if msg else ''}",
                    compile_s=round(time.perf_counter() - start, 2))
    smem = compiled.metadata.shared
    return dict(row, status="pruned" if job["pruned"] else "ok", regs=usage["REG"], spill_stack=usage["STACK"],
                spill_local=usage["LOCAL"], smem=smem, smem_limit=arch.smem_per_block,
                blocks_per_sm=occupancy(arch, usage["REG"], smem, config.num_warps), mma=mma_class(sass),
                compile_s=round(time.perf_counter() - start, 2))


def compile_jobs(out: str) -> None:
    """stdin: jobs as JSON -> the rows written to ``out``."""
    rows = [compile_job(job) for job in json.loads(sys.stdin.read())]
    with open(out, "w") as f:
        json.dump(rows, f)
