"""A stage's cache version is derived from its code: what changes it, what does not, what it covers.

Plugins are real modules written under tmp_path and imported; the built-in stages are checked by
handing `code_version` an edited source for one module (its `read_source` is swapped), never by
editing the repository.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline import code_version as cv
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.registry import available_types, stage_class
from stagegraph.pipeline.stage import Environment

STAGE = '''
"""A plugin stage."""
from {pkg}.helper import boost
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, StageConfig
from stagegraph.stages.base import StageBase


class Plug(StageBase):
    """Scores each row."""

    type_name = "plug"
    Config = StageConfig
    arity = Arity.NONE

    def __init__(self):
        self.config = StageConfig()

    def run(self, queries, inputs):
        # score = boost(row)
        return [Ranking.from_scores([0, 1], [boost(0), boost(1)]) for _ in queries.ids]

    def later(self):
        from {pkg}.lazy import value

        return value
'''
HELPER = '''
"""Scoring helpers."""
from .kernel import weight


def boost(row):
    return weight() * (row + 1)
'''
KERNEL = '''
def weight():
    """The weight."""
    return 2.0
'''
LAZY = "value = 1\n"
UNUSED = "def nothing():\n    return 0\n"


@pytest.fixture(autouse=True)
def fresh_versions():
    cv.clear_caches()
    yield
    cv.clear_caches()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package `plug_<id>` with a stage, the helper it imports, the kernel the helper imports
    (relatively), a module imported inside a function, and one nobody imports."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    pkg = f"plug_{uuid.uuid4().hex[:8]}"
    root = tmp_path / pkg
    root.mkdir()
    files = {"__init__.py": "", "stage.py": STAGE.format(pkg=pkg), "helper.py": HELPER, "kernel.py": KERNEL,
             "lazy.py": LAZY, "unused.py": UNUSED}
    for name, text in files.items():
        (root / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(f"{pkg}.stage")
    yield pkg, root, module
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]


def _fingerprint_after(module, path: Path, text: str) -> str:
    """Write `text` to `path`, re-import the stage's module and fingerprint a fresh instance."""
    path.write_text(text)
    return importlib.reload(module).Plug().fingerprint()


def test_a_changed_function_body_changes_the_fingerprint_comments_docstrings_and_blank_lines_do_not(plugin):
    pkg, root, module = plugin
    before = module.Plug().fingerprint()
    source = STAGE.format(pkg=pkg)
    cosmetic = (
        source.replace('"""A plugin stage."""', '"""A plugin stage, documented at length."""')
        .replace('"""Scores each row."""', '"""Scores each row, better explained."""\n\n')
        .replace("# score = boost(row)", "# the score of a row is its boost\n\n        # (a second comment)")
    )
    assert cosmetic != source
    assert _fingerprint_after(module, root / "stage.py", cosmetic) == before
    changed = source.replace("[boost(0), boost(1)]", "[boost(1), boost(0)]")
    assert _fingerprint_after(module, root / "stage.py", changed) != before
    assert _fingerprint_after(module, root / "stage.py", source) == before  # and back: a pure function of the code


@pytest.mark.parametrize("edited", ["helper.py", "kernel.py", "lazy.py"])
def test_a_change_in_a_module_it_imports_transitively_changes_it(plugin, edited):
    pkg, root, module = plugin
    before = module.Plug().fingerprint()
    original = (root / edited).read_text()
    assert _fingerprint_after(module, root / edited, "# a comment\n\n" + original) == before
    assert _fingerprint_after(module, root / edited, original.replace("2.0", "3.0").replace("1", "2")) != before


def test_a_module_of_the_package_it_does_not_import_does_not_count(plugin):
    pkg, root, module = plugin
    before = module.Plug().fingerprint()
    assert _fingerprint_after(module, root / "unused.py", "def nothing():\n    return 1\n") == before
    assert cv.covered_modules(module.Plug) == sorted(
        [f"{pkg}.stage", f"{pkg}.helper", f"{pkg}.kernel", f"{pkg}.lazy", "stagegraph.stages.base",
         "stagegraph.pipeline.ranking"]
    )


def test_the_manual_version_still_counts(plugin):
    _, _, module = plugin
    bumped = type("Bumped", (module.Plug,), {"version": 2, "__module__": module.__name__})
    assert bumped().fingerprint() != module.Plug().fingerprint()


# -- the built-in stages ----------------------------------------------------------------------------
COVERS = {
    "bm25": ["stagegraph.indexes.bm25_kernels", "stagegraph.indexes.bm25_scoring", "stagegraph.indexes.bm25",
             "stagegraph.indexes.tokenize", "stagegraph.stages.retrieve.filtering", "stagegraph.corpora.filters"],
    "dense": ["stagegraph.indexes.dense", "stagegraph.indexes.faiss_training", "stagegraph.indexes.encoder",
              "stagegraph.indexes.embeddings", "stagegraph.stages.retrieve.filtering", "stagegraph.corpora.filters"],
    "pool": ["stagegraph.stages.fusion.methods", "stagegraph.stages.fusion.normalize", "stagegraph.stages.fusion.align",
             "stagegraph.stages.fusion.missing"],
    "cross_encoder": ["stagegraph.stages.rerank.model", "stagegraph.stages.rerank.scorers", "stagegraph.stages.rerank.onnx",
                      "stagegraph.stages.rerank.pair_head", "stagegraph.stages.rerank.blend", "stagegraph.stages.rerank.depth",
                      "stagegraph.indexes.encoder"],
    "late_interaction": ["stagegraph.stages.rerank.late_interaction", "stagegraph.stages.rerank.cross_encoder",
                         "stagegraph.stages.rerank.blend", "stagegraph.stages.rerank.model"],
    "metrics": ["stagegraph.evaluation.metrics_stage"],
    "sparse": ["stagegraph.stages.retrieve.sparse", "stagegraph.indexes.bm25_kernels", "stagegraph.indexes.bm25_scoring",
               "stagegraph.indexes.encoder", "stagegraph.stages.retrieve.filtering", "stagegraph.corpora.filters"],
}
EVERY_STAGE = ["stagegraph.pipeline.ranking", "stagegraph.stages.base"]
NEVER = ["stagegraph.pipeline.executor", "stagegraph.pipeline.cache", "stagegraph.pipeline.compose",
         "stagegraph.evaluation.report", "stagegraph.corpora.types", "stagegraph.hashing"]
