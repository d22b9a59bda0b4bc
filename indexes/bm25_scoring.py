"""BM25 formulas and the fast backend: eager sparse scoring over a term-major score matrix.

Variants (Kamphuis, de Vries, Boytsov & Lin, "Which BM25 do you mean?", ECIR 2020; the same
definitions as bm25s), with `norm(d) = 1 - b + b * |d| / avgdl`:

| variant   | idf(t)                                   | tf part                         |
| ---       | ---                                      | ---                             |
| lucene    | log(1 + (N - df + 0.5) / (df + 0.5))     | tf / (tf + k1 * norm(d))        |
| robertson | max(0, log((N - df + 0.5) / (df + 0.5))) | tf / (tf + k1 * norm(d))        |
| atire     | log(N / df)                              | tf (k1 + 1) / (tf + k1 norm(d)) |

`lucene` is Lucene's `BM25Similarity` (Pyserini, bm25s default) without Lucene's lossy one-byte
document-length encoding. `robertson` clips the negative idf of terms found in more than half the
documents to 0 (bm25s does the same); rank-bm25's `BM25Okapi` instead floors them at
`epsilon * mean idf`, see `indexes/bm25_reference.py`. Every variant gives scores >= 0.

Eager scoring: at build time every (term, document) pair's contribution `idf(t) * tf part` is
computed once and stored as a CSC-style matrix (`indptr` over terms, `indices` = document rows,
`data` = float32 scores). A query then only gathers the columns of its terms and adds them up in
a reusable dense accumulator, touching just the documents that contain a query term; a top-k
selection over those candidates finishes it (one compiled pass with a bounded heap when numba is
installed, vectorised numpy with a partial sort otherwise). No per-query loop over documents in Python.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from stagegraph.indexes.bm25_kernels import HAVE_NUMBA, top_k_postings

Variant = Literal["lucene", "robertson", "atire"]
VARIANTS: tuple[str, ...] = ("lucene", "robertson", "atire")


def idf(variant: str, df: np.ndarray, n_docs: int) -> np.ndarray:
    """Inverse document frequency of each term (float64); terms with df == 0 get 0."""
    df = np.asarray(df, dtype=np.float64)
    n = float(n_docs)
    out = np.zeros_like(df)
    seen = df > 0
    d = df[seen]
    if variant == "lucene":
        out[seen] = np.log1p((n - d + 0.5) / (d + 0.5))
    elif variant == "robertson":
        out[seen] = np.maximum(0.0, np.log((n - d + 0.5) / (d + 0.5)))
    elif variant == "atire":
        out[seen] = np.log(n / d)
    else:
        raise ValueError(f"unknown BM25 variant {variant!r}; use one of {', '.join(VARIANTS)}")
    return out


def length_norm(doc_lengths: np.ndarray, k1: float, b: float) -> np.ndarray:
    """`k1 * (1 - b + b * |d| / avgdl)` per document (float64)."""
    lengths = np.asarray(doc_lengths, dtype=np.float64)
    avgdl = float(lengths.mean()) if len(lengths) else 0.0
    if avgdl <= 0:
        raise ValueError("cannot build a BM25 index: after analysis no document has any term (check the tokenizer)")
    return k1 * (1.0 - b + b * lengths / avgdl)


def term_frequencies(term_ids: np.ndarray, offsets: np.ndarray, vocab_size: int) -> sp.csc_matrix:
    """Term-major term-frequency matrix: column t holds the documents containing t (rows ascending)
    and float32 counts. The caller's arrays are only read."""
    n_docs = len(offsets) - 1
    ones = np.ones(len(term_ids), dtype=np.float32)
    doc_major = sp.csr_matrix((ones, term_ids, offsets), shape=(n_docs, vocab_size))
    # Transposing first keeps each column's rows in order, so repeats of a (doc, term) pair are
    # adjacent and sum_duplicates is one linear pass (no per-row sort), which matters at 1M docs.
    tf = doc_major.tocsc()
    del doc_major, ones
    tf.sum_duplicates()
    return tf


@dataclass
class SparseScores:
    """Term-major matrix of precomputed BM25 contributions: column `t` is `indices/data[indptr[t]:indptr[t+1]]`."""

    indptr: np.ndarray  # int64, vocab_size + 1
    indices: np.ndarray  # int32 document rows, sorted within each term
    data: np.ndarray  # float32 contributions, all > 0 except for idf == 0 terms
    n_docs: int

    @classmethod
    def build(cls, tf: sp.csc_matrix, doc_lengths: np.ndarray, variant: str, k1: float, b: float) -> SparseScores:
        """Score every nonzero of the term-major `tf` matrix (see `term_frequencies`); reuses its arrays."""
        n_docs, _ = tf.shape
        df = np.diff(tf.indptr)
        term_idf = idf(variant, df, n_docs).astype(np.float32)
        norm = length_norm(doc_lengths, k1, b).astype(np.float32)
        values = tf.data.astype(np.float32, copy=False)  # tf; overwritten with the scores
        denom = norm[tf.indices]  # k1 * (1 - b + b |d| / avgdl), per (term, doc) entry
        denom += values  # tf + k1 * norm(d)
        np.divide(values, denom, out=values)  # tf / (tf + k1 * norm(d))
        del denom
        if variant == "atire":
            values *= np.float32(k1 + 1.0)
        values *= np.repeat(term_idf, df)
        return cls(tf.indptr.astype(np.int64, copy=False), tf.indices.astype(np.int32, copy=False), values, n_docs)

    @property
    def vocab_size(self) -> int:
        return len(self.indptr) - 1

    def validate(self) -> None:
        """Raise ValueError when the arrays do not form a consistent matrix (a damaged index)."""
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            raise ValueError("indptr must be 1-d and start at 0")
        if int(self.indptr[-1]) != len(self.indices) or len(self.indices) != len(self.data):
            raise ValueError(f"indptr ends at {int(self.indptr[-1])}, indices has {len(self.indices)}, data {len(self.data)}")


