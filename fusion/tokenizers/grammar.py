"""The id stream's grammar, parsed in one place: text and control ids, and images as ``boi, N codes, eoi``.

``ImageSpans`` reads one id at a time (streaming decodes through it); ``split`` cuts a whole stream into text
runs and images with it. A stream may end inside an image (a prompt left one open, or generation stopped);
any other break of the grammar is a ValueError naming the position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fusion.vocab import Vocab

TEXT, CONTROL, BOI, CODE, EOI = "text", "control", "boi", "code", "eoi"


class ImageSpans:
    """One id at a time -> its kind (TEXT, CONTROL, BOI, CODE, EOI), checking that every image is exact."""

    def __init__(self, vocab: Vocab, n_codes: int) -> None:
        self.vocab, self.n_codes = vocab, n_codes
        self.codes_left: int | None = None  # while inside an image: codes still owed (0: eoi is next)
        self.position = 0
        self._control = {vocab.bos_id, vocab.eos_id, vocab.pad_id}

    def feed(self, t: int) -> str:
        v, i = self.vocab, self.position
        if not 0 <= t < v.size:
            raise ValueError(f"id {t} at position {i} is out of the vocabulary [0, {v.size})")
        self.position += 1
        if self.codes_left is not None:
            if (self.codes_left > 0 and v.is_image_id(t)) or (self.codes_left == 0 and t == v.eoi_id):
                self.codes_left = self.codes_left - 1 if t != v.eoi_id else None
                return CODE if self.codes_left is not None else EOI
            raise ValueError(f"malformed image span at position {i}: expected boi, {self.n_codes} image codes, "
                             f"eoi; got id {t} with {self.codes_left} codes still owed")
        if t == v.boi_id:
            self.codes_left = self.n_codes
            return BOI
        if t == v.eoi_id or v.is_image_id(t):
            raise ValueError(f"image id {t} outside an image span at position {i}")
        return CONTROL if t in self._control else TEXT


@dataclass(frozen=True)
class Run:
    """``ids[start:end]`` is a run of text ids, or an image's codes (``closed``: its eoi follows)."""

    kind: str  # TEXT or "image"
    start: int
    end: int
    closed: bool = True


def split(ids: Sequence[int], vocab: Vocab, n_codes: int) -> list[Run]:
    """Text runs (maximal stretches of text ids) and images, in stream order; control ids belong to neither."""
    spans = ImageSpans(vocab, n_codes)
    runs: list[Run] = []
    start, kind = None, None
    for i, t in enumerate(ids):
        what = spans.feed(int(t))
        if kind == TEXT and what != TEXT:
            runs.append(Run(TEXT, start, i))
            kind = None
        if what == TEXT and kind is None:
            start, kind = i, TEXT
        elif what == BOI:
            start, kind = i + 1, "image"
        elif what == EOI:
            runs.append(Run("image", start, i))
            kind = None
    if kind is not None:
        runs.append(Run(kind, start, len(ids), closed=kind == TEXT))
    return runs

