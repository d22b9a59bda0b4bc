"""Per-list score normalisers for score-based fusion, applied to every branch at once.

Each takes the (branches x documents) raw scores and 1-based ranks of one query, NaN where a branch
did not return the document, and returns float64 normalised scores of the same shape, NaN kept (the
missing-document policy fills those later). Each row (one branch's list) is normalised on its own;
a row with no document stays all-NaN. Pure functions, a handful of vectorised calls each.

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

from stagegraph.stages.fusion.options import Normalization


def none(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    return scores.astype(np.float64)


def minmax(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    lo = np.fmin.reduce(s, axis=1, keepdims=True, initial=np.nan)  # fmin/fmax skip NaN (absent documents)
    span = np.fmax.reduce(s, axis=1, keepdims=True, initial=np.nan) - lo
    flat = ~(span > 0)  # constant rows (and empty ones, whose span is NaN)
    if flat.any():  # shift a constant row so that its documents land on 1, without dividing by 0
        lo = np.where(flat, lo - 1.0, lo)
        span = np.where(flat, 1.0, span)
    return (s - lo) / span


def zscore(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    present = ~np.isnan(s)
    n = np.maximum(present.sum(axis=1, keepdims=True), 1)
    mean = np.where(present, s, 0.0).sum(axis=1, keepdims=True) / n
    centred = s - mean
    std = np.sqrt(np.where(present, centred * centred, 0.0).sum(axis=1, keepdims=True) / n)
    # a constant row has std 0 (up to rounding): its documents sit at the mean, 0
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, np.inf)
    return centred / std


def rank(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    r = ranks.astype(np.float64)
    n = np.fmax.reduce(r, axis=1, keepdims=True, initial=np.nan)  # the list's length: its last rank
    return 1.0 - (r - 1.0) / n


NORMALIZERS: dict[Normalization, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    Normalization.NONE: none,
    Normalization.MINMAX: minmax,
    Normalization.ZSCORE: zscore,
    Normalization.RANK: rank,
}
