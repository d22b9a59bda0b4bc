"""Tiny datasets and stub stages with known quality, for the evaluate/report/compare/sweep tests."""

from __future__ import annotations

import time
import zlib

import numpy as np

from stagegraph.corpora.types import Dataset, Qrels, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, StageConfig
from stagegraph.stages.base import StageBase
from stubs import tiny_corpus


def tiny_dataset(n_docs: int = 120, n_queries: int = 24, seed: int = 0, name: str = "tiny") -> Dataset:
    """Random graded qrels (1-3) over a stub corpus; every query has 6 judged documents."""
    rng = np.random.default_rng(seed)
    corpus = tiny_corpus(n_docs)
    qids = [f"q{i}" for i in range(n_queries)]
    queries = Queries(qids, [f"query number {i}" for i in range(n_queries)])
    qrels = Qrels(
        {q: {f"d{j}": int(rng.integers(1, 4)) for j in rng.choice(n_docs, 6, replace=False)} for q in qids}
    )
    return Dataset(name, corpus, queries, {"test": qrels})


class OracleConfig(StageConfig):
    k: int = 20
    noise: float = 0.0  # 0: relevant documents first, by grade; 1: random order
    seed: int = 0
    sleep_ms: float = 0.0


class OracleRetriever(StageBase):
    """Knows the qrels: ranks judged documents by grade, mixed with random ones by `noise`."""

    type_name = "oracle"
    Config = OracleConfig
    arity = Arity.NONE

    def __init__(self, name: str | None = None, k: int = 20, noise: float = 0.0, seed: int = 0,
                 sleep_ms: float = 0.0, qrels: Qrels | None = None):
        self.config = OracleConfig(name=name, k=k, noise=noise, seed=seed, sleep_ms=sleep_ms)
        self.qrels = qrels
        self.corpus = None

    def warm_up(self, env) -> None:
        self.corpus = env.corpus

    def run(self, queries, inputs):
        if self.config.sleep_ms:
            time.sleep(self.config.sleep_ms / 1000)
        out = []
        n = len(self.corpus)
        for qid in queries.ids:
            rng = np.random.default_rng(zlib.crc32(f"{self.config.seed}\x00{qid}".encode()))
            scores = rng.random(n) * self.config.noise
            if self.qrels is not None:
                j = self.qrels.as_rows(qid, self.corpus)
                scores[j.doc_rows] += (1 - self.config.noise) * (1 + j.grades)
            out.append(Ranking.from_scores(np.arange(n), scores, k=self.config.k))
        return out


class EmptyForConfig(StageConfig):
    qids: tuple[str, ...] = ()


class EmptyFor(StageBase):
    """Passes its input through, but returns an empty ranking for the listed query ids."""

    type_name = "empty_for"
    Config = EmptyForConfig
    arity = Arity.ONE

    def __init__(self, name: str | None = None, qids: tuple[str, ...] = ()):
        self.config = EmptyForConfig(name=name, qids=tuple(qids))

    def run(self, queries, inputs):
        return [Ranking.empty() if q in self.config.qids else r for q, r in zip(queries.ids, inputs[0])]
