"""Stop strings: found in the decoded text of generated ids, on the host.

A stop string ends generation at the token that completes it; the output text keeps the stop string and
drops everything after it (as HF's ``stop_strings``). Text runs are the stretches between images, each
decoded on its own, so a stop never spans an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fusion.document import Document, Text
from fusion.vocab import Vocab


def text_id_mask(vocab: Vocab) -> torch.Tensor:
    """Bool [V]: ids that decode to text (text pieces; no specials, no image codes)."""
    mask = vocab.text_mask()
    mask[vocab.eos_id] = False
    return mask


def stop_end(text: str, stops: Sequence[str]) -> int | None:
    """End index of the earliest-completing stop string in ``text``, or None."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


class StopStrings:
    """Host-side stop-string matcher for id streams of one vocabulary."""

    def __init__(self, stops: Sequence[str], vocab: Vocab, decode_text: Callable[[list[int]], str]) -> None:
        if isinstance(stops, str):
            stops = [stops]
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty str, got {stops!r}")
        self.stops, self.vocab, self._decode = list(stops), vocab, decode_text

    def _text(self, ids: torch.Tensor) -> str:
        return self._decode(self.vocab.text_pieces(ids).tolist())

    def text_runs(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """[start, end) ranges of maximal stretches of text ids (no specials, no image codes)."""
        is_text = text_id_mask(self.vocab)[ids].tolist()
        runs, start = [], None
        for i, t in enumerate(is_text + [False]):
            if t and start is None:
                start = i
            elif not t and start is not None:
                runs.append((start, i))
                start = None
        return runs

    def __call__(self, ids: torch.Tensor) -> int | None:
        """Length of the shortest prefix of ``ids`` whose text holds a stop string, or None."""
        for start, end in self.text_runs(ids):
            if stop_end(self._text(ids[start:end]), self.stops) is None:
                continue
            lo, hi = start + 1, end  # decoded prefixes only grow: binary search the completing token
            while lo < hi:
                mid = (lo + hi) // 2
                if stop_end(self._text(ids[start:mid]), self.stops) is None:
                    lo = mid + 1
                else:
                    hi = mid
            return lo
        return None

    def trim(self, doc: Document) -> Document:
        """Cut the document right after its first stop string."""
        for i, seg in enumerate(doc.segments):
            if isinstance(seg, Text) and (end := stop_end(seg.text, self.stops)) is not None:
                return Document(doc.segments[:i] + [Text(seg.text[:end])])
        return doc
