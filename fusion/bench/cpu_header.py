"""What ``fusion bench cpu`` ran on, printed before and after its table: the CPU and its capabilities, bf16
confirmed by measurement, the tuner and its choices, the roofs and the parity gates."""

from __future__ import annotations

import torch

from fusion.bench.common import print_table
from fusion.kernels import cpu_tune
from fusion.numerics import Agreement

# cpu_tune's feature flags in words, for the header
CAPABILITIES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512-BF16", "amx_bf16": "AMX",
                "asimd": "NEON", "sve": "SVE", "bf16": "Arm BF16"}


def machine_header(dtypes: tuple[str, ...], compile: bool, tune: bool) -> dict:
    """What the run ran on: the CPU, its capabilities, bf16 confirmed by measurement, the tuner, dtypes."""
    machine = cpu_tune.Machine.current()
    found = [word for flag, word in CAPABILITIES.items() if flag in machine.features]
    return {"machine": machine.describe(), "capabilities": found, "native_bf16": machine.native_bf16,
            "bf16_measured_faster": cpu_tune.native_bf16(),
            "tuner": cpu_tune.enabled(), "tune_file": str(cpu_tune.cache_path()), "dtypes": list(dtypes),
            "compile": compile, "tune": tune, "threads": torch.get_num_threads()}


def print_machine(header: dict) -> None:
    """The header's machine lines, printed before anything is timed."""
    print(f"machine: {header['machine']}")
    found = ", ".join(header["capabilities"]) or "none of AVX2 / AVX-512 / AMX"
    confirmed = ("yes" if header["bf16_measured_faster"] else
                 "no (no native bf16)" if not header["native_bf16"] else
                 "not measured (FUSION_TUNE=off)" if not header["tuner"] else "no, it measured no faster than fp32")
    print(f"capabilities: {found}; bf16 faster than fp32 by measurement: {confirmed}")
    print(f"tuner: on, choices remembered in {header['tune_file']}" if header["tuner"] else
          "tuner: off (FUSION_TUNE=off): today's rules are used, nothing is measured")
    print(f"dtypes: {', '.join(header['dtypes'])}; compile: {header['compile']}; tune first: {header['tune']}; "
          f"threads: {header['threads']}")


def _verdict(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def print_results(header: dict) -> None:
    """The header's lines known after the run: roofs, parity gates, the tuner's choices."""
    rates = ", ".join(f"{d} {g:.0f}" for d, g in header["matmul_GFLOP_s"].items())
    print(f"model: {header['params_M']:.1f}M params; roofs: read {header['read_GB_s']:.1f} GB/s, matmul GFLOP/s "
          f"{rates}")
    for d, p in header["parity"].items():
        if d == "fp32":
            print(f"parity fp32: fusion's greedy ids {'equal' if p['parity'] else 'DIFFER FROM'} HF's")
        else:
            print(f"parity {d} (teacher-forced on HF fp32's greedy text; mean KL <= {Agreement.KL_LIMIT:g} and every "
                  f"decisive top-1 kept): fusion KL {p['mean_kl']:.2e} {_verdict(p['parity'])}, HF {d} KL "
                  f"{p['hf_mean_kl']:.2e} {_verdict(p['hf_parity'])}")
    if not header["tuner"]:
        print("tuner choices: none, tuning is off (FUSION_TUNE=off)")
        return
    print(f"tuner choices for this machine ({len(header['choices'])}):")
    print_table([{"site": c["site"], "dtype": c["dtype"], "shape": str(tuple(c["shape"])), "choice": c["choice"],
                  "measured": ", ".join(f"{k} {s * 1e6:.0f} us" for k, s in c["seconds"].items())}
                 for c in header["choices"]])
    print()
