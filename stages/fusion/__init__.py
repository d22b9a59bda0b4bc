"""Fusion building blocks: small pure numpy functions that `stages.fuse.CandidatePool` composes.

* `options`   - the named choices (method, normalisation, missing-document policy) as enums;
* `align`     - the union of several rankings as per-branch (scores, ranks) matrices;
* `normalize` - per-list score normalisers (none, min-max, z-score, rank);
* `missing`   - the missing-document policies (zero, min, skip);
* `methods`   - the fusion rules (RRF, weighted sum, CombMNZ, max).
"""

from stagegraph.stages.fusion.align import Aligned, align
from stagegraph.stages.fusion.options import FusionMethod, MissingPolicy, Normalization

__all__ = ["Aligned", "FusionMethod", "MissingPolicy", "Normalization", "align"]
