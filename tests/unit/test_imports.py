"""transerve's imports run one way, and never in a circle.

The operator side is four wings stacked one way: `build` (spec to archive) <- `torchserve` (a
running server and its APIs) <- `operate` and `edge` (side by side: rollouts and deploys;
the gateway and guard) <- `cli`. A module imports its own wing, the wings below it and
`handlers/`; `handlers/` (what runs inside a worker) imports nothing of `transerve/`. Imports
made inside functions count: a cycle or an upward import hidden that way is still one. Imports
for the type checker alone (under `if TYPE_CHECKING:`) run nothing, so they may point back
within a wing (a Payload names the Protocol that read it, a Row the Item it answers): they
are left out of the cycle check, and still count for the wings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("handlers", "transerve")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def typing_only(tree: ast.AST) -> set[ast.AST]:
    """The nodes under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            found.update(n for statement in node.body for n in ast.walk(statement))
    return found


def graph(runtime: bool = False) -> dict[str, set[str]]:
    """module -> the modules it imports; `runtime`: only the imports that run."""
    modules = {module_of(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skipped = typing_only(tree) if runtime else set()
        for node in ast.walk(tree):
            if node in skipped:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    edges = graph(runtime=True)
    assert "handlers.protocols.hf" in edges and "transerve.build.archive" in edges
    assert not cycles(edges), cycles(edges)


# A wing's rank: a module may import ranks below its own, and its own wing.
RANKS = {"handlers": 0, "transerve": 0, "transerve.build": 1, "transerve.torchserve": 2,
         "transerve.operate": 3, "transerve.edge": 3, "transerve.cli": 4}


def wing(module: str) -> str:
    """The longest RANKS key that is `module` or a package above it."""
    parts = module.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in RANKS)


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that run up the wings or across to a sibling wing."""
    return sorted((source, target) for source, targets in edges.items() for target in targets
                  if wing(source) != wing(target) and RANKS[wing(target)] >= RANKS[wing(source)]
                  and target != "transerve")


def test_imports_run_down_the_wings():
    edges = graph()
    modules = set(edges)
    # every module of transerve/ sits in a wing, or is the package or the CLI itself
    assert {m for m in modules if m.startswith("transerve") and wing(m) == "transerve"} == {"transerve"}
    assert "transerve.edge.gateway" in modules and "transerve.build.spec" in modules
    assert not upward(edges), upward(edges)


def test_the_wing_check_finds_an_upward_import():
    edges = {"transerve.build.spec": {"transerve.torchserve.server"}, "transerve.operate.rollout": {"transerve.edge.gateway"},
             "handlers.handler": {"transerve.build.spec"}, "transerve.edge.gateway": {"handlers.config", "transerve.torchserve.rundir"}}
    assert upward(edges) == [("handlers.handler", "transerve.build.spec"),
                             ("transerve.build.spec", "transerve.torchserve.server"),
                             ("transerve.operate.rollout", "transerve.edge.gateway")]


def test_only_type_checking_imports_are_left_out_of_the_cycle_check():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "def f():\n    import c\n")
    skipped = typing_only(tree)
    kept = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) and node not in skipped
            for alias in node.names]
    assert kept == ["b", "c"]
    assert "handlers.protocols.base" in graph()["handlers.payload"] - graph(runtime=True)["handlers.payload"]


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
