"""The reference backend: the card's `rank_bm25` scoring every document of the corpus per query.

It exists to check the fast backend, not to serve traffic (it loops over all documents in Python,
O(N) per query term). rank-bm25 has no Lucene or ATIRE class, so for those variants we keep its
`BM25Okapi` counting and scoring loop and swap in the variant's idf table (`_calc_idf`):

* `robertson` is `BM25Okapi` unchanged. Its idf floor differs from ours: a term found in more than
  half of the documents has a negative Robertson idf, which rank-bm25 replaces by
  `epsilon * mean idf` (epsilon = 0.25) while the sparse backend clips it to 0; a term found in
  exactly half the documents has idf 0 in both. So the two backends agree on every query whose
  terms each occur in at most half of the documents, and may differ otherwise.
* `lucene` and `atire` use the exact idf formulas of `indexes/bm25_scoring.py` (no floor needed:
  they are never negative), so the backends agree everywhere.

`BM25Okapi` multiplies the tf part by (k1 + 1); Lucene and Robertson (as defined by Kamphuis et
al.) do not, so those scores are divided by (k1 + 1) to put both backends on one scale.
"""

from __future__ import annotations

import numpy as np
from rank_bm25 import BM25Okapi

from stagegraph.indexes.bm25_scoring import idf
from stagegraph.indexes.tokenize import TokenizedCorpus


class _VariantOkapi(BM25Okapi):
    """`BM25Okapi` with the idf of the chosen variant (Robertson keeps rank-bm25's own floor)."""

    def __init__(self, corpus: list[list[str]], variant: str, k1: float, b: float):
        self.variant = variant
        super().__init__(corpus, k1=k1, b=b)

    def _calc_idf(self, nd: dict[str, int]) -> None:
        if self.variant == "robertson":
            super()._calc_idf(nd)
            return
        words = list(nd)
        values = idf(self.variant, np.array([nd[w] for w in words], dtype=np.float64), self.corpus_size)
        self.idf = dict(zip(words, values.tolist()))
        self.average_idf = float(values.mean()) if len(values) else 0.0


class ReferenceSearcher:
    """Scores with rank-bm25 and returns the documents with a positive score."""

    def __init__(self, tokens: TokenizedCorpus, variant: str, k1: float, b: float):
        docs = [tokens.doc_tokens(row) for row in range(tokens.n_docs)]
        self.model = _VariantOkapi(docs, variant, k1, b)
        self.scale = 1.0 if variant == "atire" else 1.0 / (k1 + 1.0)
        self.n_docs = tokens.n_docs

    def score(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of every document with a positive score; `terms` may repeat."""
        if not terms:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        scores = np.asarray(self.model.get_scores(terms), dtype=np.float64) * self.scale
        rows = np.flatnonzero(scores > 0)
        return rows.astype(np.int64), scores[rows].astype(np.float32)
