"""Prints the import graph of a package (every import, TYPE_CHECKING ones included) and
exits 1 if it has a cycle.

    python tools/import_graph.py broker
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name if is_package else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            root = f"{base}.{module}".strip(".") if node.level else module
            targets = [root, *(f"{root}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def main() -> int:
    package = Path(sys.argv[1]).resolve()
    known = modules(package)
    # A package's __init__ re-exporting its children is not an edge back from them.
    graph = {
        m: {t for t in imports(m, p, known) if not m.startswith(t + ".")}
        for m, p in sorted(known.items())
    }
    for m, targets in graph.items():
        print(f"{m} -> {', '.join(sorted(targets)) or '-'}")
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        if m in done:
            return
        if m in visiting:
            cycles.append([*visiting[visiting.index(m) :], m])
            return
        visiting.append(m)
        for t in sorted(graph[m]):
            visit(t)
        visiting.pop()
        done.add(m)

    for m in graph:
        visit(m)
    for cycle in cycles:
        print("cycle: " + " -> ".join(cycle))
    print(f"{len(graph)} modules, {len(cycles)} cycle(s)")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
