"""Model and optimizer state through ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards.

The saved tensors are the logical (unsharded) ones, each stored as the pieces the ranks held, so a checkpoint
written by N FSDP2 or DDP ranks loads on any other number: DCP reshards on load. A tied ``lm_head`` is saved
once, as ``embed.weight``, and comes back tied.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from fusion.model.weights import quiet_when_local, read_local
from fusion.numerics import nonfinite_tensors


class CheckpointDiskFull(OSError):
    """The disk filled up while a checkpoint was written; the previous checkpoint is intact."""


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``{"model": ..., "optim": ...}`` with sharded (DTensor) values under FSDP2, fully-qualified names as keys."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    if _tied(model):
        model_sd.pop("lm_head.weight")
    return {"model": model_sd, "optim": optim_sd}


def _tied(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "tie_embeddings", False))


def save_state(state: dict, folder: Path) -> None:
    """Write ``state`` as a DCP folder (a collective: every rank calls it and writes its part)."""
    local = not (dist.is_available() and dist.is_initialized())
    with quiet_when_local(local):
        dcp.save(state, checkpoint_id=folder, no_dist=local)


def read_state(state: dict, folder: Path) -> None:
    """Fill ``state``'s tensors from a DCP folder: a collective under torchrun, else this process alone."""
    if dist.is_available() and dist.is_initialized():
        dcp.load(state, checkpoint_id=folder)
    else:
        read_local(state, folder)


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load model and optimizer state from a DCP folder into the (possibly sharded) live model and optimizer."""
    state = training_state(model, optimizer)  # the targets: this run's layout, DCP reshards into it
    read_state(state, folder)
    if _tied(model):
        state["model"]["lm_head.weight"] = state["model"]["embed.weight"]
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def tensors(state: dict) -> list[torch.Tensor]:
    """Every tensor in a nested state dict."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []


def state_bytes(state: dict) -> int:
    """Bytes of the logical tensors (a sharded tensor counts whole): what the checkpoint takes on disk."""
    return sum(t.numel() * t.element_size() for t in tensors(state))


def non_finite(model_state: dict) -> list[str]:
    """Names of floating tensors with a NaN / inf in this rank's part."""
    return nonfinite_tensors({k: t.to_local() if isinstance(t, DTensor) else t for k, t in model_state.items()})


def is_disk_full(error: BaseException) -> bool:
    """An ENOSPC anywhere in ``error``: its cause chain, or any rank's failure inside a DCP CheckpointException."""
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if isinstance(e, CheckpointException):
            stack += [failure[0] for failure in e.failures.values()]
        stack += [e.__cause__, e.__context__]
    return False


def disk_full_error(folder: Path, needed: int, previous: Path | None) -> CheckpointDiskFull:
    """The one clear error for a full disk: the folder, the bytes a checkpoint needs, what is free, what is kept."""
    free = shutil.disk_usage(folder.parent).free
    kept = f"the previous checkpoint {previous} is intact" if previous else "there is no previous checkpoint"
    return CheckpointDiskFull(errno.ENOSPC, f"no space left on device while writing the checkpoint {folder}: it "
                              f"needs about {needed:,} bytes ({needed / 2**30:.2f} GiB), {free:,} bytes are free on "
                              f"{folder.parent}; {kept}. Free space (or lower keep_last) and resume.")
