"""Compiled inner loops of the sparse BM25 backend (numba, when it is installed).

`accumulate(indptr, indices, data, terms, weights, acc, touched)` adds the postings of the query
terms into the dense accumulator `acc`, remembers each document the first time it is touched,
then reads the touched documents' scores and resets `acc` to zero. One pass over the postings,
no per-document Python. Zero contributions (terms with idf 0) are skipped, so a slot of `acc` is
non-zero exactly when its document has been touched.

numba is optional: `HAVE_NUMBA` says whether the compiled version is available; without it
`indexes.bm25_scoring.SparseSearcher` uses an equivalent vectorised numpy path (about 2-3x
slower on long posting lists). The plain Python function stays importable for tests.
"""

from __future__ import annotations

import numpy as np


def accumulate_py(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    terms: np.ndarray,
    weights: np.ndarray,
    acc: np.ndarray,
    touched: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    n = 0
    for j in range(terms.shape[0]):
        t = terms[j]
        w = weights[j]
        for p in range(indptr[t], indptr[t + 1]):
            v = data[p]
            if v == 0.0:
                continue
            d = indices[p]
            if acc[d] == 0.0:
                touched[n] = d
                n += 1
            acc[d] += v * w
    rows = np.empty(n, dtype=np.int64)
    vals = np.empty(n, dtype=np.float32)
    for i in range(n):
        d = touched[i]
        rows[i] = d
        vals[i] = acc[d]
        acc[d] = 0.0
    return rows, vals


try:  # pragma: no cover - depends on the environment
    from numba import njit

    accumulate = njit(nogil=True, cache=True)(accumulate_py)
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    accumulate = None
    HAVE_NUMBA = False
