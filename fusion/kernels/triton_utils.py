"""What the Triton ops share: jit constants, interpreter detection, launch checks, one launch record, autotuning.

A host wrapper describes each kernel call as a ``Launch`` (kernel, grid, arguments by name) and runs it; the
static report (``fusion.bench.static_report``) builds the same ``Launch`` from meta tensors and compiles it for a
GPU target, so the binary it reads back is the one the wrapper would launch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

# Globals read inside @triton.jit code must be constexpr objects: the compiler rejects plain Python floats.
LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))

SmemEstimate = Callable[[triton.Config, dict], int]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launch(*tensors: torch.Tensor) -> None:
    """Clear errors for tensors Triton cannot run on (CPU without the interpreter, mixed devices)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu" and not interpreting():
        raise RuntimeError("Triton kernels on CPU need TRITON_INTERPRET=1 set before triton is imported")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"Triton kernels run on CUDA (or the CPU interpreter), not {device.type}")


def upcast_dots(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 ``tl.dot`` operands as raw integers, so such kernels upcast to fp32."""
    return interpreting() and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact ("ieee") dots so fp32 results match fp32 references; half types ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum); tl.arange and tl.dot want such tile sides."""
    return max(minimum, triton.next_power_of_2(n))


@dataclass(frozen=True)
class Launch:
    """One kernel call as a host wrapper makes it: every argument by name, autotuned ones left to the tuner."""

    kernel: Any  # a JITFunction, or the Autotuner wrapping one
    grid: tuple | Callable[[dict], tuple]
    args: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        self.kernel[self.grid](**self.args)


def configs(gpu: list[triton.Config], interpret: triton.Config) -> list[triton.Config]:
    """Autotune candidates: the GPU list, or one config under the interpreter (it cannot benchmark)."""
    return [interpret] if interpreting() else gpu


def fitting(candidates: Sequence[triton.Config], named_args: dict, smem: SmemEstimate,
            limit: int) -> list[triton.Config]:
    """The configs whose estimated shared memory fits ``limit`` bytes (the smallest one if none does)."""
    kept = [c for c in candidates if smem(c, named_args) <= limit]
    return kept or [min(candidates, key=lambda c: smem(c, named_args))]


def device_smem_limit() -> int:
    """Opt-in shared memory per block of the current CUDA device, in bytes."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024)


def autotune(gpu: list[triton.Config], interpret: triton.Config, key: list[str], smem: SmemEstimate):
    """``triton.autotune`` over ``gpu`` pruned by the shared-memory rule ``smem``; keeps both lists on the tuner."""

    def prune(candidates, named_args, **kwargs):
        if interpreting():
            return list(candidates)
        return fitting(candidates, {**named_args, **kwargs}, smem, device_smem_limit())

    def wrap(fn):
        tuner = triton.autotune(configs=configs(gpu, interpret), key=key,
                                prune_configs_by={"early_config_prune": prune})(fn)
        tuner.gpu_configs, tuner.interpret_config, tuner.smem_estimate = gpu, interpret, smem
        return tuner

    return wrap
