"""Loss attribution: for every judged query and every relevant document missing from the final
stage's top k, the step that lost it (`stagegraph.pipeline.loss.trace_loss` is the rule).

`attribute_losses` reads what an evaluation already holds (every stage's ranking per query, the
pipeline's steps and filters) and gives one `Loss` per (query, document) and their `LossSummary`
(`report.json`'s `"loss": {"at": K, "missing": M, "by": {LOST_AT: count}}`, counts summing to M).
`loss_tsv` is the table written beside the run files (`loss.tsv`). Relevant: a grade >= 1. A relevant
document the corpus does not hold is `not_in_corpus` (no step could have returned it).

On a chunked collection scored per document, the rankings are the document rankings the metrics
read, and a document is excluded by a filter when every one of its chunks is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from stagegraph.corpora.filters import MetadataIndex, combine, filter_key
from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.pipeline.graph import Step
from stagegraph.pipeline.loss import trace_loss
from stagegraph.pipeline.ranking import Ranking

NOT_IN_CORPUS = "not_in_corpus"


class Loss(BaseModel):
    qid: str
    doc_id: str
    relevance: int
    lost_at: str
    rank_before: int | None = None
    rank_after: int | None = None


class LossSummary(BaseModel):
    """How many relevant documents the final top `at` misses, and where each was lost."""

    at: int
    missing: int
    by: dict[str, int] = Field(default_factory=dict)

    def shares(self) -> dict[str, float]:
        return {name: n / self.missing for name, n in self.by.items()} if self.missing else {}


def leg_filters(steps: Sequence[Step], pipeline_filter: Mapping | None, stage_filters: bool = True) -> dict[str, dict | None]:
    """The filter each retriever applies before its query's own: the pipeline's, its scope's, its stage's."""
    return {s.name: combine(pipeline_filter, s.filter, getattr(s.stage.config, "filter", None) if stage_filters else None)
            for s in steps if not s.inputs}


def attribute_losses(
    steps: Sequence[Step],
    output: str,
    runs: Mapping[str, Sequence[Ranking]],
    queries: Queries,
    qrels: Qrels,
    corpus: Corpus,
    k: int = 10,
    filters: Mapping[str, Mapping | None] | None = None,
    chunks: Corpus | None = None,
) -> tuple[list[Loss], LossSummary]:
    """Every relevant document missing from `output`'s top `k`, and where it was lost.

    `runs[step]` is aligned with `queries`; `corpus` is the one the rankings' rows index (documents
    when scored per document, then `chunks` is the chunk corpus the filters read); `filters` maps
    each retriever to its filter (`leg_filters`), and-ed here with each query's own."""
    names = [s.name for s in steps]
    position = {q: i for i, q in enumerate(queries.ids)}
    allowed = _Allowed(corpus, chunks)
    losses: list[Loss] = []
    for qid in qrels.query_ids:
        relevant = [(d, g) for d, g in qrels.for_query(qid).items() if g >= 1]
        i = position.get(qid)
        rank_maps = {name: ({} if i is None else _ranks(runs[name][i])) for name in names}
        final = rank_maps[output]
        for doc_id, grade in sorted(relevant, key=lambda dg: (-dg[1], dg[0])):
            if not corpus.has(doc_id):
                losses.append(Loss(qid=qid, doc_id=doc_id, relevance=grade, lost_at=NOT_IN_CORPUS))
                continue
            row = corpus.row_of(doc_id)
            if final.get(row, k + 1) <= k:
                continue
            own = queries.filter_of(i) if i is not None else None
            excluded = any(not allowed.of(combine(f, own))[row] for f in (filters or {}).values() if combine(f, own))
            trace = trace_loss(steps, {n: rank_maps[n].get(row) for n in names}, k, output, excluded)
            losses.append(Loss(qid=qid, doc_id=doc_id, relevance=grade, lost_at=trace.lost_at,
                               rank_before=trace.rank_before, rank_after=trace.rank_after))
    by: dict[str, int] = {}
    for loss in losses:
        by[loss.lost_at] = by.get(loss.lost_at, 0) + 1
    ordered = dict(sorted(by.items(), key=lambda item: (-item[1], item[0])))
    return losses, LossSummary(at=k, missing=len(losses), by=ordered)


def _ranks(ranking: Ranking) -> dict[int, int]:
    return {int(row): rank for rank, row in enumerate(np.asarray(ranking.doc_rows).tolist(), start=1)}


class _Allowed:
    """The rows (of `corpus`) a filter lets through, worked out once per filter; on a chunked corpus
    scored per document, a document passes when any of its chunks does."""

    def __init__(self, corpus: Corpus, chunks: Corpus | None):
        self.corpus, self.chunks = corpus, chunks
        self.masks: dict[str, np.ndarray] = {}

    def of(self, expression: Mapping) -> np.ndarray:
        key = filter_key(expression)
        if key not in self.masks:
            mask = MetadataIndex.of(self.chunks if self.chunks is not None else self.corpus).mask(expression)
            if self.chunks is not None:
                passing = np.zeros(len(self.corpus), dtype=bool)
                doc_ids = [self.chunks.doc_ids[r] for r in np.flatnonzero(mask).tolist()]
                passing[self.corpus.rows_of(doc_ids)] = True
                mask = passing
            self.masks[key] = mask
        return self.masks[key]


def loss_tsv(losses: Sequence[Loss]) -> str:
    """`loss.tsv`: query-id, doc-id, relevance, lost_at, rank before, rank after (empty: none)."""
    lines = ["query-id\tdoc-id\trelevance\tlost_at\trank_before\trank_after"]
    for loss in losses:
        before = "" if loss.rank_before is None else str(loss.rank_before)
        after = "" if loss.rank_after is None else str(loss.rank_after)
        lines.append(f"{loss.qid}\t{loss.doc_id}\t{loss.relevance}\t{loss.lost_at}\t{before}\t{after}")
    return "\n".join(lines) + "\n"
