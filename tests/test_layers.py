"""The house rules, read from the code's own imports: one import name, dependencies pointing one way.

Every module of the package (lazy imports inside functions included) may import only from its own
layer or a lower one. From the ground up:

    ground      stagegraph.errors, .hashing, .atomic, .configs
    corpora     datasets and their types
    indexes     BM25 and FAISS indexes
    pipeline    the engine: stage contract, Pipeline, executor, cache, YAML codec, registry
    stages      retrievers, pool, reranker (built on the engine's contract)
    collection  a user's documents as chunks and indexes, in atomic generations; stagegraph.open
    serve       the HTTP API over a collection's stack
    scale       Ray: evaluation sharded by query, encoding by document
    evaluation  measures, scoring, reports, compare, sweep, expectations
    training    fine-tuning rerankers (uses evaluation's scoring)
    apps        stagegraph.demo, stagegraph.cli

The engine finds concrete stages by name through its registry (a plugin mechanism), never by import.
"""

import ast
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
    ("ground", ["stagegraph.errors", "stagegraph.hashing", "stagegraph.atomic", "stagegraph.configs"]),
    ("corpora", ["stagegraph.corpora"]),
    ("indexes", ["stagegraph.indexes"]),
    ("pipeline", ["stagegraph.pipeline"]),
    ("stages", ["stagegraph.stages"]),
    ("collection", ["stagegraph.collection"]),
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


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
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
