"""The layout rules of ARCHITECTURE.md, checked on the source so they stay true: small functions and modules,
command lines only in fusion/cli, no import cycle between fusion's parts, one spelling of the ignore index."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusion"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 300


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
    call into fusion/cli, and the package's lazy ``__init__`` are left out."""
    graph: dict[str, set[str]] = {}
    for p in SOURCES:
        src = part_of(rel(p).removesuffix(".py").replace("/", "."))
        if p.name == "__main__.py" or p.parent == PACKAGE and p.name == "__init__.py":
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
