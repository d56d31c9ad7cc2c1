"""No module of spared_lib imports another that imports it back (issue 12 §8).

The benchmark's runner and its Ray backend once imported each other (the runner took
``RayExecutor``, the backend took ``run_cell``); the cell runner now lives in
``spared_lib.benchmark.cells``, which both import. This test reads every module's imports —
module-level and inside functions, since a deferred import is still a dependency — and fails on
any cycle in the whole library. A module importing one of its own parent packages is not counted:
that is how Python packages work (``from . import build_model``).
"""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "spared_lib"


def _modules() -> dict[str, tuple[Path, str]]:
    mods = {}
    for f in LIB.rglob("*.py"):
        parts = list(f.relative_to(LIB.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        mods[".".join(parts)] = (f, package)
    return mods


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of spared_lib it imports`` (parent packages left out)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph = {}
    for name, (path, package) in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {resolve(a.name) for a in node.names if a.name.startswith("spared_lib")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                if base.startswith("spared_lib"):
                    edges |= {resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base)
                              for a in node.names}
        graph[name] = {e for e in edges if e and e != name and not name.startswith(e + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_runner_and_ray_backend_share_the_cell_runner():
    g = import_graph()
    assert "spared_lib.benchmark.cells" in g["spared_lib.benchmark.ray_backend"]
    assert "spared_lib.benchmark.cells" in g["spared_lib.benchmark.runner"]
    assert "spared_lib.benchmark.runner" not in g["spared_lib.benchmark.ray_backend"]


def test_no_module_imports_in_a_circle():
    found = cycles(import_graph())
    assert not found, f"modules that import each other (directly or through others): {found}"
