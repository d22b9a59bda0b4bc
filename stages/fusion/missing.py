"""Missing-document policies: what a branch contributes for a pooled document it did not return.

`absent_value(policy, normalised)` gives the value a branch's absent documents take, from that
branch's normalised scores for the query; the stage writes it wherever the branch has no score.

* `zero`: 0. The classic CombSUM/CombMNZ reading (Fox & Shaw 1994) and the rule of ranx,
  PyTerrier and Haystack.
* `min`:  that branch's lowest (normalised) score for this query, the rule of Pyserini's hybrid
  search. A branch that returned nothing for the query has no minimum and contributes 0.
  Note that after min-max normalisation every branch's minimum is 0, so `min` equals `zero`.
* `skip`: NaN, "no value": the methods then aggregate only the branches that returned the
  document (see `stages.fusion.methods`).
"""

from __future__ import annotations

import numpy as np

from stages.fusion.options import MissingPolicy


def absent_value(policy: MissingPolicy, normalised: np.ndarray) -> float:
    if policy is MissingPolicy.ZERO:
        return 0.0
    if policy is MissingPolicy.MIN:
        return float(normalised.min()) if len(normalised) else 0.0
    if policy is MissingPolicy.SKIP:
        return float("nan")
    raise ValueError(f"unknown missing-document policy {policy!r}; use one of {[p.value for p in MissingPolicy]}")
