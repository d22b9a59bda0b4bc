"""The candidate pool (`pool.CandidatePool`, `type: pool`) and the fusion building blocks it composes:

* `pool`      - the fusing stage itself;
* `options`   - the named choices (method, normalisation, missing-document policy) as enums;
* `align`     - the union of several rankings as per-branch (scores, ranks) matrices;
* `normalize` - per-list score normalisers (none, min-max, z-score, rank);
* `missing`   - the missing-document policies (zero, min, skip);
* `methods`   - the fusion rules (RRF, weighted sum, CombMNZ, max).
"""

from stagegraph.stages.fusion.options import FusionMethod, MissingPolicy, Normalization
from stagegraph.stages.fusion.pool import CandidatePool

__all__ = ["CandidatePool", "FusionMethod", "MissingPolicy", "Normalization"]
