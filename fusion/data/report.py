"""What reading a corpus skipped or repaired, counted by cause with a few examples each.

A skipped row or image is dropped (invalid JSON, a null value, a missing image ...); a repaired row is kept after
a fix (non-UTF-8 bytes dropped, a BOM removed, an animated image's first frame ...). The first occurrence of each
cause is logged as a warning, the rest only counted; ``summary()`` is printed at the end of a run and
``to_dict()`` goes into its metadata.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from fusion.files import write_json

log = logging.getLogger(__name__)

EXAMPLES_PER_CAUSE = 3
CORPUS_FILE = "corpus.json"  # in a trainer's output folder: the corpus spec and what reading it skipped and why
# repairs: the row is kept
NON_UTF8 = "non-UTF-8 bytes dropped"
BOM = "BOM removed"
ANIMATED = "animated image: first frame kept"
CROPPED = "crop dropped most of an image"
# skips that are not a row's or an image's own fault
UNTOKENIZABLE = "cannot tokenize"


def unknown_key(key: str) -> str:
    """The repair cause of a column no row shape uses (ignored, one warning per key)."""
    return f"unknown key {key!r} ignored"


class IngestReport:
    """Counts of rows read and kept, and of skips and repairs by cause, with up to 3 examples per cause."""

    def __init__(self, logged: set[str] | None = None) -> None:
        self.rows = 0
        self.kept = 0
        self.skipped: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.logged = set() if logged is None else logged  # causes already logged; reports may share it

    def clear(self) -> None:
        """Zero the counts (causes already logged stay logged)."""
        self.rows = self.kept = 0
        self.skipped.clear()
        self.repaired.clear()
        self.examples.clear()

    def _note(self, counter: Counter, cause: str, example: str, what: str) -> None:
        if cause not in self.logged:
            self.logged.add(cause)
            log.warning("%s (%s; further cases are counted, not logged)", example, what)
        counter[cause] += 1
        shown = self.examples.setdefault(cause, [])
        if len(shown) < EXAMPLES_PER_CAUSE:
            shown.append(example)

    def skip(self, cause: str, example: str) -> None:
        """A row or image dropped for ``cause``; ``example`` names it (``file:line: what is wrong``)."""
        self._note(self.skipped, cause, example, f"skipped: {cause}")

    def repair(self, cause: str, example: str) -> None:
        """A row kept after a fix."""
        self._note(self.repaired, cause, example, f"kept: {cause}")

    def merge(self, other: IngestReport) -> IngestReport:
        """Add ``other``'s counts (and examples, up to the limit) to this report; returns self."""
        self.rows += other.rows
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        for cause, shown in other.examples.items():
            mine = self.examples.setdefault(cause, [])
            mine += shown[:EXAMPLES_PER_CAUSE - len(mine)]
        return self

    def to_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(sorted(self.skipped.items())),
                "repaired": dict(sorted(self.repaired.items())), "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict) -> IngestReport:
        report = cls()
        report.rows, report.kept = d["rows"], d["kept"]
        report.skipped, report.repaired = Counter(d["skipped"]), Counter(d["repaired"])
        report.examples = {k: list(v) for k, v in d["examples"].items()}
        return report

    def summary(self, title: str) -> str:
        """A few lines for the end of a run: rows read, items kept (documents, texts or images), then each cause
        with its count and an example."""
        lines = [f"{title}: {self.rows} rows read, {self.kept} kept"]
        for heading, counter in (("skipped", self.skipped), ("kept after a fix", self.repaired)):
            for cause, n in counter.most_common():
                lines.append(f"  {heading}: {cause}: {n}  (e.g. {self.examples[cause][0]})")
        if not (self.skipped or self.repaired):
            lines.append("  nothing skipped or repaired")
        return "\n".join(lines)


def write_corpus_report(folder: str | os.PathLike, spec, report: IngestReport, **extra) -> Path:
    """``FOLDER/corpus.json``: the corpus spec, the merged report and ``extra`` fields; returns its path."""
    path = Path(folder) / CORPUS_FILE
    write_json(path, {"spec": spec.to_dict(), "report": report.to_dict(), **extra})
    return path
