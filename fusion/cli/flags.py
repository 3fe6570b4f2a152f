"""Command-line flags made from a config dataclass's fields, so a knob is listed once (in the dataclass)."""

from __future__ import annotations

import argparse
from dataclasses import fields

_SCALARS = {"int": int, "float": float, "str": str}


def add_config_flags(parser: argparse.ArgumentParser, config_cls, *, skip: tuple[str, ...] = (),
                     choices: dict[str, tuple] | None = None) -> None:
    """``--field-name`` for each int / float / str / bool / tuple[str, ...] field (others are skipped).

    Every flag defaults to None, so only what the user types overrides a config or preset; help comes from
    ``field(metadata={"help": ...})``.
    """
    for f in fields(config_cls):
        kind = str(f.type).replace(" | None", "")
        if f.name in skip:
            continue
        flag, help_text = f"--{f.name.replace('_', '-')}", f.metadata.get("help")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "tuple[str, ...]":
            parser.add_argument(flag, action="append", default=None, help=f"{help_text} (repeatable)")
        elif kind in _SCALARS:
            parser.add_argument(flag, type=_SCALARS[kind], default=None, help=help_text,
                                choices=(choices or {}).get(f.name))


def config_overrides(args: argparse.Namespace, config_cls) -> dict:
    """The fields of ``config_cls`` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}
