"""Package structure: the config package imports no runtime module, and at2po's modules have no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "at2po"


def test_the_config_package_imports_no_runtime_module() -> None:
    code = (
        "import sys, at2po.config\n"
        "runtime = ('at2po.rollout', 'at2po.agent', 'at2po.train', 'at2po.core', 'at2po.commands')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy', 'vllm')\n"
        "             or m.startswith(runtime))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG.parent).stdout.strip()
    assert out == "", f"importing at2po.config pulled in: {out}"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """at2po modules imported at module level (not inside functions, not under ``if TYPE_CHECKING``)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    me = _module(path)
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                out.add(n)
    return out


def test_no_import_cycles_in_the_package() -> None:
    files = {p: _module(p) for p in PKG.rglob("*.py")}
    modules = set(files.values())
    graph: dict[str, set[str]] = {}
    for p, m in files.items():
        edges = set()
        for t in _top_level_imports(p, modules):
            edges.add(t)
            # importing a.b.c from outside a.b first runs a.b's __init__ (a package importing its own
            # submodules is not a cycle); the top-level at2po/__init__ imports nothing
            parts = t.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in modules and not (m == parent or m.startswith(parent + ".")):
                    edges.add(parent)
        graph[m] = edges
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles[:5])
