"""Stub stages for engine tests: deterministic, instant, no models. They live in tests/ only."""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import numpy as np

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import StageBase


class StubRetrieverConfig(StageConfig):
    k: int = 10
    seed: int = 0
    sleep_ms: float = 0.0


class StubRetriever(StageBase):
    """Scores each document by a hash of (seed, query text, row). The value counts, over every
    binding of it, how often it was bound (`warmed`) and run (`calls`)."""

    type_name = "stub_retriever"
    Config = StubRetrieverConfig
    arity = Arity.NONE

    def __init__(self, name: str | None = None, k: int = 10, seed: int = 0, sleep_ms: float = 0.0):
        self.config = StubRetrieverConfig(name=name, k=k, seed=seed, sleep_ms=sleep_ms)
        self.calls = 0
        self.warmed = 0

    def bind(self, env: Environment) -> StubSearch:
        self.warmed += 1
        return StubSearch(self, len(env.corpus))


class StubSearch:
    """A `StubRetriever` bound to a corpus of `n_docs` rows."""

    def __init__(self, stage: StubRetriever, n_docs: int):
        self.stage, self.n_docs = stage, n_docs

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        stage = self.stage
        stage.calls += 1
        if stage.config.sleep_ms:
            time.sleep(stage.config.sleep_ms / 1000)
        out = []
        for text in queries.texts:
            rng = np.random.default_rng(zlib.crc32(f"{stage.config.seed}\x00{text}".encode()))
            scores = rng.random(self.n_docs).astype(np.float32)
            out.append(Ranking.from_scores(np.arange(self.n_docs), scores, k=stage.config.k))
        return out


class StubFuseConfig(StageConfig):
    k: int = 10


class StubFuse(StageBase):
    """Sums the scores of every input (a minimal fusing stage)."""

    type_name = "stub_fuse"
    Config = StubFuseConfig
    arity = Arity.MANY

    def __init__(self, name: str | None = None, k: int = 10):
        self.config = StubFuseConfig(name=name, k=k)
        self.calls = 0

    def run(self, queries, inputs):
        self.calls += 1
        out = []
        for per_query in zip(*inputs):
            total: dict[int, float] = {}
            for ranking in per_query:
                for row, score in zip(ranking.doc_rows.tolist(), ranking.scores.tolist()):
                    total[row] = total.get(row, 0.0) + score
            rows = np.array(list(total), dtype=np.int64)
            out.append(Ranking.from_scores(rows, np.array(list(total.values())), k=self.config.k))
        return out


class StubRerankConfig(StageConfig):
    k: int = 5
    flip: bool = False


class StubRerank(StageBase):
    """Reverses (or keeps) the order of its single input."""

    type_name = "stub_rerank"
    Config = StubRerankConfig
    arity = Arity.ONE

    def __init__(self, name: str | None = None, k: int = 5, flip: bool = False):
        self.config = StubRerankConfig(name=name, k=k, flip=flip)
        self.calls = 0

    def run(self, queries, inputs):
        self.calls += 1
        out = []
        for ranking in inputs[0]:
            scores = -ranking.scores if self.config.flip else ranking.scores
            out.append(Ranking.from_scores(ranking.doc_rows, scores, k=self.config.k))
        return out


def tiny_corpus(n: int = 50) -> Corpus:
    return Corpus([f"d{i}" for i in range(n)], [f"title {i}" for i in range(n)], [f"text {i}" for i in range(n)])


def register_stubs() -> None:
    """Make the stub stages available to YAML configs (idempotent)."""
    from stagegraph.pipeline.registry import _REGISTRY, register

    for cls in (StubRetriever, StubFuse, StubRerank):
        if _REGISTRY.get(cls.type_name) is not cls:
            register(cls)
