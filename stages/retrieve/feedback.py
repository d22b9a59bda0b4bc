"""Pseudo-relevance feedback for the BM25 stage: RM3 and Rocchio, Anserini's formulas.

A BM25 stage with `expand:` set searches twice per query: the first pass ranks the corpus with the
analysed query, the top `fb_docs` documents of that ranking give an expanded, weighted query
(`{term: weight}`), and the second pass is a BM25 search with those weights (each term's BM25
contribution times its weight: Lucene's `BoostQuery`). Filters apply to both passes.

Feedback documents are the analysed text of each document (the index's own tokenizer, so the same
terms the index holds; Anserini reads the same thing from Lucene's stored term vectors). As in
Anserini, a feedback term must be 2 to 20 characters, match `[a-z0-9]+` (`filter_terms`) and occur
in at most `max_df` (10%) of the documents.

* **RM3** (`Rm3Reranker`): each feedback document's term counts, cut to its `fb_terms` most frequent
  terms; a term's weight is the sum over documents of count / (document's kept total) x the
  document's first-pass score; the `fb_terms` heaviest terms, scaled to sum 1, are interpolated with
  the query (its term counts scaled to sum 1): `w * query + (1 - w) * model`, `w` =
  `original_query_weight`.
* **Rocchio**: each feedback document's vector of BM25 term weights (the term's contribution to
  that document's score), cut to its `fb_terms` heaviest and scaled to unit L2 norm; the mean over
  the top `fb_docs` documents (and, with `gamma > 0`, over the bottom `bottom_fb_docs` of the first
  pass' `k`), cut to `fb_terms` terms; the query vector (counts, unit L2 norm);
  `alpha * query + beta * mean(top) - gamma * mean(bottom)`, non-positive weights dropped.

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

from stagegraph.indexes.bm25_scoring import idf

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
    max_df: float = Field(0.1, gt=0.0, le=1.0, description="a feedback term occurs in at most this share of documents")
    filter_terms: bool = Field(True, description="feedback terms must match [a-z0-9]+ (Anserini's filter)")

    def first_pass_depth(self, k: int) -> int:
        """How many documents the first pass must return."""
        if self.method == "rocchio" and self.gamma > 0 and self.bottom_fb_docs > 0:
            return max(k, self.fb_docs)
        return self.fb_docs


@dataclass(frozen=True)
class FeedbackSource:
    """What expansion reads from a bound BM25 search: collection statistics and document terms."""

    n_docs: int
    avgdl: float
    df: Callable[[str], int]
    terms_of: Callable[[int], list[str]]  # a corpus row's analysed terms
    variant: str = "lucene"
    k1: float = 0.9
    b: float = 0.4


def _top(vector: dict[str, float], n: int) -> dict[str, float]:
    """The `n` heaviest entries (ties by term)."""
    return dict(sorted(vector.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _counts(terms: list[str], source: FeedbackSource, settings: Expansion) -> dict[str, float]:
    """A feedback document's term counts, Anserini's term filter applied."""
    out: dict[str, float] = {}
    n = np.float32(source.n_docs)
    limit = np.float32(settings.max_df)
    for term, count in sorted(Counter(terms).items()):
        if len(term) < 2 or len(term) > 20:
            continue
        if settings.filter_terms and not _TERM.fullmatch(term):
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


def _bm25_vector(row: int, source: FeedbackSource, settings: Expansion) -> dict[str, float]:
    """A document's BM25 term weights (each kept term's contribution to its score), unit L2 norm."""
    terms = source.terms_of(row)
    counts = _counts(terms, source, settings)
    if not counts:
        return {}
    names = list(counts)
    tf = np.array([counts[t] for t in names])
    idfs = idf(source.variant, np.array([source.df(t) for t in names], dtype=np.float64), source.n_docs)
    norm = source.k1 * (1.0 - source.b + source.b * len(terms) / source.avgdl) if source.avgdl > 0 else source.k1
    saturation = source.k1 + 1.0 if source.variant == "atire" else 1.0
    weights = idfs * tf * saturation / (tf + norm)
    vector = _top(dict(zip(names, weights.tolist())), settings.fb_terms)
    length = float(np.sqrt(sum(v * v for v in vector.values())))
    return {t: v / length for t, v in vector.items()} if length > 0 else {}


def _mean(vectors: list[dict[str, float]], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for vector in vectors:
        for term, weight in vector.items():
            out[term] = out.get(term, 0.0) + weight / len(vectors)
    return _top(out, n)


def _rocchio(query_terms: list[str], rows: np.ndarray, source: FeedbackSource, settings: Expansion) -> dict[str, float]:
    n = min(settings.fb_docs, len(rows))
    top = _mean([_bm25_vector(int(r), source, settings) for r in rows[:n]], settings.fb_terms) if n else {}
    bottom: dict[str, float] = {}
    if settings.gamma > 0 and settings.bottom_fb_docs > 0 and len(rows) > n:
        tail = rows[max(n, len(rows) - settings.bottom_fb_docs):]
        bottom = _mean([_bm25_vector(int(r), source, settings) for r in tail], settings.fb_terms)
    query = Counter(query_terms)
    length = float(np.sqrt(sum(c * c for c in query.values())))
    out = {t: settings.alpha * query.get(t, 0) / length + settings.beta * top.get(t, 0.0)
           - settings.gamma * bottom.get(t, 0.0) for t in {*query, *top, *bottom}}
    return {t: out[t] for t in sorted(out) if out[t] > 0}
