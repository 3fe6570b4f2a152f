"""Stop strings: found in the decoded text of generated ids, on the host.

A stop string ends generation at the token that completes it; the output text keeps the stop string and
drops everything after it (as HF's ``stop_strings``). Text runs are the stretches between images, each
decoded on its own, so a stop never spans an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fusion.document import Document, Text
from fusion.tokenizers.grammar import text_runs
from fusion.vocab import Vocab


def stop_end(text: str, stops: Sequence[str]) -> int | None:
    """End index of the earliest-completing stop string in ``text``, or None."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


class StopStrings:
    """Host-side stop-string matcher for id streams of one vocabulary (strings checked by GenerationConfig)."""

    def __init__(self, stops: Sequence[str], vocab: Vocab, decode_text: Callable[[torch.Tensor], str]) -> None:
        self.stops, self.vocab, self._text = list(stops), vocab, decode_text

    def __call__(self, ids: torch.Tensor) -> int | None:
        """Length of the shortest prefix of ``ids`` whose text holds a stop string, or None."""
        for run in text_runs(ids, self.vocab):
            if stop_end(self._text(ids[run.start:run.end]), self.stops) is None:
                continue
            lo, hi = run.start + 1, run.end  # decoded prefixes only grow: binary search the completing token
            while lo < hi:
                mid = (lo + hi) // 2
                if stop_end(self._text(ids[run.start:mid]), self.stops) is None:
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
