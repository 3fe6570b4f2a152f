"""Runs of equal document ids along a packed sequence: where they start, and what follows from that.

Packing lays documents out as contiguous runs of ``doc_ids [B, T]``; attention stays inside a run and positions
restart at each run. Every helper derives from ``run_starts`` and stays on the device (no host sync).
"""

from __future__ import annotations

import torch


def run_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: True at the first token of each run of equal ids (always at t = 0)."""
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts


def _positions(doc_ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)


def run_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the [lo, hi) of its run: int32 [B, T] each, contiguous."""
    T = doc_ids.shape[1]
    idx = _positions(doc_ids)
    starts = run_starts(doc_ids)
    ends = torch.ones_like(starts)  # a run ends where the next one starts, and at T
    ends[:, :-1] = starts[:, 1:]
    lo = torch.where(starts, idx, 0).cummax(1).values
    hi = torch.where(ends, idx + 1, T).flip(1).cummin(1).values.flip(1)
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous()


def run_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions [B, T] (int64) that restart at 0 at every run start."""
    idx = _positions(doc_ids)
    return idx - torch.where(run_starts(doc_ids), idx, 0).cummax(1).values


def run_index(doc_ids: torch.Tensor) -> torch.Tensor:
    """The run number of each token [B, T] (int64), counted from 0 in each row."""
    return run_starts(doc_ids).long().cumsum(1) - 1
