"""stagegraph: composable retrieval pipelines with per-stage quality and latency.

    import stagegraph as sg

    pipe = (sg.BM25Retriever(k=100) | sg.DenseRetriever(k=100)) >> sg.CandidatePool("rrf", k=100) \\
        >> sg.CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2", depth=100, k=10)
    dataset = sg.load_dataset("sample")
    report = sg.evaluate(pipe, dataset)            # quality and latency of every stage
    hits = pipe.warm_up(dataset).search("what is a gguf file?").hits

Every public name is importable from here (`from stagegraph import *` takes them all but `open`,
which stays `sg.open` so that Python's own `open` is not replaced); each is loaded on first use, so
`import stagegraph` is instant and pulls in torch or FAISS only when a stage that needs them is
touched. The packages underneath: `corpora` (datasets), `indexes` (BM25, FAISS), `pipeline` (the
engine: stage contract, `Pipeline`, executor, cache, YAML), `stages` (retrievers, pool, reranker),
`evaluation`, `training`, `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the engine
    "Pipeline": "stagegraph.pipeline.compose",
    "Runner": "stagegraph.pipeline.runner",
    "Stage": "stagegraph.pipeline.stage",
    "StageConfig": "stagegraph.pipeline.stage",
    "Arity": "stagegraph.pipeline.stage",
    "Environment": "stagegraph.pipeline.stage",
    "Inputs": "stagegraph.pipeline.stage",
    "Ranking": "stagegraph.pipeline.ranking",
    "StepTrace": "stagegraph.pipeline.ranking",
    "Hit": "stagegraph.pipeline.hits",
    "SearchResult": "stagegraph.pipeline.hits",
    "StageCache": "stagegraph.pipeline.cache",
    "register": "stagegraph.pipeline.registry",
    # stages
    "StageBase": "stagegraph.stages.base",
    "BM25Retriever": "stagegraph.stages.retrieve.bm25",
    "DenseRetriever": "stagegraph.stages.retrieve.dense",
    "SparseRetriever": "stagegraph.stages.retrieve.sparse",
    "CandidatePool": "stagegraph.stages.fusion.pool",
    "CrossEncoderReranker": "stagegraph.stages.rerank.cross_encoder",
    "LateInteractionReranker": "stagegraph.stages.rerank.late_interaction",
    "MetricsStage": "stagegraph.evaluation.metrics_stage",
    # data
    "load_dataset": "stagegraph.corpora.registry",
    "Corpus": "stagegraph.corpora.types",
    "Queries": "stagegraph.corpora.types",
    "Qrels": "stagegraph.corpora.types",
    "Dataset": "stagegraph.corpora.types",
    # evaluation
    "evaluate": "stagegraph.evaluation.evaluate",
    "Report": "stagegraph.evaluation.report",
    "save_report": "stagegraph.evaluation.writer",
    "Metric": "stagegraph.evaluation.measures",
    "score_run": "stagegraph.evaluation.scoring",
    # collections: a user's own documents
    "open": "stagegraph.collection.stack",
    "Collection": "stagegraph.collection.collection",
    "ShardedCollection": "stagegraph.collection.sharded",
    "ingest": "stagegraph.collection.ingest",
    # errors
    "StagegraphError": "stagegraph.errors",
    "InputError": "stagegraph.errors",
    "StageError": "stagegraph.errors",
}

#: exported, but left out of `from stagegraph import *`, which would replace the builtin of that name:
#: `sg.open(...)` opens a collection's stack, while a starred import keeps Python's own `open`
NOT_STARRED = ("open",)

__all__ = sorted(set(_EXPORTS) - set(NOT_STARRED)) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stagegraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), "open_stack" if name == "open" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_EXPORTS) + ["__version__"]


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stagegraph.collection.collection import Collection
    from stagegraph.collection.ingest import ingest
    from stagegraph.collection.sharded import ShardedCollection
    from stagegraph.collection.stack import open_stack as open
    from stagegraph.corpora.registry import load_dataset
    from stagegraph.corpora.types import Corpus, Dataset, Qrels, Queries
    from stagegraph.errors import InputError, StageError, StagegraphError
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.measures import Metric
    from stagegraph.evaluation.metrics_stage import MetricsStage
    from stagegraph.evaluation.report import Report
    from stagegraph.evaluation.scoring import score_run
    from stagegraph.evaluation.writer import save_report
    from stagegraph.pipeline.cache import StageCache
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.pipeline.runner import Runner
    from stagegraph.pipeline.hits import Hit, SearchResult
    from stagegraph.pipeline.ranking import Ranking, StepTrace
    from stagegraph.pipeline.registry import register
    from stagegraph.pipeline.stage import Arity, Environment, Inputs, Stage, StageConfig
    from stagegraph.stages.base import StageBase
    from stagegraph.stages.fusion.pool import CandidatePool
    from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
    from stagegraph.stages.rerank.late_interaction import LateInteractionReranker
    from stagegraph.stages.retrieve.bm25 import BM25Retriever
    from stagegraph.stages.retrieve.dense import DenseRetriever
    from stagegraph.stages.retrieve.sparse import SparseRetriever
