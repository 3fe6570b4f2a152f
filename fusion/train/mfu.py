"""Model FLOPs utilisation: achieved model FLOP/s over the device's dense bf16 peak, defined once.

Training FLOPs per token come from ``Transformer.flops_per_token`` (forward + backward, PaLM's 6N + attention);
activation recomputation is not counted, as MFU's definition asks.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
PEAK_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "A100": 312e12,
}


def peak_flops(device: torch.device | str) -> float | None:
    """The table's peak for ``device`` (matched by the CUDA device name); None on a CPU or an unknown GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Fraction of peak a training run achieves; None when the peak is unknown."""
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / peak
