"""The package's import graph, read from its own source (every `import`, also inside functions).

    python scripts/import_graph.py            # layers, cycles, upward imports, largest files
    python scripts/import_graph.py --edges    # every edge

`tests/test_layout.py` asserts on the same graph: no cycle (between modules or packages), no
upward import (LAYERS below, drawn in docs/design.md), no core module importing the testbed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "copsd"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies in (`copsd.a.b.C` -> `copsd.a.b`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod if is_pkg else mod.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for t in targets:
            hit = _resolve(t, known)
            if hit and hit != mod:
                out.add(hit)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def depth(g: dict[str, set[str]]) -> int:
    """Layers: the longest import chain, counted in modules (cycles collapsed to one node)."""
    comp_of = {m: m for m in g}
    for c in cycles(g):
        for m in c:
            comp_of[m] = c[0]
    dag: dict[str, set[str]] = {}
    for m, deps in g.items():
        dag.setdefault(comp_of[m], set()).update(comp_of[d] for d in deps if comp_of[d] != comp_of[m])
    memo: dict[str, int] = {}

    def d(v: str) -> int:
        if v not in memo:
            memo[v] = 1 + max((d(w) for w in dag.get(v, ())), default=0)
        return memo[v]

    return max(d(v) for v in dag)


def unit(module: str) -> str:
    """The part of the layout a module belongs to: `copsd.data.languages` -> `copsd.data`."""
    return ".".join(module.split(".")[:2])


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in g.items():
        out.setdefault(unit(m), set()).update(unit(d) for d in deps if unit(d) != unit(m))
    return out


# The layout's layers, lowest first (docs/design.md): a unit may import only units of lower layers.
LAYERS: list[tuple[str, ...]] = [
    ("copsd.redact",),  # secrets masked in anything shown: below everything that prints
    ("copsd", "copsd.errors", "copsd.paths", "copsd.losses", "copsd.rollout", "copsd.grading"),
    ("copsd.plugins", "copsd.yaml_input"),
    ("copsd.data",),
    ("copsd.config", "copsd.prompts", "copsd.models"),
    ("copsd.spec", "copsd.evaluation", "copsd.results"),
    ("copsd.training", "copsd.reports"),
    ("copsd.run", "copsd.speed"),
    ("copsd.cli",),
    ("copsd.testbed",),  # a plugin: the top layer, imported by nothing below it
    ("copsd.__main__",),
]


def layer_of(u: str) -> int:
    for i, units in enumerate(LAYERS):
        if u in units:
            return i
    raise KeyError(f"{u} is in no layer of scripts/import_graph.py LAYERS")


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    """Imports from a unit to one of the same or a higher layer (other than itself)."""
    bad = []
    for m, deps in g.items():
        for d in deps:
            if unit(d) != unit(m) and layer_of(unit(d)) >= layer_of(unit(m)):
                bad.append(f"{m} -> {d}")
    return sorted(bad)


def main() -> None:
    g = graph()
    if "--edges" in sys.argv:
        for m in sorted(g):
            for d in sorted(g[m]):
                print(f"{m} -> {d}")
        return
    pg = package_graph(g)
    print(f"modules: {len(g)}; layers (longest import chain): {depth(g)} modules, {depth(pg)} packages")
    cyc = cycles(g) + cycles(pg)
    print(f"import cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    up = upward_imports(g)
    print(f"upward imports: {len(up)}")
    for e in up:
        print("  " + e)
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), m) for m, p in modules().items()), reverse=True)
    print("largest files: " + ", ".join(f"{m} ({n} lines)" for n, m in sizes[:3]))


if __name__ == "__main__":
    main()
