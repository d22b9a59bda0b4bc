"""Compiled inner loop of the sparse BM25 backend (numba, when it is installed).

`top_k_postings(indptr, indices, data, terms, weights, acc, touched, k, allowed)` answers one query:

1. adds the postings of the query terms (times their weights), longest list first, into the
   dense accumulator `acc`, remembering each document in `touched` the first time it gets a score;
2. walks the touched documents once, reading and zeroing their slot of `acc` (so the accumulator
   is clean for the next query) while keeping the best `k` in a bounded heap;
3. returns those `k` as (rows int64, scores float32), best first, equal scores by row ascending.

One pass over the postings and one over the candidates: no per-document Python and no sort of
all candidates. Terms with idf 0 (all contributions 0) are skipped, so a slot of `acc` is
non-zero exactly when its document has been touched.

numba is optional: `HAVE_NUMBA` says whether the compiled version is available; without it
`stagegraph.indexes.bm25_scoring.SparseSearcher` uses an equivalent vectorised numpy path (slower on long
posting lists: docs/benchmarks.md, "Where the defaults come from"). The plain Python function stays importable so tests can run it uncompiled.

`allowed` (a uint8 array over the documents, empty for no filter) keeps disallowed documents out of
the heap, so a filter costs nothing extra and the top k is the best k among allowed documents.
"""

from __future__ import annotations

import numpy as np


def _worse(s1: float, r1: int, s2: float, r2: int) -> bool:
    """Whether (s1, r1) ranks below (s2, r2): lower score, or equal score and higher row."""
    return s1 < s2 or (s1 == s2 and r1 > r2)


def _sift_down(hs: np.ndarray, hr: np.ndarray, size: int, i: int) -> None:
    """Restore the heap (worst element at the root) below position `i`."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(hs[right], hr[right], hs[left], hr[left]):
            child = right
        if _worse(hs[child], hr[child], hs[i], hr[i]):
            hs[i], hs[child] = hs[child], hs[i]
            hr[i], hr[child] = hr[child], hr[i]
            i = child
        else:
            return


def select_top(acc: np.ndarray, touched: np.ndarray, n: int, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 of both kernels: walk the `n` touched documents, read and zero their slots of `acc`,
    keep the best `k` allowed ones in a bounded heap; (rows, scores) best first, ties by row."""
    cap = min(k, n)
    hs = np.empty(cap, dtype=np.float32)
    hr = np.empty(cap, dtype=np.int64)
    size = 0
    masked = len(allowed) > 0  # a filter: only allowed documents compete for the top k
    for i in range(n):
        d = touched[i]
        s = acc[d]
        acc[d] = 0.0
        if masked:  # branch-free: a disallowed document sinks below any score, so it never replaces one
            s = s - (1 - allowed[d]) * 3.0e38
        if size < cap:  # push, sift up
            if s < -1.0e38:  # ... and is never pushed while the heap fills
                continue
            pos = size
            hs[pos] = s
            hr[pos] = d
            size += 1
            while pos > 0:
                parent = (pos - 1) // 2
                if _worse(hs[pos], hr[pos], hs[parent], hr[parent]):
                    hs[pos], hs[parent] = hs[parent], hs[pos]
                    hr[pos], hr[parent] = hr[parent], hr[pos]
                    pos = parent
                else:
                    break
        elif cap > 0 and _worse(hs[0], hr[0], s, d):  # better than the worst kept: replace it
            hs[0] = s
            hr[0] = d
            _sift_down(hs, hr, size, 0)
    # Pop the worst repeatedly, filling from the back: best first at the end.
    rows = np.empty(size, dtype=np.int64)
    scores = np.empty(size, dtype=np.float32)
    for last in range(size - 1, -1, -1):
        rows[last] = hr[0]
        scores[last] = hs[0]
        hs[0] = hs[last]
        hr[0] = hr[last]
        _sift_down(hs, hr, last, 0)
    return rows, scores


def top_k_postings_py(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    terms: np.ndarray,
    weights: np.ndarray,
    acc: np.ndarray,
    touched: np.ndarray,
    k: int,
    allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    # Longest posting list first: its documents are all new, so it skips the "seen before?" test.
    order = np.argsort(indptr[terms] - indptr[terms + 1], kind="mergesort")
    n = 0
    for j in order:
        t = terms[j]
        w = weights[j]
        start, end = indptr[t], indptr[t + 1]
        if end == start or data[start] == 0.0:  # a term's entries share its idf: all zero or none
            continue
        if n == 0:  # the first scored term: every document is new, no test needed
            for p in range(start, end):
                d = indices[p]
                touched[n] = d
                n += 1
                acc[d] = data[p] * w
        else:
            for p in range(start, end):
                d = indices[p]
                if acc[d] == 0.0:
                    touched[n] = d
                    n += 1
                acc[d] += data[p] * w
    return select_top(acc, touched, n, k, allowed)



def top_k_lazy_py(
    indptr: np.ndarray,
    indices: np.ndarray,
    tf: np.ndarray,
    lengths: np.ndarray,
    terms: np.ndarray,
    idfs: np.ndarray,
    weights: np.ndarray,
    k1: float,
    b: float,
    avgdl: float,
    saturation: float,
    acc: np.ndarray,
    touched: np.ndarray,
    k: int,
    allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Lazy scoring (segments): postings hold raw `tf` and documents their length; the query brings
    each term's `idf` (from the collection-wide statistics) and `avgdl`, and a posting contributes
    `w * idf * saturation * tf / (tf + k1 * (1 - b + b * |d| / avgdl))`, in float32, terms in the
    order given (so a sum does not depend on how documents are split into segments)."""
    n = 0
    for j in range(len(terms)):
        t = terms[j]
        w = weights[j]
        q = idfs[j]
        start, end = indptr[t], indptr[t + 1]
        if end == start or q == 0.0:
            continue
        for p in range(start, end):
            d = indices[p]
            norm = np.float32(k1 * (1.0 - b + b * lengths[d] / avgdl))
            f = tf[p]
            c = f / (f + norm)
            c = c * np.float32(saturation)
            c = c * q
            if acc[d] == 0.0:
                touched[n] = d
                n += 1
            acc[d] += c * w
    return select_top(acc, touched, n, k, allowed)

try:  # pragma: no cover - depends on the environment
    from numba import njit

    _worse = njit(inline="always", cache=True)(_worse)
    _sift_down = njit(cache=True)(_sift_down)
    select_top = njit(nogil=True, cache=True)(select_top)
    top_k_postings = njit(nogil=True, cache=True)(top_k_postings_py)
    top_k_lazy = njit(nogil=True, cache=True)(top_k_lazy_py)
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    top_k_postings = None
    top_k_lazy = top_k_lazy_py
    HAVE_NUMBA = False
