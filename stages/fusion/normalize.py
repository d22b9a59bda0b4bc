"""Per-list score normalisers for score-based fusion: one branch's scores for one query in, same
length float64 array out. Each is a pure function; an empty list gives an empty array.

* `none`:   the raw scores.
* `minmax`: (s - min) / (max - min), in [0, 1] (Lee 1997). A constant list (one document, or all
  scores equal) has no spread; it maps to 1, since every document in it is that branch's best.
  (ranx maps it to 0, which would make a branch's only document count as its worst.)
* `zscore`: (s - mean) / std with the population std (ranx "zmuv"). A constant list maps to 0.
* `rank`:   1 - (r - 1) / n for the document at 1-based rank r of n, ignoring scores (ranx "rank").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stages.fusion.options import Normalization


def none(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64)


def minmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    lo, hi = s.min(), s.max()
    if hi <= lo:
        return np.ones_like(s)
    return (s - lo) / (hi - lo)


def zscore(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    std = s.std()
    if std == 0:
        return np.zeros_like(s)
    return (s - s.mean()) / std


def rank(scores: np.ndarray) -> np.ndarray:
    n = len(scores)
    return 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)


NORMALIZERS: dict[Normalization, Callable[[np.ndarray], np.ndarray]] = {
    Normalization.NONE: none,
    Normalization.MINMAX: minmax,
    Normalization.ZSCORE: zscore,
    Normalization.RANK: rank,
}
