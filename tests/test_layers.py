"""The layers of the code (docs/architecture.md): imports point down only, and no module imports itself
back through others.

    node.interfaces   CLI handlers, admin ops (later the desk): parse, call one function, render
    node.runtime      `fednode run`: process, services, admin socket server, config check (composition root)
    node.app          use cases: one function per thing a person can do
    node.features     rules, tickets, stats, worklog, quarantine, metrics, notify: logic, processors, queries
    node.link | adapters   links between nodes | how local data gets in (siblings: never import each other)
    node.core         codes, crypto, records, schema, store, ledger, keys, pki, calendar, config, home

Every import statement counts: module level, inside functions (the usual way to dodge a cycle) and inside
``if TYPE_CHECKING:`` (layer rule only, with the short allowlist below; they never run, so no cycles).
bench/ (demo, harness, benchmark references) sits outside: it may import anything, and only the CLI's
`demo` and `bench` commands import it. ``node`` itself (``__version__``) and ``proto`` are importable by all.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node", "adapters", "bench")
RANKS = {"node.core": 0, "node.link": 1, "adapters": 1, "node.features": 2, "node.app": 3, "node.runtime": 4,
         "node.interfaces": 5}
# type-only upward imports that are accepted (each with its reason); the list may only shrink
TYPE_ONLY_OK = {
    ("node.link.transport", "node.runtime.process"),  # FederationService(rt): follow-up, a Host protocol in node.link
    ("node.link.reconcile", "node.runtime.process"),  # serve_heads/fetch/chains(rt, ...): same follow-up
}
BENCH_USERS = {"node.interfaces.cli.main"}  # `fednode demo`, `fednode bench`


def sources(root: Path = ROOT) -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path.read_text(encoding="utf-8")
    return out


def imports(modules: dict[str, str]) -> list[tuple[str, str, int, str]]:
    """(importer, imported module, line, 'module'|'function'|'typing') for every import of our modules."""
    packages = {m.rpartition(".")[0] for m in modules}
    edges: list[tuple[str, str, int, str]] = []
    for name, text in modules.items():
        _walk(ast.parse(text), "module", name, name in packages, modules, edges)
    return edges


def _walk(node: ast.AST, where: str, name: str, is_pkg: bool, modules: dict[str, str],
          edges: list[tuple[str, str, int, str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            edges += [(name, t, child.lineno, where) for t in resolve(name, is_pkg, child, modules) if t != name]
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            _walk(child, "typing" if where == "typing" else "function", name, is_pkg, modules, edges)
        elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for stmt in child.body:
                _walk(ast.Module(body=[stmt], type_ignores=[]), "typing", name, is_pkg, modules, edges)
            for stmt in child.orelse:
                _walk(ast.Module(body=[stmt], type_ignores=[]), where, name, is_pkg, modules, edges)
        else:
            _walk(child, where, name, is_pkg, modules, edges)


def resolve(name: str, is_pkg: bool, stmt: ast.Import | ast.ImportFrom, modules: dict[str, str]) -> list[str]:
    if isinstance(stmt, ast.Import):
        wanted = [a.name for a in stmt.names]
    else:
        base = stmt.module or ""
        if stmt.level:
            here = name.split(".") if is_pkg else name.split(".")[:-1]
            here = here[: len(here) - stmt.level + 1]
            base = ".".join([*here, base] if base else here)
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in stmt.names]
    out = []
    for w in wanted:
        parts = w.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts:
            out.append(".".join(parts))
    return out


def layer(module: str) -> str | None:
    return next((p for p in sorted(RANKS, key=len, reverse=True) if module == p or module.startswith(p + ".")), None)


def violations(edges: list[tuple[str, str, int, str]]) -> list[str]:
    out = []
    for src, dst, line, kind in edges:
        if dst == "node" or dst.startswith("proto"):
            continue
        if dst.split(".")[0] == "bench":
            if src.split(".")[0] != "bench" and src not in BENCH_USERS:
                out.append(f"{src}:{line} imports {dst} ({kind}): bench/ is outside the layers")
            continue
        a, b = layer(src), layer(dst)
        if src.split(".")[0] == "bench" or a is None or b is None or a == b:
            if a is None and src.split(".")[0] == "node" and src != "node":
                out.append(f"{src} is in no layer: move it into one of {sorted(RANKS)}")
            continue
        if kind == "typing" and (src, dst) in TYPE_ONLY_OK:
            continue
        if RANKS[b] > RANKS[a]:
            out.append(f"{src}:{line} imports {dst} ({kind}): {a} may not import the higher layer {b}")
        elif RANKS[b] == RANKS[a]:
            out.append(f"{src}:{line} imports {dst} ({kind}): {a} and {b} are siblings")
    return sorted(set(out))


def cycles(edges: list[tuple[str, str, int, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over imports that run."""
    graph: dict[str, set[str]] = {}
    for src, dst, _line, kind in edges:
        if kind != "typing":
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_only() -> None:
    assert violations(imports(sources())) == []


def test_no_import_cycle() -> None:
    assert cycles(imports(sources())) == []


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    mods = sources()
    mods["node.core.store"] += "\n\ndef _sneaky():\n    from node.app import status\n"  # upward, inside a function
    assert any("node.core.store" in v and "node.app" in v for v in violations(imports(mods)))
    assert any("node.core.store" in c and "node.app.status" in c for c in cycles(imports(mods)))
    mods = sources()
    mods["node.link.protocol"] += "\nfrom adapters import base\n"  # siblings
    assert any("siblings" in v for v in violations(imports(mods)))
    mods = sources()
    mods["node.core.crypto"] += "\nif TYPE_CHECKING:\n    from node.runtime.process import NodeRuntime\n"
    assert any("node.core.crypto" in v and "(typing)" in v for v in violations(imports(mods)))
