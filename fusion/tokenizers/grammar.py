"""The id stream's grammar, parsed in one place: text and control ids, and images as ``boi, N codes, eoi``.

``ImageSpans`` reads one id at a time (streaming decodes through it); ``split`` cuts a whole stream into text
runs and images with it. A stream may end inside an image (a prompt left one open, or generation stopped);
any other break of the grammar is a ValueError naming the position.

Where an image sits is worked out here too, once: boi at b, its N codes at b + 1 .. b + N, eoi at b + N + 1.
``image_length``, ``codes_owed``, ``ids_to_close`` and ``boi_position`` are plain arithmetic, so they take ints or
tensors alike; ``spans_after`` moves a batch of rows' span state on the device (the decode step's, compiled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusion.rows import IMAGE_KIND, TEXT_KIND
from fusion.vocab import Vocab

# TEXT_KIND / IMAGE_KIND (a run's kind) live in fusion.rows, below this layer; importable from here as well.
TEXT, CONTROL, BOI, CODE, EOI = TEXT_KIND, "control", "boi", "code", "eoi"  # what ImageSpans.feed names an id
Ints = int | torch.Tensor  # an int, or a tensor of them


def image_length(n_codes: Ints) -> Ints:
    """Ids a whole image takes: boi, its N codes, eoi."""
    return n_codes + 2


def codes_owed(n_codes: Ints, written: Ints) -> Ints:
    """Codes an open image still owes once ``written`` are out (0: eoi is next)."""
    return n_codes - written


def ids_to_close(n_codes: Ints, written: Ints = 0) -> Ints:
    """Ids that finish an open image with ``written`` codes out: the codes it owes, then eoi."""
    return codes_owed(n_codes, written) + 1


def boi_position(end: Ints, written: Ints) -> Ints:
    """Where the boi sits of an image whose ``written`` codes end just before ``end``."""
    return end - written - 1


def spans_after(in_image: torch.Tensor, owed: torch.Tensor, count: torch.Tensor, is_boi: torch.Tensor,
                is_eoi: torch.Tensor, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' (inside an image, codes owed) [B] after ``count`` more ids each, of which only the last may be boi or
    eoi (``is_boi`` / ``is_eoi``): ``ImageSpans.feed``'s rule, many ids at a time, with no host sync."""
    codes = torch.where(in_image, count - is_eoi.long(), 0)
    return (in_image & ~is_eoi) | is_boi, torch.where(is_boi, n_codes, owed - codes)


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

    kind: str  # TEXT_KIND or IMAGE_KIND
    start: int
    end: int
    closed: bool = True

    @property
    def written(self) -> int:
        """Ids in the run: for an image, its codes written so far."""
        return self.end - self.start

    @property
    def boi(self) -> int:
        """An image's boi position (its codes follow it)."""
        return boi_position(self.end, self.written)

    @property
    def span(self) -> slice:
        """An image's ids from its boi through its eoi (through the stream's end if it is left open)."""
        return slice(self.boi, self.end + 1 if self.closed else self.end)


def split(ids: Sequence[int], vocab: Vocab, n_codes: int) -> list[Run]:
    """Text runs (maximal stretches of text ids) and images, in stream order; control ids belong to neither."""
    spans = ImageSpans(vocab, n_codes)
    runs: list[Run] = []
    start, kind = None, None
    for i, t in enumerate(ids):
        what = spans.feed(int(t))
        if kind == TEXT_KIND and what != TEXT:
            runs.append(Run(TEXT_KIND, start, i))
            kind = None
        if what == TEXT and kind is None:
            start, kind = i, TEXT_KIND
        elif what == BOI:
            start, kind = i + 1, IMAGE_KIND
        elif what == EOI:
            runs.append(Run(IMAGE_KIND, start, i))
            kind = None
    if kind is not None:
        runs.append(Run(kind, start, len(ids), closed=kind == TEXT_KIND))
    return runs

def open_codes(ids: Sequence[int], vocab: Vocab, n_codes: int) -> int | None:
    """Codes already written in an image the stream leaves open (boi without eoi), or None."""
    runs = split(ids, vocab, n_codes)
    return runs[-1].written if runs and not runs[-1].closed else None


def images_closed(ids: list[int], vocab: Vocab) -> int:
    """Images a stream finishes (its eoi ids)."""
    return ids.count(vocab.eoi_id)
