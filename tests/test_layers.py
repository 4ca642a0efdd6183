"""The layers point down (docs/architecture.md): jetmoe <- export <- engines <- validate, entry points on top.

Read from the source (AST), every import counted, also the lazy ones inside functions: a library module may
import its own layer or lower ones, never a higher one, and no set of modules may import each other in a
circle. The entry points (the CLI) may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["jetmoe", "export", "engines", "validate"]  # bottom to top
ENTRY_POINTS = {"jetmoe.cli", "jetmoe.__main__"}


def modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The first-party modules `path` imports (resolved to the longest known module name)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up node.level - 1 packages from this one
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_no_library_module_imports_a_higher_layer():
    upward = [f"{module} -> {target}" for module, targets in graph().items() if module not in ENTRY_POINTS
              for target in sorted(targets) if layer(target) > layer(module)]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = {m: {t for t in ts if t not in ENTRY_POINTS} for m, ts in graph().items() if m not in ENTRY_POINTS}
    # a package's __init__ re-exporting its modules is not a cycle with them
    edges = {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + "."))} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_upward_and_lazy_imports(tmp_path):
    """The checker itself: a lazy import inside a function counts."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from validate.validator import validate_export\n")
    assert imports(source, "jetmoe.m", {"validate.validator", "jetmoe.m"}) == {"validate.validator"}
