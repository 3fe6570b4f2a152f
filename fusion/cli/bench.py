"""``fusion bench``: the benchmark suites (placeholder until fusion/bench lands)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.attention import main as attention

    attention(list(argv or []))
    return 0
