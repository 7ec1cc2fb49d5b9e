"""docs/architecture.md's map of the code names every library module, config group and entry-point script, so a
newcomer finds each one there; adding a file without a line in the map fails here."""

from __future__ import annotations

import re

from helpers import REPO

MAP = (REPO / "docs" / "architecture.md").read_text()
CODE = MAP[MAP.index("## The code"):MAP.index("## Design choices")]


def named(name: str) -> bool:
    """Whether the map's code section names ``name`` as a whole word (``store.py`` is not ``restore.py``)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", CODE) is not None


def test_every_library_module_is_in_the_map():
    modules = sorted(p for p in (REPO / "freeret").rglob("*.py") if p.name != "__init__.py")
    assert modules
    missing = [str(p.relative_to(REPO)) for p in modules if not named(p.name)]
    assert not missing, f"docs/architecture.md's map of the code does not name: {', '.join(missing)}"


def test_every_config_group_is_in_the_map():
    groups = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())
    missing = [g for g in groups if not named(f"{g}/")]
    assert not missing, f"docs/architecture.md's conf/ line does not name: {', '.join(missing)}"


def test_every_entry_point_script_is_in_the_map():
    scripts = [*(REPO / "experiments").glob("*.py"), *(REPO / "probes").glob("*.py"), *(REPO / "scripts").glob("*.py"),
               *(REPO / "scripts").glob("*.sh")]
    missing = sorted(str(p.relative_to(REPO)) for p in scripts if p.name != "__init__.py" and not named(p.name))
    assert not missing, f"docs/architecture.md's map of the code does not name: {', '.join(missing)}"


def test_the_check_catches_a_missing_name():
    assert named("pipeline.py") and named("conf/") and not named("no_such_module.py")
    assert not named("ore.py")  # part of another name does not count


def import_graph() -> dict[str, set[str]]:
    """Every library module -> the library modules it imports anywhere in its source (inside functions and
    ``TYPE_CHECKING`` blocks too); ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    import ast

    root = REPO / "freeret"
    paths = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in paths else base)
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_library_module_imports_one_that_imports_it_back():
    """Registries name their entries as "module:attr" strings, so no module imports back one that imports it."""
    found = cycles(import_graph())
    assert not found, "import cycles among freeret modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_catches_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "freeret.backbone.recipe" in graph["freeret.backbone.families"]  # from-imports of modules are edges


BENCH_ONLY = {"freeret.bench_models"}


def test_the_library_reaches_the_toy_part_only_through_its_registries():
    """freeret/toy is chosen by config (model.source=tiny, dataset.kind=smoke, dataset.source=fixture) through the
    same registries as any other source or kind: no library module outside it imports it, except the benchmarks'
    model loader, which builds random-weight models of real checkpoints' widths on purpose (not on a run's path)."""
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if not m.startswith("freeret.toy") and m not in BENCH_ONLY
                       and any(e == "freeret.toy" or e.startswith("freeret.toy.") for e in edges))
    assert not importers, f"these modules import freeret.toy directly: {', '.join(importers)}"
