"""``fusion bench SUITE [options]``: one sub-command per suite in ``fusion.bench.SUITES``.

Each sub-command's flags are generated from its suite's ``Options`` dataclass (type, default, help, choices),
so a suite's options are written once. Every suite prints its table and writes ``OUT/SUITE.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Sequence
from pathlib import Path

from fusion.bench import SUITES
from fusion.cli.flags import add_config_flags, config_overrides


def suite_parser(sub, name: str, options_cls: type) -> argparse.ArgumentParser:
    """The sub-command of suite ``name``, generated from ``options_cls``'s fields."""
    module_doc = importlib.import_module(SUITES[name][0]).__doc__ or ""
    parser = sub.add_parser(name, help=SUITES[name][1], description=module_doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, options_cls)
    if "out" not in {f.name for f in dataclasses.fields(options_cls)}:
        parser.add_argument("--out", default="bench_out", help="folder for SUITE.csv and SUITE.md")
    return parser


def _write_markdown(rows: list[dict], path: Path) -> None:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from fusion.bench.common import print_table, write_csv

    argv = list(argv or [])
    top = argparse.ArgumentParser(prog="fusion bench", description="Benchmark suites (timings need a CUDA GPU; "
                                  "`static` runs anywhere).")
    sub = top.add_subparsers(dest="suite", metavar="SUITE", required=True)
    chosen = argv[0] if argv and argv[0] in SUITES else None
    for name, (_, help_text) in SUITES.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)  # flags only for the suite that runs: no imports for --help
    if chosen is None:
        top.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(SUITES[chosen][0])
    suite_parser(sub, chosen, module.Options)
    args = top.parse_args(argv)
    options = module.Options(**config_overrides(args, module.Options))
    out = Path(getattr(options, "out", None) or args.out)
    rows = module.run(options)
    if rows:
        print_table(rows)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out / f"{chosen}.csv")
        _write_markdown(rows, out / f"{chosen}.md")
        print(f"wrote {out / chosen}.csv and .md")
    return 0
