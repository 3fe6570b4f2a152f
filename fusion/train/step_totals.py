"""What a training or eval step adds up over micro-batches and ranks, by name: stacked in ``TOTALS`` order,
all-reduced once, and read back as a dict from which the logged metrics are derived.

Sums are fp64, so adding many micro-batches and ranks loses nothing a logged value shows. A mean over
tokens travels as mean * weight, its weight's total beside it, and is divided only after the reduction.
"""

from __future__ import annotations

import torch

from fusion.train.distributed import all_reduce_

# The one layout of the reduced vector. loss, ce and z_loss are weighted by the micro-batch's weight (its share
# of the step's targets in training, its target count in eval); ce_text / ce_image by their own token counts.
TOTALS = ("loss", "ce", "z_loss", "ce_text", "ce_image", "n_text", "n_image", "targets")


def contributions(out, weight: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """One micro-batch's part of every total, from the model's ``LossOutput`` (read by field name)."""
    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().double()

    return {"loss": f64(out.loss) * weight, "ce": f64(out.ce) * weight, "z_loss": f64(out.z_loss) * weight,
            "ce_text": f64(out.ce_text) * f64(out.n_text), "ce_image": f64(out.ce_image) * f64(out.n_image),
            "n_text": f64(out.n_text), "n_image": f64(out.n_image), "targets": f64(targets)}


class StepTotals:
    """Running totals on this rank; ``reduced()`` sums them over the ranks in one all-reduce."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(TOTALS), dtype=torch.float64, device=device)

    def add(self, out, weight: torch.Tensor, targets: torch.Tensor) -> None:
        parts = contributions(out, weight, targets)
        self.sums += torch.stack([parts[name] for name in TOTALS])

    def reduced(self) -> dict[str, float]:
        """Every rank's totals added up (a collective), by name."""
        return dict(zip(TOTALS, all_reduce_(self.sums).tolist(), strict=True))


def per_token(totals: dict[str, float], name: str, count: str) -> float:
    """A token mean from its weighted total; 0 where there were no such tokens."""
    return totals[name] / max(totals[count], 1)


def train_metrics(totals: dict[str, float]) -> dict[str, float]:
    """The step's losses as logged: loss, ce and z_loss are already means (weights add up to 1)."""
    return {"loss": totals["loss"], "ce": totals["ce"], "z_loss": totals["z_loss"],
            "ce_text": per_token(totals, "ce_text", "n_text"), "ce_image": per_token(totals, "ce_image", "n_image")}


def eval_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Held-out CE as logged: overall, text, image."""
    return {"eval_ce": per_token(totals, "ce", "targets"), "eval_ce_text": per_token(totals, "ce_text", "n_text"),
            "eval_ce_image": per_token(totals, "ce_image", "n_image")}
