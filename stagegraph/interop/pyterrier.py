"""PyTerrier both ways (`pip install "stagegraph[pyterrier]"`: python-terrier). Pure-Python
transformers need no Java: nothing here starts the JVM.

* `StagegraphTransformer(searcher, k)`: a stagegraph stack, `Runner` or warmed pipeline as a PyTerrier
  `Transformer`. In: a query frame (`qid`, `query`); out: PyTerrier's ranked frame `qid`, `query`,
  `docno` (the corpus row's id: a chunk id in a collection), `score`, `rank` (0-based, as PyTerrier
  numbers ranks), plus `text` with `text=True` and `<step>_rank`/`<step>_score` for every step with
  `provenance=True` (1-based ranks, NaN where the step did not return the document). It composes
  like any transformer (`StagegraphTransformer(runner) >> pt.text.get_text(...)`) and runs in
  `pt.Experiment`.
* `PyTerrierRetriever(transformer, k)` and `PyTerrierReranker(transformer, k)`: a PyTerrier transformer
  as a stagegraph stage (`arity` none and one). The retriever gets the query frame and returns
  `docno`s of this corpus; the reranker gets its upstream ranking as PyTerrier's frame (`qid`,
  `query`, `docno`, `text` (title and text joined), `score`, `rank`) and its `score` column orders
  the documents. Each runs as a step of the pipeline, so its rank, score and latency show in the
  funnel and the report like any stage's. They are Python objects, not YAML: compose them in Python
  (`sg.BM25Retriever(k=100) >> PyTerrierReranker(t, k=10)`). Their results are never reused from the
  stage cache across processes (a transformer's code cannot be fingerprinted): each instance has a
  token of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"stagegraph.interop.pyterrier needs python-terrier ({exc}); pip install \"stagegraph[pyterrier]\"") from exc

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import InputError, StageError
from stagegraph.interop.hits import searcher
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import StageBase

__all__ = ["PyTerrierReranker", "PyTerrierRetriever", "StagegraphTransformer"]

RESULT_COLUMNS = ["qid", "query", "docno", "score", "rank"]


class StagegraphTransformer(pt.Transformer):
    """A stagegraph stack (or `Runner`, or warmed pipeline) as a PyTerrier retrieval transformer."""

    def __init__(self, stack: Any, k: int = 10, *, filter: dict[str, Any] | None = None, text: bool = False,
                 provenance: bool = False):
        self.stack = searcher(stack)
        self.k = k
        self.filter = filter
        self.text = text
        self.provenance = provenance

    def __repr__(self) -> str:
        return f"StagegraphTransformer({type(self.stack).__name__}, k={self.k})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in ("qid", "query") if c not in inp.columns]
        if missing:
            raise InputError(f"a StagegraphTransformer takes a query frame with columns qid and query; missing "
                             f"{', '.join(missing)} (columns: {', '.join(map(str, inp.columns))})")
        first = dict(zip(map(str, inp["qid"].tolist()), map(str, inp["query"].tolist())))  # a qid once, as pt does
        qids, texts = list(first), list(first.values())
        results = self.stack.search_batch(texts, k=self.k, filter=self.filter) if texts else []
        columns: dict[str, list[Any]] = {c: [] for c in RESULT_COLUMNS}
        if self.text:
            columns["text"] = []
        steps = [] if not self.provenance else list(dict.fromkeys(n for r in results for h in r.hits for n in h.stages))
        for step in steps:
            columns[f"{step}_rank"], columns[f"{step}_score"] = [], []
        for qid, text, result in zip(qids, texts, results):
            n = len(result.hits)
            columns["qid"] += [qid] * n
            columns["query"] += [text] * n
            columns["docno"] += [h.id for h in result.hits]
            columns["score"] += [h.score for h in result.hits]
            columns["rank"] += range(n)
            if self.text:
                columns["text"] += [h.text for h in result.hits]
            for step in steps:
                where = [h.stages.get(step) for h in result.hits]
                columns[f"{step}_rank"] += [np.nan if s is None or s.rank is None else s.rank for s in where]
                columns[f"{step}_score"] += [np.nan if s is None or s.score is None else s.score for s in where]
        return pd.DataFrame(columns)


class PyTerrierConfig(StageConfig):
    k: int = 100


class _PyTerrierStage(StageBase):
    Config: ClassVar[type[StageConfig]] = PyTerrierConfig
    libraries: ClassVar[tuple[str, ...]] = ("python-terrier", "pyterrier")

    def __init__(self, transformer: Any, k: int = 100, name: str | None = None):
        if not callable(getattr(transformer, "transform", None)):
            raise InputError(f"a PyTerrier stage wraps a pyterrier Transformer, not {type(transformer).__name__}")
        self.transformer = transformer
        self.config = self.make_config(k=k, name=name)
        self._token = uuid.uuid4().hex

    def artefact_fingerprint(self) -> str:
        return f"pyterrier:{self._token}"  # a transformer's code cannot be fingerprinted: never reuse across instances

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transformer!r}, k={self.config.k})"

    def bind(self, env: Environment) -> _Bound:
        return _Bound(self, env.corpus)


class PyTerrierRetriever(_PyTerrierStage):
    """A PyTerrier transformer that retrieves (query frame in, `docno`s of this corpus out) as a stage."""

    type_name: ClassVar[str] = "pyterrier_retriever"
    arity: ClassVar[Arity] = Arity.NONE


class PyTerrierReranker(_PyTerrierStage):
    """A PyTerrier transformer that rescores a ranked frame as a stagegraph reranking stage."""

    type_name: ClassVar[str] = "pyterrier_reranker"
    arity: ClassVar[Arity] = Arity.ONE

    def __init__(self, transformer: Any, k: int = 10, name: str | None = None):
        super().__init__(transformer, k=k, name=name)


class _Bound:
    def __init__(self, stage: _PyTerrierStage, corpus: Corpus):
        self.stage, self.corpus = stage, corpus

    def _frame(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> pd.DataFrame:
        if self.stage.arity == Arity.NONE:
            if queries.filters is not None:
                raise StageError(f"stage {self.stage.name!r} (a PyTerrier transformer) cannot apply metadata filters; "
                                 "search without a filter, or filter with a stagegraph retriever before it")
            return pd.DataFrame({"qid": queries.ids, "query": queries.texts})
        columns: dict[str, list[Any]] = {c: [] for c in ("qid", "query", "docno", "text", "score", "rank")}
        for qid, text, ranking in zip(queries.ids, queries.texts, inputs[0]):
            ids, _, titles, texts, _ = self.corpus.records(ranking.doc_rows.tolist())
            n = len(ids)
            columns["qid"] += [qid] * n
            columns["query"] += [text] * n
            columns["docno"] += ids
            columns["text"] += [f"{t} {x}" if t and x else t or x for t, x in zip(titles, texts)]
            columns["score"] += ranking.scores.tolist()
            columns["rank"] += range(n)
        return pd.DataFrame(columns)

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        frame = self._frame(queries, inputs)
        if not len(frame):
            return [Ranking.empty() for _ in queries.ids]
        out = self.stage.transformer(frame)
        missing = [c for c in ("qid", "docno", "score") if c not in out.columns]
        if missing:
            raise StageError(f"stage {self.stage.name!r}: the PyTerrier transformer returned no {', '.join(missing)} "
                             f"column (columns: {', '.join(map(str, out.columns))}); it must return a ranked frame")
        rows_of: dict[str, list[int]] = {}
        scores_of: dict[str, list[float]] = {}
        for qid, docno, score in zip(out["qid"].astype(str), out["docno"].astype(str), out["score"].astype(float)):
            if not self.corpus.has(docno):
                raise StageError(f"stage {self.stage.name!r}: the PyTerrier transformer returned docno {docno!r}, which "
                                 f"is not in this corpus ({len(self.corpus)} documents); it must rank this corpus' ids")
            rows_of.setdefault(qid, []).append(self.corpus.row_of(docno))
            scores_of.setdefault(qid, []).append(score)
        k = self.stage.config.k
        return [Ranking.from_scores(np.array(rows_of.get(q, []), dtype=np.int64),
                                    np.array(scores_of.get(q, []), dtype=np.float32), k) for q in queries.ids]
