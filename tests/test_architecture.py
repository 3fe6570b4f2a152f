"""The layout rules of ARCHITECTURE.md, checked on the source so they stay true: small functions and modules,
command lines only in fusion/cli, no import cycle between fusion's parts, one spelling of the ignore index."""

import ast
import fnmatch
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusion"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 300
# Deprecated re-export modules kept one release at an old path (tests/test_deprecated_paths.py): each imports its
# new home, which may sit above it (fusion/model/hf_chameleon.py -> fusion/interop/), so the part graph leaves them
# out; they hold nothing but imports and the warning.
DEPRECATED_SHIMS = {"fusion/checkpoint.py", "fusion/model/hf_chameleon.py", "fusion/model/meta_chameleon.py",
                    "fusion/tokenizers/taming.py", "fusion/tokenizers/lightning_ckpt.py"}


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def is_kernel_file(path: Path) -> bool:
    """A file of Triton kernels, whose forward and backward stay together whatever its length."""
    return "@triton.jit" in path.read_text()


def test_the_walk_sees_the_package():
    names = {rel(p) for p in SOURCES}
    assert {"fusion/api.py", "fusion/cli/__init__.py", "fusion/model/transformer.py"} <= names


def test_functions_are_at_most_60_lines():
    long = [f"{rel(p)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in SOURCES for node in ast.walk(tree(p))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_modules_are_under_300_lines_except_kernel_files():
    big = [f"{rel(p)} ({n} lines)" for p in SOURCES
           if (n := len(p.read_text().splitlines())) >= MAX_MODULE_LINES and not is_kernel_file(p)]
    assert not big, big


def test_command_lines_live_in_fusion_cli():
    offenders = []
    for p in SOURCES:
        if rel(p).startswith("fusion/cli/"):
            continue
        module = tree(p)
        imports = {a.name for n in ast.walk(module) if isinstance(n, ast.Import) for a in n.names}
        imports |= {n.module for n in ast.walk(module) if isinstance(n, ast.ImportFrom) and n.module}
        mains = [n.name for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if "argparse" in imports or mains:
            offenders.append(rel(p))
    assert not offenders, offenders


def part_of(module: str) -> str | None:
    """fusion.model.cache -> 'model'; fusion.vocab -> 'vocab'; a non-fusion module -> None."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "fusion" and len(pieces) > 1 else None


def import_graph() -> dict[str, set[str]]:
    """Part -> the parts it imports (module-level and lazy imports alike); ``__main__`` entry shims, which only
    call into fusion/cli, the package's lazy ``__init__`` and the deprecated shims are left out."""
    graph: dict[str, set[str]] = {}
    for p in SOURCES:
        src = part_of(rel(p).removesuffix(".py").replace("/", "."))
        if p.name == "__main__.py" or p.parent == PACKAGE and p.name == "__init__.py" or rel(p) in DEPRECATED_SHIMS:
            continue
        for node in ast.walk(tree(p)):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:  # from fusion import checkpoint
                targets = [f"{node.module}.{a.name}" for a in node.names] if node.module == "fusion" else [node.module]
            for t in targets:
                dst = part_of(t)
                if dst and dst != src:
                    graph.setdefault(src, set()).add(dst)
    return graph


def test_deprecated_shims_only_reexport_and_warn():
    for path in sorted(DEPRECATED_SHIMS):
        body = tree(PACKAGE.parent / path).body
        kinds = [type(n).__name__ for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        warns = [n for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
                 and ast.unparse(n.value.func) == "warnings.warn"]
        assert set(kinds) <= {"Import", "ImportFrom", "Expr"} and len(warns) == kinds.count("Expr") == 1, path


def test_no_import_cycle_between_parts():
    graph = import_graph()
    assert graph["cli"] and "model" in graph["inference"]  # the walk found real edges
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path
                            else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_ignore_index_is_spelt_once():
    literal = re.compile(r"(?<![\w.])-100(?![\w.])")
    hits = [f"{rel(p)}:{i}: {line.strip()}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if literal.search(line)]
    assert len(hits) == 1 and hits[0].startswith("fusion/vocab.py") and "IGNORE_INDEX = -100" in hits[0], hits


def test_architecture_md_lists_every_module():
    """Every module is named in ARCHITECTURE.md by its full backticked path (the kernel folder may be listed by a
    glob), and every path named there exists: a new module cannot land without its line on the map."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(fusion/[\w/*]+\.py)`", text))
    globs = {n for n in named if "*" in n}
    assert all(g.startswith("fusion/kernels/") for g in globs), f"globs allowed for kernel files only: {globs}"
    modules = {rel(p) for p in SOURCES if p.name != "__init__.py" or p.read_text().strip()}
    unlisted = sorted(m for m in modules if m not in named and not any(fnmatch.fnmatch(m, g) for g in globs))
    stale = sorted(n for n in named - globs if not (PACKAGE.parent / n).is_file())
    assert not unlisted, f"ARCHITECTURE.md does not list: {unlisted}"
    assert not stale, f"ARCHITECTURE.md lists modules that do not exist: {stale}"
