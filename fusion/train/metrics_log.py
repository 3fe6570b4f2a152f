"""A run's ``metrics.jsonl`` (one JSON object per optimizer step) and the ``loss.png`` drawn from it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fusion.checkpoint_layout import LOSS_PLOT, METRICS
from fusion.files import atomic_path

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends step records to ``out_dir/metrics.jsonl``; only the main process writes."""

    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.path = self.out_dir / METRICS

    def append(self, record: dict) -> None:
        if self.enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """Every readable record; a torn line (a run killed mid-write) is dropped with a warning."""
        if not self.path.is_file():
            return []
        rows = []
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                row = json.loads(line) if line else None
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            elif line:
                log.warning("%s line %d is not a complete record (torn by a killed run?): dropped: %.80r",
                            self.path, i, line)
        return rows

    def truncate(self, step: int) -> None:
        """Keep the records up to ``step`` (dropping a killed run's tail and torn lines): a resumed curve has no
        duplicates."""
        if not (self.enabled and self.path.is_file()):
            return
        rows = [r for r in self.records() if r["step"] <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def plot(self) -> None:
        """loss.png: training loss per modality, plus held-out CE."""
        rows = self.records()
        if not (self.enabled and rows):
            return
        from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for key in ("loss", "ce_text", "ce_image", "eval_ce"):
            pts = [(r["step"], r[key]) for r in rows if key in r and not r.get("skipped")]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key, marker="o" if key == "eval_ce" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(self.out_dir / LOSS_PLOT) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
