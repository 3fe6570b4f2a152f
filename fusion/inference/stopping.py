"""Stop strings: a stop string ends a row at the token that completes it; the output text keeps the stop string
and drops everything after it (as HF's ``stop_strings``). Streaming decodes each text run (the stretch between
images) on the host and asks ``stop_end`` of it, so a stop never spans an image."""

from __future__ import annotations

from collections.abc import Sequence


def stop_end(text: str, stops: Sequence[str]) -> int | None:
    """End index of the earliest-completing stop string in ``text``, or None."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return min(ends) if ends else None
