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


def rrf(ranks: np.ndarray, weights: np.ndarray, k: float) -> np.ndarray:
    """`ranks`: 1-based, NaN where the branch did not return the document."""
    contrib = weights[:, None] / (k + ranks)
    return np.where(np.isnan(ranks), 0.0, contrib).sum(axis=0)


def weighted_sum(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    weighted = weights[:, None] * values
    skipped = np.isnan(values)
    if not skipped.any():
        return weighted.sum(axis=0)
    kept = ~skipped
    total = np.where(kept, weighted, 0.0).sum(axis=0)
    kept_weight = (weights[:, None] * kept).sum(axis=0)
    scale = np.divide(weights.sum(), kept_weight, out=np.zeros_like(kept_weight), where=kept_weight > 0)
    return total * scale


def combmnz(values: np.ndarray, weights: np.ndarray, present: np.ndarray) -> np.ndarray:
    """`present`: bool (branches x documents), which branch returned which document."""
    return weighted_sum(values, weights) * present.sum(axis=0)


def weighted_max(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    weighted = weights[:, None] * values
    if np.isnan(values).any():
        return np.where(np.isnan(weighted), -np.inf, weighted).max(axis=0)
    return weighted.max(axis=0)
