"""Parallelism applied from the outside: process groups from torchrun, FSDP2 / DDP, activation checkpointing, compile.

Model code stays pure math (as in torchtitan's ``parallelize.py``): this module finds the transformer blocks
and wraps them. ``fully_shard`` goes on every block and then on the root, so each block's parameters are
gathered just before it runs and freed after. ``together`` makes an error on one rank an error on all (no rank
is left waiting at a collective); ``prepare_on_main`` lets rank 0 work for hours (tokenizing) outside the
collective timeout.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long ranks wait for rank 0 to prepare data; tokenizing a large corpus takes as long as it takes, and
# torchrun stops the waiting ranks anyway if rank 0 dies.
PREPARE_TIMEOUT = datetime.timedelta(days=1)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: float = 600) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK); single process otherwise.

    nccl on CUDA, gloo on the CPU; a collective waiting longer than ``timeout_s`` fails.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of blocks (``layers`` or ``blocks``)."""
    for name in ("layers", "blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise TypeError(f"{type(model).__name__} has no 'layers' / 'blocks' ModuleList to wrap")


def compile_blocks(model: nn.Module, *, on: bool = True) -> None:
    """Compile each block in place (``on``), or give each its eager forward back. Inference calls the blocks with
    other shapes and a KV cache, which would recompile the training graphs until Dynamo's limit and then run
    them eagerly; ``nn.Module`` has no public undo of ``compile()`` (pickling drops the same attribute)."""
    for block in transformer_blocks(model):
        if on:
            block.compile()
        else:
            block._compiled_call_impl = None


class LossModule(nn.Module):
    """``forward`` = ``model.loss``: gives DDP / FSDP one call to hook for the whole training step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, targets, doc_ids=None):
        return self.model.loss(ids, targets, doc_ids=doc_ids)


def parallelize(model: nn.Module, info: DistInfo, *, mode: str = "fsdp", activation_checkpointing: bool = False,
                compile: bool = False) -> LossModule:
    """Wrap ``model`` for training; returns a LossModule whose ``forward(ids, targets, doc_ids)`` is the loss.
    ``mode`` is ``TrainConfig.parallel`` (checked there): ``"ddp"``, else FSDP2.

    Order matters: checkpoint and compile each block first, then shard (FSDP2's hooks go outermost). Mixed
    precision comes from autocast in the loop, so parameters and gradient reductions stay fp32.
    """
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint  # keeps parameter names unchanged

        for block in blocks:
            checkpoint(block)
    if compile:
        compile_blocks(model)
    wrapped = LossModule(model)
    if not info.enabled:
        return wrapped
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(wrapped, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(wrapped)
    return wrapped


def all_reduce_(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when distributed, a no-op otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def current_dist() -> DistInfo:
    """The running process group's rank and size (a single process, on CUDA when present, if none runs)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                        else torch.device("cpu"))
    return init_distributed()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Every rank waits for all. On gloo a monitored barrier: its timeout names a rank that did not arrive."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            dist.monitored_barrier()  # the process group's timeout
        else:
            dist.barrier()


# How torch.distributed words a collective that gave up waiting: gloo's recv, its monitored barrier, NCCL's
# watchdog. Its errors are plain RuntimeErrors, told apart only by their text.
_TIMEOUT_WORDS = ("timed out", "timeout", "monitoredbarrier")
_LATE_RANK = re.compile(r"Rank (\d+) failed to pass monitoredBarrier")


def timed_out(error: BaseException) -> bool:
    """Whether ``error``, or an error it came from, is a collective that waited past the process group's timeout."""
    while error is not None:
        if isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _TIMEOUT_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def late_rank(error: BaseException) -> int | None:
    """The rank a monitored barrier reports as not arrived, when it does."""
    found = _LATE_RANK.search(str(error))
    return int(found.group(1)) if found else None


def together(fn: Callable[[], T], *, main_only: bool = False) -> T | None:
    """Run ``fn`` on every rank (or on rank 0 only); when it raised anywhere, every rank raises that error, so
    no rank is left waiting at the next collective for one that failed. Returns ``fn``'s result (None where
    it did not run)."""
    result, error = None, None
    if not main_only or current_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    errors = [e for e in gather_objects(error) if e is not None]
    if errors:
        raise error if error is not None else errors[0]
    return result


def prepare_on_main(fn: Callable[[], T]) -> None:
    """Run ``fn`` on rank 0 while the other ranks wait, outside the process group's timeout.

    The wait is a barrier on a separate gloo group with ``PREPARE_TIMEOUT``: rank 0 may tokenize a corpus for
    hours without tripping the collective timeout that guards training.
    """
    if not (dist.is_available() and dist.is_initialized()):
        fn()
        return
    group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    error = [None]
    if dist.get_rank() == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - shared with the waiting ranks, then re-raised
            error[0] = e
    dist.broadcast_object_list(error, src=0, group=group)
    dist.destroy_process_group(group)
    if error[0] is not None:
        raise error[0]


def leave_process_group() -> None:
    """End of a distributed run: every rank arrives, then every process group is destroyed while the
    interpreter is whole.

    FSDP's device mesh keeps process groups alive in reference cycles; left for interpreter finalization, gloo's
    finished work objects release tensors without a GIL to take and the process aborts ("terminate called
    without an active exception") after a run that saved everything. Call it after the model and trainer are gone.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
