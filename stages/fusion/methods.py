"""Fusion rules over aligned (branches x documents) matrices of one query. Pure numpy functions.

`values` holds each branch's normalised score per document after the missing-document policy: a
NaN means "skipped" (policy `skip`) and is left out. `weights` holds one weight per branch.

* `rrf`:          sum over the branches that returned d of w_b / (k + rank_b(d))
                  (Cormack, Clarke & Buettcher 2009, k = 60). A branch that missed d adds 0.
* `weighted_sum`: sum_b w_b * v_b(d) (CombSUM with unit weights, weighted sum otherwise). When some
                  branches are skipped for d, the sum over the branches that returned it is
                  rescaled by W / W_present (W = total weight, W_present = weight of those
                  branches): d's weighted mean score stands in for the branches that missed it,
                  so its score is on the same scale as a document every branch found.
* `combmnz`:      weighted_sum(d) * (number of branches that returned d)  (Fox & Shaw 1994).
* `weighted_max`: max over the non-skipped branches of w_b * v_b(d)  (CombMAX).
"""

from __future__ import annotations

import numpy as np


def rrf(ranks: np.ndarray, present: np.ndarray, weights: np.ndarray, k: float) -> np.ndarray:
    """`ranks`: 1-based (any value where `present`, bool (branches x documents), is False)."""
    return weights @ np.where(present, 1.0 / (k + ranks), 0.0)


def weighted_sum(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights @ values
    if not np.isnan(total).any():  # nothing skipped (a NaN value makes its column's total NaN)
        return total
    kept = ~np.isnan(values)
    total = weights @ np.where(kept, values, 0.0)
    kept_weight = weights @ kept
    scale = np.divide(weights.sum(), kept_weight, out=np.zeros_like(kept_weight), where=kept_weight > 0)
    return total * scale


def combmnz(values: np.ndarray, weights: np.ndarray, present: np.ndarray) -> np.ndarray:
    """`present`: bool (branches x documents), which branch returned which document."""
    return weighted_sum(values, weights) * present.sum(axis=0)


def weighted_max(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # fmax ignores NaN (skipped) unless a whole column is NaN, which a pooled document never is
    return np.fmax.reduce(weights[:, None] * values, axis=0)
