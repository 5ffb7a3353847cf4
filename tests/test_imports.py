"""The `gad` package's modules import each other one way: no import cycle, not even one hidden in a
function body (a function-level import only postpones the cycle to the first call)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The `gad` modules that module `name` imports anywhere in its source (top level, functions,
    `if TYPE_CHECKING:` blocks alike), with the packages Python imports on the way. `from a import b`
    counts module `a.b` when that is a module, else `a` (b is a name defined in it)."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import gad.a.b` runs gad.a.b; count the deepest module the name reaches.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
            # ... and first the packages above it (their __init__), but for those `name` sits in itself.
            parent = target.rpartition(".")[0]
            while parent and not (name + ".").startswith(parent + "."):
                out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / "gad").rglob("*.py")}
    modules = set(paths)
    return {
        name: imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", modules)
        for name, path in paths.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan), as a module path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        start = min(component)
        # Breadth-first inside the component, back to where it started: a shortest cycle through `start`.
        seen, frontier = {start}, [[start]]
        while frontier:
            path = frontier.pop(0)
            nxt = [w for w in sorted(graph[path[-1]]) if w in component]
            if start in nxt:
                cycles.append([*path, start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    frontier.append([*path, w])
    return cycles


def test_the_cycle_finder_sees_a_function_level_cycle():
    graph = {"gad.a": {"gad.b"}, "gad.b": {"gad.c"}, "gad.c": {"gad.a"}, "gad.d": {"gad.a"}}
    assert find_cycles(graph) == [["gad.a", "gad.b", "gad.c", "gad.a"]]
    tree = ast.parse("def f():\n    from gad.b import x\n")
    assert imported(tree, "gad.a", False, {"gad.a", "gad.b"}) == {"gad.b"}


def test_no_import_cycles_among_gad_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
