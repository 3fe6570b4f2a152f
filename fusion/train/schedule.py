"""The learning-rate schedule both trainers use: linear warmup, then a cosine down to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR factor at 0-based ``step``: (step + 1) / warmup during warmup, then a cosine from 1 to ``min_ratio``
    reached at ``total`` (and held after it)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
