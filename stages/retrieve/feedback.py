"""Pseudo-relevance feedback for the BM25 stage: RM3 and Rocchio, Anserini's formulas.

A BM25 stage with `expand:` set searches twice per query: the first pass ranks the corpus with the
analysed query, the top `fb_docs` documents of that ranking give an expanded, weighted query
(`{term: weight}`), and the second pass is a BM25 search with those weights (each term's BM25
contribution times its weight: Lucene's `BoostQuery`). Filters apply to both passes.

Feedback documents are the analysed text of each document (the index's own tokenizer, so the same
terms the index holds; Anserini reads the same thing from Lucene's stored term vectors). As in
Anserini, a feedback term must be 2 to 20 characters, match `[a-z0-9]+` (`filter_terms`) and occur
in at most `max_df` (10%) of the documents (RM3; Rocchio checks length and df only).

* **RM3** (`Rm3Reranker`): each feedback document's term counts, cut to its `fb_terms` most frequent
  terms; a term's weight is the sum over documents of count / (document's kept total) x the
  document's first-pass score; the `fb_terms` heaviest terms, scaled to sum 1, are interpolated with
  the query (its term counts scaled to sum 1): `w * query + (1 - w) * model`, `w` =
  `original_query_weight`.
* **Rocchio** (Anserini 0.25's `RocchioReranker`): each feedback document's term counts over their
  L2 norm, averaged over the top `fb_docs` documents, cut to the `fb_terms` heaviest and scaled to
  unit L2 norm (with `gamma > 0` the same over the last `bottom_fb_docs` of the first pass' `k`,
  `bottom_fb_terms` terms); the query's term counts at unit L2 norm;
  `alpha * query + beta * mean(top) - gamma * mean(bottom)`, non-positive weights dropped. Its term
  filter is length and df only (no `[a-z0-9]+`).

Ties in every "heaviest n" cut are broken by term (Anserini's order within a tie is its hash map's).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


_TERM = re.compile(r"[a-z0-9]+")


class Expansion(BaseModel):
    """`expand:` of a BM25 stage: the feedback method and its settings (Pyserini's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["rm3", "rocchio"] = "rm3"
    fb_docs: int = Field(10, ge=1, description="feedback documents: the top of the first pass")
    fb_terms: int = Field(10, ge=1, description="expansion terms kept (per document, then overall)")
    original_query_weight: float = Field(0.5, ge=0.0, le=1.0, description="RM3: weight of the original query")
    alpha: float = Field(1.0, ge=0.0, description="Rocchio: weight of the original query")
    beta: float = Field(0.75, ge=0.0, description="Rocchio: weight of the top documents' mean")
    gamma: float = Field(0.0, ge=0.0, description="Rocchio: weight of the bottom documents' mean (subtracted)")
    bottom_fb_docs: int = Field(10, ge=0, description="Rocchio: non-relevant documents, the bottom of the first pass")
    bottom_fb_terms: int = Field(10, ge=1, description="Rocchio: terms kept of the bottom documents' mean")
    max_df: float = Field(0.1, gt=0.0, le=1.0, description="a feedback term occurs in at most this share of documents")
    filter_terms: bool = Field(True, description="RM3: feedback terms must match [a-z0-9]+ (Anserini's filter)")

    def first_pass_depth(self, k: int) -> int:
        """How many documents the first pass must return."""
        if self.method == "rocchio" and self.gamma > 0 and self.bottom_fb_docs > 0:
            return max(k, self.fb_docs)
        return self.fb_docs


@dataclass(frozen=True)
class FeedbackSource:
    """What expansion reads from a bound BM25 search: collection statistics and document terms."""

    n_docs: int
    df: Callable[[str], int]
    terms_of: Callable[[int], list[str]]  # a corpus row's analysed terms


def _top(vector: dict[str, float], n: int) -> dict[str, float]:
    """The `n` heaviest entries (ties by term)."""
    return dict(sorted(vector.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _counts(terms: list[str], source: FeedbackSource, settings: Expansion) -> dict[str, float]:
    """A feedback document's term counts, Anserini's term filter applied (the [a-z0-9]+ part by RM3 only)."""
    out: dict[str, float] = {}
    n = np.float32(source.n_docs)
    limit = np.float32(settings.max_df)
    for term, count in sorted(Counter(terms).items()):
        if len(term) < 2 or len(term) > 20:
            continue
        if settings.filter_terms and settings.method == "rm3" and not _TERM.fullmatch(term):
            continue
        if np.float32(source.df(term)) / n > limit:
            continue
        out[term] = float(count)
    return out


def expand(query_terms: list[str], rows: np.ndarray, scores: np.ndarray, source: FeedbackSource,
           settings: Expansion) -> dict[str, float]:
    """The weighted query `{term: weight}` of analysed `query_terms` given the first pass (`rows`,
    `scores`, best first)."""
    if not query_terms:
        return {}
    if settings.method == "rm3":
        return _rm3(query_terms, rows, scores, source, settings)
    return _rocchio(query_terms, rows, source, settings)


def _rm3(query_terms: list[str], rows: np.ndarray, scores: np.ndarray, source: FeedbackSource,
         settings: Expansion) -> dict[str, float]:
    n = min(settings.fb_docs, len(rows))
    vectors = [_top(_counts(source.terms_of(int(row)), source, settings), settings.fb_terms) for row in rows[:n]]
    norms = [sum(v.values()) for v in vectors]
    model: dict[str, float] = {}
    for vector, norm, score in zip(vectors, norms, scores[:n]):
        if norm > 0.001:
            for term, weight in vector.items():
                model[term] = model.get(term, 0.0) + weight / norm * float(score)
    model = _top(model, settings.fb_terms)
    total = sum(abs(w) for w in model.values())
    model = {t: w / total for t, w in model.items()} if total > 0 else {}
    query = Counter(query_terms)
    length = len(query_terms)
    w = settings.original_query_weight
    out = {t: w * query.get(t, 0) / length + (1.0 - w) * model.get(t, 0.0) for t in {*query, *model}}
    return {t: out[t] for t in sorted(out) if out[t] > 0}


def _mean(rows: np.ndarray, source: FeedbackSource, settings: Expansion, n_terms: int) -> dict[str, float]:
    """Anserini's mean document vector: each document's term counts over their L2 norm, averaged,
    cut to the `n_terms` heaviest and scaled to unit L2 norm."""
    vectors = [_counts(source.terms_of(int(r)), source, settings) for r in rows]
    out: dict[str, float] = {}
    for vector in vectors:
        norm = float(np.sqrt(sum(v * v for v in vector.values())))
        if norm > 0.001:
            for term, count in vector.items():
                out[term] = out.get(term, 0.0) + count / norm
    out = _top({t: w / len(vectors) for t, w in out.items()}, n_terms)
    length = float(np.sqrt(sum(v * v for v in out.values())))
    return {t: v / length for t, v in out.items()} if length > 0 else {}


def _rocchio(query_terms: list[str], rows: np.ndarray, source: FeedbackSource, settings: Expansion) -> dict[str, float]:
    n = min(settings.fb_docs, len(rows))
    top = _mean(rows[:n], source, settings, settings.fb_terms) if n else {}
    bottom: dict[str, float] = {}
    if settings.gamma > 0 and settings.bottom_fb_docs > 0 and len(rows):
        tail = rows[::-1][:settings.bottom_fb_docs]
        bottom = _mean(tail, source, settings, settings.bottom_fb_terms)
    query = Counter(query_terms)
    length = float(np.sqrt(sum(c * c for c in query.values())))
    out = {t: settings.alpha * query.get(t, 0) / length + settings.beta * top.get(t, 0.0)
           - settings.gamma * bottom.get(t, 0.0) for t in {*query, *top, *bottom}}
    return {t: out[t] for t in sorted(out) if out[t] > 0}
