"""Named sizes. Every config has a ``NAME_PRESETS = {name: {field: value}}`` table beside it and a
``preset(name, **overrides)`` classmethod that reads it through ``pick_preset``."""

from __future__ import annotations


def pick_preset(table: dict[str, dict], name: str, what: str) -> dict:
    """A copy of preset ``name``'s fields from ``table``; a ValueError listing the known names otherwise."""
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; presets are {sorted(table)}")
    return dict(table[name])
