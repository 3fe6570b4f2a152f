"""Refusing non-finite numbers (a checkpoint whose weights hold NaN / inf would otherwise generate silent garbage),
and measuring how closely a lower precision follows fp32."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding a NaN or an inf, (each tensor read once).

    ``aminmax`` reads each tensor once without a bool copy (NaN propagates, an inf shows as the min or max), far
    faster than ``isfinite().all()`` on a CPU (figures: benchmarks/RESULTS.md, "Figures moved out of code comments").
    """
    names = [k for k, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not names:
        return []
    bounds = torch.stack([torch.stack(torch.aminmax(tensors[k].detach())).float().cpu() for k in names])
    finite = torch.isfinite(bounds).all(1).tolist()
    return [k for k, ok in zip(names, finite, strict=True) if not ok]


def refuse_nonfinite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """A ValueError naming every tensor of ``where`` (a file) that holds NaN or inf."""
    bad = nonfinite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ValueError(f"{where}: NaN or inf in {len(bad)} tensor(s): {shown}; the checkpoint is corrupt "
                         "(pass check_finite=False to load it anyway)")


@dataclass(frozen=True)
class Agreement:
    """How closely lower-precision logits follow a reference's, position by position (teacher-forced: both read
    the same tokens). ``top1_kept``: the fraction of decisive positions (the reference's top-1 leads its top-2 by
    at least ``margin`` in probability) where both pick the same top-1."""

    mean_kl: float
    top1_kept: float
    decisive: int

    KL_LIMIT: ClassVar[float] = 1e-4

    @classmethod
    def of(cls, reference: torch.Tensor, logits: torch.Tensor, margin: float = 0.05) -> Agreement:
        """``reference``, ``logits``: [..., V] over the same positions; KL(reference || logits), in fp64."""
        ref, got = reference.double().flatten(0, -2).log_softmax(-1), logits.double().flatten(0, -2).log_softmax(-1)
        kl = (ref.exp() * (ref - got)).sum(-1)
        top2 = ref.exp().topk(2, dim=-1)
        decisive = (top2.values[:, 0] - top2.values[:, 1]) >= margin
        same = got.argmax(-1) == top2.indices[:, 0]
        kept = float(same[decisive].double().mean()) if decisive.any() else 1.0
        return cls(float(kl.mean()), kept, int(decisive.sum()))

    @property
    def ok(self) -> bool:
        """The bar a bf16 path must clear: mean KL <= 1e-4 and every decisive top-1 kept."""
        return self.mean_kl <= self.KL_LIMIT and self.top1_kept == 1.0
