"""Which dtype a training run computes in: "auto" resolved on the device (``cpu_tune.auto_dtype``), and the dtype
a saved run trained in, which a resume keeps."""

from __future__ import annotations

import logging

import torch

from fusion.kernels import cpu_tune

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The compute dtype name for a config's ``dtype`` on ``device`` ("auto": ``cpu_tune.auto_dtype``), logged
    with the reason."""
    name = dtype if dtype != "auto" else "bf16" if cpu_tune.auto_dtype(device) == torch.bfloat16 else "fp32"
    log.info("training in %s (%s)", "bf16 autocast" if name == "bf16" else "fp32", _why(dtype, name, device))
    return name


def _why(dtype: str, name: str, device: torch.device) -> str:
    if dtype != "auto":
        return f"dtype={dtype}"
    if device.type != "cpu":
        return f"auto on {device.type}"
    if name == "bf16":
        return "auto: the CPU has native bf16 and it measured faster than fp32"
    if not cpu_tune.Machine.current().native_bf16:
        return "auto: the CPU has no native bf16"
    if not cpu_tune.enabled():
        return "auto: FUSION_TUNE=off"
    return "auto: bf16 measured no faster than fp32 on this CPU"


def recorded_dtype(trainer_state: dict, device: torch.device) -> str | None:
    """The dtype a saved run trained in: recorded in its trainer state, or, for a state saved before dtypes were
    recorded under "auto", what auto meant then (bf16 on CUDA only); None for an older explicit dtype."""
    recorded = trainer_state.get("dtype")
    if recorded is None and trainer_state["config"].get("dtype") == "auto":
        recorded = "bf16" if device.type == "cuda" else "fp32"
    return recorded
