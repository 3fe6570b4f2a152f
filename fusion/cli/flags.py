"""Command-line flags made from a config dataclass's fields, so a knob is listed once (in the dataclass)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _scalar(hint):
    """``int | None`` -> int; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return hint


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f" (default: {f.default})"
    return ""


def add_config_flags(parser: argparse.ArgumentParser, config_cls, *, skip: tuple[str, ...] = (),
                     choices: dict[str, tuple] | None = None) -> None:
    """``--field-name`` for each bool, int, float, str and ``tuple[X, ...]`` field (others are skipped).

    Every flag defaults to None, so only what the user types overrides a config or preset; help comes from
    ``field(metadata={"help": ...})``, choices from ``metadata["choices"]`` or ``choices``.
    """
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        hint = _scalar(hints[f.name])
        if f.name in skip or hint is None:
            continue
        kw = dict(default=None, help=f.metadata.get("help", "") + _default_text(f),
                  choices=(choices or {}).get(f.name, f.metadata.get("choices")))
        flag = f"--{f.name.replace('_', '-')}"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=kw["help"])
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
            parser.add_argument(flag, nargs="+", type=typing.get_args(hint)[0], **kw)
        elif hint in (int, float, str):
            parser.add_argument(flag, type=hint, **kw)


def config_overrides(args: argparse.Namespace, config_cls) -> dict:
    """The fields of ``config_cls`` the user set on the command line (lists as tuples)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out
