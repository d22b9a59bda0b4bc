"""Scoring a run against qrels, every metric at once, the way trec_eval scores it.

`score_run` scores a whole run at once: judged (query, row) pairs and ranked (query, row) pairs are
matched with one `searchsorted` over integer keys, and every metric is an array expression over a
padded queries x ranks matrix of grades. Judged queries that are missing from the run, or whose
ranking is empty, score 0 on every metric and are counted in `RunScores.missing`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.evaluation.measures import DEFAULT_METRICS, GradedRun, Metric, parse_metrics
from stagegraph.pipeline.ranking import Ranking


@dataclass
class RunScores:
    """Per-query metric values over the judged queries, their means and the missing queries."""

    qids: list[str]
    per_query: dict[str, np.ndarray]  # metric string -> values aligned with qids
    missing_ids: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return len(self.missing_ids)

    @property
    def means(self) -> dict[str, float]:
        return {m: float(v.mean()) if v.size else 0.0 for m, v in self.per_query.items()}


def score_run(
    rankings: Sequence[Ranking] | Mapping[str, Ranking],
    queries: Queries | None,
    qrels: Qrels,
    corpus: Corpus,
    metrics: Iterable[str | Metric] = DEFAULT_METRICS,
) -> RunScores:
    """Score a run against `qrels` over every judged query (in the qrels' order).

    `rankings` is either aligned with `queries` or a `{query_id: Ranking}` mapping (then `queries`
    may be None). Queries of the run without judgments are ignored, as trec_eval does.
    """
    parsed = parse_metrics(metrics)
    if isinstance(rankings, Mapping):
        by_qid = dict(rankings)
    else:
        if queries is None or len(queries) != len(rankings):
            n = "no" if queries is None else len(queries)
            raise ValueError(f"score_run got {len(rankings)} rankings for {n} queries; pass aligned queries")
        by_qid = dict(zip(queries.ids, rankings))
    qids = qrels.query_ids
    nq, n_docs = len(qids), max(len(corpus), 1)
    uncut = any(m.depth is None for m in parsed)
    max_k = max((m.k for m in parsed if m.k is not None), default=0)

    ranked = [by_qid.get(q) for q in qids]
    missing = [q for q, r in zip(qids, ranked) if r is None or len(r) == 0]
    lengths = np.array([0 if r is None else len(r) for r in ranked], dtype=np.int64)
    depth = int(lengths.max(initial=0)) if uncut else max_k
    depth = max(depth, max_k, 1)
    used = np.minimum(lengths, depth)

    # Judged pairs as sorted integer keys (query index * n_docs + row) with their grades.
    judged = [qrels.as_rows(q, corpus) for q in qids]
    j_len = np.array([len(j.doc_rows) for j in judged], dtype=np.int64)
    j_q = np.repeat(np.arange(nq, dtype=np.int64), j_len)
    j_rows = np.concatenate([j.doc_rows for j in judged]) if nq else np.empty(0, np.int64)
    j_grades = np.concatenate([j.grades for j in judged]) if nq else np.empty(0, np.int64)
    j_keys = j_q * n_docs + j_rows
    order = np.argsort(j_keys, kind="stable")
    j_keys, j_sorted_grades = j_keys[order], j_grades[order]
    # Every judged grade, including documents absent from the corpus: as in trec_eval they count
    # as relevant-but-unretrieved in recall's denominator and in the ideal DCG.
    all_grades = [np.fromiter(qrels.for_query(q).values(), dtype=np.int64) for q in qids]
    width = max((len(g) for g in all_grades), default=1) or 1
    judged_matrix = np.zeros((nq, width), dtype=np.int64)
    judged_valid = np.zeros((nq, width), dtype=bool)
    for i, g in enumerate(all_grades):
        judged_matrix[i, : len(g)] = g
        judged_valid[i, : len(g)] = True

    # Ranked pairs, looked up among the judged keys in one searchsorted.
    r_q = np.repeat(np.arange(nq, dtype=np.int64), used)
    r_rank = np.arange(int(used.sum())) - np.repeat(np.cumsum(used) - used, used)
    r_rows = (
        np.concatenate([r.doc_rows[:depth] for r, u in zip(ranked, used) if u > 0])
        if used.sum()
        else np.empty(0, np.int64)
    )
    r_keys = r_q * n_docs + r_rows
    hit_at = np.searchsorted(j_keys, r_keys)
    found = hit_at < len(j_keys)
    found[found] = j_keys[hit_at[found]] == r_keys[found]
    grades = np.zeros((nq, depth), dtype=np.int64)
    grades[r_q[found], r_rank[found]] = j_sorted_grades[hit_at[found]]
    judged = np.zeros((nq, depth), dtype=bool)
    judged[r_q[found], r_rank[found]] = True

    run = GradedRun(grades, judged, lengths, judged_matrix, judged_valid)
    per_query = {str(m): m.compute(run).astype(np.float64) for m in parsed}
    return RunScores(list(qids), per_query, missing)
