"""Missing-document policies: what a branch contributes for a pooled document it did not return.

Input: a (branches x documents) float64 matrix of normalised scores with NaN where the branch did
not return the document. Output: the matrix the fusion method aggregates.

* `zero`: NaN -> 0. The classic CombSUM/CombMNZ reading (Fox & Shaw 1994) and the rule of ranx,
  PyTerrier and Haystack.
* `min`:  NaN -> that branch's lowest (normalised) score for this query, the rule of Pyserini's
  hybrid search. A branch that returned nothing for the query has no minimum and contributes 0.
  Note that after min-max normalisation every branch's minimum is 0, so `min` equals `zero`.
* `skip`: NaN is kept; the methods then aggregate only the branches that returned the document
  (see `stages.fusion.methods`).
"""

from __future__ import annotations

import numpy as np

from stages.fusion.options import MissingPolicy


def fill_missing(values: np.ndarray, policy: MissingPolicy) -> np.ndarray:
    if policy is MissingPolicy.SKIP:
        return values
    absent = np.isnan(values)
    if not absent.any():
        return values
    if policy is MissingPolicy.ZERO:
        return np.where(absent, 0.0, values)
    if policy is MissingPolicy.MIN:
        filled = values.copy()
        for b in np.flatnonzero(absent.any(axis=1)):
            row = values[b]
            found = row[~absent[b]]
            filled[b, absent[b]] = found.min() if len(found) else 0.0
        return filled
    raise ValueError(f"unknown missing-document policy {policy!r}; use one of {[p.value for p in MissingPolicy]}")
