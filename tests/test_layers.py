"""The house rules, read from the code's own imports: one import name, dependencies pointing one way.

Every module of the package (lazy imports inside functions included) may import only from its own
layer or a lower one. From the ground up:

    ground      stagegraph.errors, .hashing, .atomic, .sqlite_store, .thread_counts, .progress, .loaded_once, .configs
    corpora     datasets and their types
    indexes     BM25 and FAISS indexes
    pipeline    the engine: stage contract, Pipeline, executor, cache, YAML codec, registry
    stages      retrievers, pool, reranker (built on the engine's contract)
    collection  a user's documents as chunks and indexes, in atomic generations; stagegraph.open
    interop     adapters to PyTerrier, LangChain, LlamaIndex, Haystack (a stack or pipeline in theirs, theirs as a stage)
    serve       the HTTP API over a collection's stack
    scale       Ray: evaluation sharded by query, encoding by document
    evaluation  measures, scoring, reports, compare, sweep, expectations
    training    fine-tuning rerankers (uses evaluation's scoring)
    apps        stagegraph.demo, stagegraph.cli

The engine finds concrete stages by name through its registry (a plugin mechanism), never by import.

No two modules import each other, directly or round a longer circle, even where one of the imports
is only for type checking or sits inside a function: a circle means neither module can be read, or
changed, without the other.
"""

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {  # repository folder -> the package it is installed as
    "stagegraph": "stagegraph",
    "corpora": "stagegraph.corpora",
    "indexes": "stagegraph.indexes",
    "pipeline": "stagegraph.pipeline",
    "stages": "stagegraph.stages",
    "configs": "stagegraph.configs",
}
LAYERS = [
    ("ground", ["stagegraph.errors", "stagegraph.hashing", "stagegraph.atomic", "stagegraph.sqlite_store", "stagegraph.thread_counts",
                "stagegraph.progress", "stagegraph.loaded_once", "stagegraph.configs"]),
    ("corpora", ["stagegraph.corpora"]),
    ("indexes", ["stagegraph.indexes"]),
    ("pipeline", ["stagegraph.pipeline"]),
    ("stages", ["stagegraph.stages"]),
    ("collection", ["stagegraph.collection"]),
    ("interop", ["stagegraph.interop"]),
    ("serve", ["stagegraph.serve"]),
    ("scale", ["stagegraph.scale"]),
    ("evaluation", ["stagegraph.evaluation"]),
    ("training", ["stagegraph.training"]),
    ("apps", ["stagegraph.demo", "stagegraph.cli"]),
]


def layer_of(module: str) -> int | None:
    for level, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def modules():
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield path, ".".join([package, *parts])


def import_statements(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every absolute import in the file, at any depth (in functions, under TYPE_CHECKING):
    (line, module, the names taken from it; [] for `import module`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) for each module imported and each name taken from one."""
    found = []
    for line, module, names in import_statements(path):
        found.append((line, module))
        found += [(line, f"{module}.{name}") for name in names]
    return found


def module_imports(path: Path, known: set[str]) -> dict[str, int]:
    """The package's modules that the file imports -> the first line doing so. `from m import x` imports
    the module `m.x` where there is one, else `m` (as Python resolves it)."""
    found: dict[str, int] = {}
    for line, module, names in import_statements(path):
        submodules = [f"{module}.{name}" for name in names if f"{module}.{name}" in known]
        targets = submodules + ([module] if len(submodules) < len(names) or not names else [])
        for target in targets:
            if target in known:
                found.setdefault(target, line)
    return found


ALL = list(modules())


@pytest.mark.parametrize(("path", "module"), ALL, ids=[m for _, m in ALL])
def test_imports_point_down_and_use_the_one_import_name(path, module):
    if module == "stagegraph":  # the public face re-exports everything, lazily
        return
    own = layer_of(module)
    assert own is not None, f"{module} belongs to no layer; add it to LAYERS in {__file__}"
    for line, name in imports_of(path):
        top = name.split(".")[0]
        assert top not in {"pipeline", "stages", "corpora", "indexes", "configs"}, (
            f"{path.relative_to(REPO)}:{line} imports {name!r}; import it as stagegraph.{name}"
        )
        if top != "stagegraph" or name == "stagegraph":
            continue
        target = layer_of(name)
        if target is None:  # `from stagegraph import atomic` names a module of the ground
            continue
        assert target <= own, (
            f"{path.relative_to(REPO)}:{line} ({LAYERS[own][0]}) imports {name} ({LAYERS[target][0]}), "
            "which sits above it: dependencies must point down"
        )


def test_every_package_folder_is_installed():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {m for p, m in ALL if p.name == "__init__.py"}
    assert found == listed, f"pyproject's packages differ from the folders: missing {found - listed}, extra {listed - found}"
    for package, folder in config["package-dir"].items():
        assert ROOTS.get(folder) == package, f"{package} is mapped to {folder}"


def import_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of imports in `graph` (module -> {imported module: line}), first module repeated last; None."""
    try:
        graphlib.TopologicalSorter({m: set(targets) for m, targets in graph.items()}).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists it against the arrows
    return None


def test_import_cycle_finds_a_circle_through_a_type_only_import(tmp_path):
    """The checker itself: two files importing each other, one only for type checking, make a circle."""
    (tmp_path / "a.py").write_text("from pkg.b import run\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (tmp_path / "c.py").write_text("def f():\n    from pkg.a import x\n")
    known = {"pkg.a", "pkg.b", "pkg.c"}
    graph = {f"pkg.{n}": module_imports(tmp_path / f"{n}.py", known) for n in "abc"}
    assert graph == {"pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.a": 3}, "pkg.c": {"pkg.a": 2}}
    assert import_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    del graph["pkg.b"]["pkg.a"]
    assert import_cycle(graph) is None


def test_no_module_imports_itself_round_a_circle():
    known = {m for _, m in ALL}
    paths = {m: p for p, m in ALL}
    graph = {m: {t: line for t, line in module_imports(p, known).items() if t != m} for p, m in ALL}
    cycle = import_cycle(graph)
    assert cycle is None, "import circle " + " -> ".join(cycle) + ": " + ", ".join(
        f"{paths[a].relative_to(REPO)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])
    ) + "; move what both need into a module of its own, or pass it in"
