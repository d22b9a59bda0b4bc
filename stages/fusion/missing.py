"""Missing-document policies: what a branch contributes for a pooled document it did not return.

`fill_missing(values, present, policy)` takes the (branches x documents) normalised scores of one
query, NaN where the branch did not return the document (`present` False), and fills those cells:

* `zero`: 0. The classic CombSUM/CombMNZ reading (Fox & Shaw 1994) and the rule of ranx,
  PyTerrier and Haystack.
* `min`:  that branch's lowest (normalised) score for this query, the rule of Pyserini's hybrid
  search. A branch that returned nothing for the query has no minimum and contributes 0.
  Note that after min-max normalisation every branch's minimum is 0, so `min` equals `zero`.
* `skip`: left NaN, "no value": the methods then aggregate only the branches that returned the
  document (see `stagegraph.stages.fusion.methods`).
"""

from __future__ import annotations

import numpy as np

from stagegraph.stages.fusion.options import MissingPolicy


def fill_missing(values: np.ndarray, present: np.ndarray, policy: MissingPolicy) -> np.ndarray:
    if policy is MissingPolicy.SKIP:
        return values
    if policy is MissingPolicy.ZERO:
        return np.where(present, values, 0.0)
    if policy is MissingPolicy.MIN:
        lowest = np.fmin.reduce(values, axis=1, keepdims=True, initial=np.nan)  # NaN for a branch with no document
        return np.where(present, values, np.where(np.isnan(lowest), 0.0, lowest))
    raise ValueError(f"unknown missing-document policy {policy!r}; use one of {[p.value for p in MissingPolicy]}")