class SparseSearcher:
    """Scores queries against a `SparseScores` matrix with a per-thread dense accumulator.

    The accumulator (one float32 per document) is reset after each query. With numba installed
    `top` adds the postings and selects the best k in one compiled pass
    (`indexes/bm25_kernels.py`); otherwise, or with `use_numba=False`, a vectorised numpy path
    (`score` then `top_k`) gives the same result.
    """

    def __init__(self, scores: SparseScores, use_numba: bool | None = None):
        self.scores = scores
        # Plain ndarray views: memory-mapped arrays stay mapped, without np.memmap's per-op overhead.
        self._indptr = np.asarray(scores.indptr)
        self._indices = np.asarray(scores.indices)
        self._data = np.asarray(scores.data)
        self.use_numba = HAVE_NUMBA if use_numba is None else (use_numba and HAVE_NUMBA)
        self._local = threading.local()

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            n = self.scores.n_docs
            bufs = self._local.bufs = (np.zeros(n, dtype=np.float32), np.empty(n, dtype=np.int32))
        return bufs

    def warm_up(self) -> None:
        """Compile the numba kernel now (seconds the first time, then cached), not in the first query."""
        if self.use_numba:
            acc, touched = self._buffers()
            top_k_postings(self._indptr, self._indices, self._data, np.empty(0, dtype=np.int64),
                           np.empty(0, dtype=np.float32), acc, touched, 1, _NO_MASK)

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self._indptr[term], self._indptr[term + 1]
        return self._indices[start:end], self._data[start:end]

    def top(
        self, terms: np.ndarray, weights: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` documents for distinct term ids `terms` with query counts `weights`:
        (rows int64, scores float32), score descending, ties by row ascending; only scores > 0;
        with `allowed` (a bool per document), the best `k` among the allowed ones."""
        terms = np.asarray(terms, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        if not self.use_numba or len(terms) == 0:
            return top_k(*keep_allowed(*self.score(terms, weights), allowed), k)
        acc, touched = self._buffers()
        mask = _NO_MASK if allowed is None else _as_bytes(allowed)
        try:
            return top_k_postings(self._indptr, self._indices, self._data, terms, weights, acc, touched, max(k, 0), mask)
        except BaseException:
            acc[:] = 0.0  # never leave a dirty accumulator behind
            raise

    def score(self, terms: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of every document with a positive score, unordered (numpy path).

        `terms` are distinct term ids and `weights` their counts in the query (a term that occurs
        twice in the query counts twice, as in Lucene/Pyserini and rank-bm25).
        """
        terms = np.asarray(terms, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        if len(terms) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if len(terms) == 1:  # one posting list: no accumulation needed
            rows, vals = self.postings(int(terms[0]))
            vals = vals * weights[0]
            keep = vals > 0
            return rows[keep].astype(np.int64), vals[keep]
        acc, _ = self._buffers()
        try:
            return self._score_numpy(terms, weights, acc)
        except BaseException:
            acc[:] = 0.0  # never leave a dirty accumulator behind
            raise

    def _score_numpy(self, terms: np.ndarray, weights: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Longest posting list first, as the kernel does, so float32 sums agree bit for bit.
        order = np.argsort(self._indptr[terms] - self._indptr[terms + 1], kind="stable")
        terms, weights = terms[order], weights[order]
        lists = [self.postings(int(t)) for t in terms]
        for (rows, vals), w in zip(lists, weights):
            acc[rows] += vals if w == 1 else vals * w  # rows are distinct within one term
        # Read each document once: the first term that holds it takes its score and zeroes the
        # slot, so later terms see 0 there and skip it. This also resets the accumulator.
        out_rows, out_vals = [], []
        for rows, _ in lists:
            got = acc[rows]
            acc[rows] = 0.0
            keep = got > 0
            out_rows.append(rows[keep])
            out_vals.append(got[keep])
        return np.concatenate(out_rows).astype(np.int64), np.concatenate(out_vals)


_NO_MASK = np.empty(0, dtype=np.uint8)


def _as_bytes(allowed: np.ndarray) -> np.ndarray:
    """The mask as uint8 for the kernel: a zero-copy view of a contiguous bool array."""
    allowed = np.asarray(allowed)
    if allowed.dtype == np.bool_ and allowed.flags.c_contiguous:
        return allowed.view(np.uint8)
    return np.ascontiguousarray(allowed, dtype=np.uint8)


def keep_allowed(rows: np.ndarray, scores: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Only the (rows, scores) whose row `allowed` marks (everything when None)."""
    if allowed is None:
        return rows, scores
    keep = np.asarray(allowed, dtype=bool)[rows]
    return rows[keep], scores[keep]


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` (rows, scores), score descending, ties by row ascending (int64, float32)."""
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if k <= 0:
        return rows[:0], scores[:0]
    if len(scores) > k:
        # Everything scoring at least the k-th best survives, so ties at the cut are ordered by row.
        kth = -np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(scores >= kth)
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]
