"""What `Pipeline.search` returns: hits with their provenance, the timings of the query, and, for a
filtered search that found nothing, a one-line `hint` saying why.

A `Hit` is one document (or chunk) of the output: its ids, text, title and metadata, its final rank
and score, and, for every step of the pipeline, the rank and score it had there (`stages`; `None`
where that step did not return it). `cross_encoder_score` is the model score of the last reranker
that scored it. `hit.as_candidate()` is the course chapter's dict form (`text`, plus
`cross_encoder_score` when a cross-encoder ranked it), ready for an LLM prompt or for
`CrossEncoderReranker.rerank`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter

from stagegraph.corpora.types import Corpus
from stagegraph.pipeline.graph import Step
from stagegraph.pipeline.ranking import Ranking


class StageScore(BaseModel):
    """Where one step put a hit: its 1-based rank and score there (None: the step did not return it)."""

    rank: int | None = None
    score: float | None = None


class Hit(BaseModel):
    """One document (or chunk) of a search's output, with where every step put it.

    The HTTP API sends this record as it is (`stagegraph.serve.models.HitOut` derives from it), so a
    field added here is on the wire too.
    """

    id: str = Field(description="the corpus row's id: a document's id, or a chunk's (doc_id#index)")
    doc_id: str = Field(description="the document it belongs to (its id, when rows are whole documents)")
    rank: int = Field(description="1-based rank in the output")
    score: float = Field(description="the output step's score")
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageScore] = Field(default_factory=dict, description="each step's rank and score of this hit")
    cross_encoder_score: float | None = Field(None, description="the model score of the last reranker that scored it")

    def as_candidate(self) -> dict[str, Any]:
        """The chapter's candidate dict: `text` plus the hit's fields (and `cross_encoder_score` if scored)."""
        out: dict[str, Any] = {"text": self.text, "title": self.title, "id": self.id, "doc_id": self.doc_id,
                               "score": self.score, **self.metadata}
        if self.cross_encoder_score is not None:
            out["cross_encoder_score"] = self.cross_encoder_score
        return out


class SearchResult(BaseModel):
    """One query's hits and timings (ms per step and end to end), and, when a filter let nothing
    through, a `hint` saying why."""

    query: str
    hits: list[Hit]
    timings_ms: dict[str, float] = Field(default_factory=dict)
    total_ms: float = 0.0
    #: per_query: this query's own times (online); batch: the batch's stage times divided by its size.
    timing: Literal["per_query", "batch_share"] = "per_query"
    #: the collection generation that was searched (set by a collection's `Stack`; None otherwise)
    generation: int | None = None
    #: why a filtered search found nothing, in one line (set only then; `stagegraph.corpora.filter_hints.explain_empty`)
    hint: str | None = None

    def per_document(self, n: int = 1, top: int | None = None) -> SearchResult:
        """A copy keeping at most `n` chunks of each document (the best ones, in rank order) and at most
        `top` documents; hits keep their original `rank` (so a gap shows where chunks were folded)."""
        if n < 1:
            raise ValueError(f"per_document needs n >= 1, got {n}")
        kept: list[Hit] = []
        seen: dict[str, int] = {}
        for hit in self.hits:
            count = seen.get(hit.doc_id, 0)
            if count >= n:
                continue
            if count == 0 and top is not None and len(seen) >= top:
                continue
            seen[hit.doc_id] = count + 1
            kept.append(hit)
        return self.model_copy(update={"hits": kept})


_HITS = TypeAdapter(list[Hit])


def _values(values: np.ndarray | None, n: int) -> list[float | None]:
    """The first `n` values as Python floats, NaN as None (all None without values)."""
    if values is None:
        return [None] * n
    return [None if math.isnan(v) else v for v in values[:n].tolist()]


def hits_of(ranking: Ranking, corpus: Corpus, steps: Sequence[Step], k: int) -> list[Hit]:
    """The first `k` documents of `ranking` as hits, with each step's rank and score (this runs on
    every search: each array is converted to Python values once, not element by element)."""
    n = min(k, len(ranking))
    traces = [(s.name, ranking.provenance[s.name]) for s in steps if s.name in ranking.provenance]
    columns = [(name, [None if r is None else int(r) for r in _values(t.rank, n)], _values(t.score, n))
               for name, t in traces]
    cross_encoder: list[float | None] = [None] * n  # the last reranker's model score
    for _, t in traces:
        if t.model_score is not None:
            cross_encoder = [m if m is not None else c for m, c in zip(_values(t.model_score, n), cross_encoder)]
    rows, scores = ranking.doc_rows[:n].tolist(), ranking.scores[:n].tolist()
    ids, doc_ids, titles, texts, metadata = corpus.records(rows)
    records = [
        {"id": ids[i], "doc_id": doc_ids[i], "rank": i + 1, "score": scores[i], "title": titles[i],
         "text": texts[i], "metadata": metadata[i],
         "stages": {name: {"rank": rank[i], "score": score[i]} for name, rank, score in columns},
         "cross_encoder_score": cross_encoder[i]}
        for i in range(len(rows))
    ]
    return _HITS.validate_python(records)  # one validation call for all; it copies each metadata dict


def search_results(result: Any, steps: Sequence[Step], corpus: Corpus, k: int) -> list[SearchResult]:
    """One `SearchResult` per query of an executed `RunResult`."""
    out = []
    n = len(result.queries)
    for i, text in enumerate(result.queries.texts):
        if result.mode == "online":
            timings = {
                name: 0.0 if run.latencies_ns is None else float(run.latencies_ns[i]) / 1e6
                for name, run in result.stages.items()
            }
            total = float(result.end_to_end_ns[i]) / 1e6 if result.end_to_end_ns is not None else sum(timings.values())
            timing = "per_query"
        else:
            timings = {name: run.wall_ns / 1e6 / max(n, 1) for name, run in result.stages.items()}
            total = result.wall_ns / 1e6 / max(n, 1)
            timing = "batch_share"
        out.append(
            SearchResult(
                query=text, hits=hits_of(result.final[i], corpus, steps, k), timings_ms=timings, total_ms=total,
                timing=timing,
            )
        )
    return out
