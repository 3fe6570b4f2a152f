"""Small helpers shared by the Triton ops: interpreter detection, launch checks, config choice."""

from __future__ import annotations

import os

import torch
import triton


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


def configs(gpu: list[triton.Config], interpret: triton.Config) -> list[triton.Config]:
    """Autotune candidates: the GPU list, or one config under the interpreter (it cannot benchmark)."""
    return [interpret] if interpreting() else gpu


def pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum); tl.arange and tl.dot want such tile sides."""
    return max(minimum, triton.next_power_of_2(n))