CASES = [(t, m) for t, modules in COVERS.items() for m in modules + EVERY_STAGE]


def _path(module: str) -> str:
    return importlib.util.find_spec(module).origin


def _edit(monkeypatch, module: str, edit) -> None:
    """From now on `code_version` reads `module`'s source through `edit`."""
    target, real = _path(module), cv.read_source
    monkeypatch.setattr(cv, "read_source", lambda path: edit(real(path)) if path == target else real(path))
    cv.clear_caches()


def _built_in_types() -> list[str]:
    return [t for t in available_types() if stage_class(t).__module__.startswith("stagegraph.")]


def test_every_built_in_type_is_listed_here():
    assert sorted(COVERS) == _built_in_types()


@pytest.mark.parametrize(("type_name", "module"), CASES, ids=[f"{t}:{m.rpartition('.')[2]}" for t, m in CASES])
def test_a_built_in_stage_covers_the_modules_that_make_its_rankings(monkeypatch, type_name, module):
    cls = stage_class(type_name)
    before = cv.code_version(cls)
    _edit(monkeypatch, module, lambda source: "# a new comment\n\n" + source.replace("\n\n", "\n\n\n", 3))
    assert cv.code_version(cls) == before, "a comment or blank lines changed the version"
    _edit(monkeypatch, module, lambda source: source + "\n_A_CHANGE = 1\n")
    assert cv.code_version(cls) != before, f"{type_name}'s version misses a change to {module}"


@pytest.mark.parametrize("module", NEVER)
def test_code_that_makes_no_ranking_is_not_counted(monkeypatch, module):
    before = {t: cv.code_version(stage_class(t)) for t in _built_in_types()}
    _edit(monkeypatch, module, lambda source: source + "\n_A_CHANGE = 1\n")
    assert {t: cv.code_version(stage_class(t)) for t in _built_in_types()} == before


def test_a_plugin_subclass_of_a_built_in_covers_what_it_inherits(monkeypatch):
    from stagegraph.stages.retrieve.bm25 import BM25Retriever

    module = types.ModuleType("my_bm25_plugin")
    sub = type("MyBM25", (BM25Retriever,), {"__module__": module.__name__})
    before = cv.code_version(sub)
    _edit(monkeypatch, "stagegraph.indexes.bm25_kernels", lambda source: source + "\n_A_CHANGE = 1\n")
    assert cv.code_version(sub) != before


def test_a_stage_without_readable_source_is_never_reused_by_another_process(monkeypatch):
    module = types.ModuleType("defined_in_a_notebook")
    exec("from stagegraph.stages.base import StageBase\nclass Cell(StageBase):\n    type_name = 'cell'\n",
         module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    before = cv.code_version(module.Cell)
    assert cv.code_version(module.Cell) == before  # stable within the process
    monkeypatch.setattr(cv, "_UNREADABLE", "another process")
    cv.clear_caches()
    assert cv.code_version(module.Cell) != before


def test_the_version_is_computed_once_per_class(monkeypatch):
    from stagegraph.stages.retrieve.bm25 import BM25Retriever

    reads = []
    real = cv.read_source
    monkeypatch.setattr(cv, "read_source", lambda path: reads.append(path) or real(path))
    BM25Retriever().fingerprint()
    assert len(reads) == len(cv.covered_modules(BM25Retriever))  # each module read once
    reads.clear()
    for k in (10, 20, 30):
        BM25Retriever(k=k).fingerprint()
    assert reads == []


def test_edited_kernel_code_misses_the_cache_for_its_stage_and_everything_downstream(monkeypatch, tmp_path):
    from stagegraph.stages.fusion import CandidatePool
    from stagegraph.stages.retrieve.bm25 import BM25Retriever

    n = 30
    corpus = Corpus([f"d{i}" for i in range(n)], [""] * n, [f"alpha beta {'gamma ' * (i % 5)}doc{i}" for i in range(n)])
    queries = Queries(["q1", "q2"], ["gamma doc3", "alpha doc7"])
    env, cache = Environment(corpus, work_dir=tmp_path / "work", progress=False), StageCache(tmp_path / "cache")

    def hits():
        graph = (BM25Retriever(k=10, name="a") | BM25Retriever(k=10, k1=0.9, name="b")) >> CandidatePool(k=10, name="pool")
        result = graph.execute(queries, env=env, mode="batch", cache=cache)
        return {name: run.cache_hit for name, run in result.stages.items()}

    assert hits() == {"a": False, "b": False, "pool": False}
    assert hits() == {"a": True, "b": True, "pool": True}
    _edit(monkeypatch, "stagegraph.stages.fusion.methods", lambda source: source + "\n_A_CHANGE = 1\n")
    assert hits() == {"a": True, "b": True, "pool": False}
    _edit(monkeypatch, "stagegraph.indexes.bm25_kernels", lambda source: source + "\n_A_CHANGE = 1\n")
    assert hits() == {"a": False, "b": False, "pool": False}
