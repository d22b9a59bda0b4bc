"""The named fusion choices, as enums so configs are validated values, not loose strings."""

from __future__ import annotations

import enum


class _Choice(str, enum.Enum):
    """A string-valued choice that prints as its value (`rrf`, not `FusionMethod.RRF`)."""

    def __str__(self) -> str:
        return self.value


class FusionMethod(_Choice):
    RRF = "rrf"  # reciprocal rank fusion, sum of w / (rrf_k + rank)  (Cormack, Clarke & Buettcher 2009)
    COMBSUM = "combsum"  # sum of (normalised) scores                   (Fox & Shaw 1994)
    COMBMNZ = "combmnz"  # CombSUM x number of branches that found it    (Fox & Shaw 1994)
    WSUM = "wsum"  # weighted sum of (normalised) scores; needs weights
    MAX = "max"  # largest (weighted, normalised) score                  (CombMAX, Fox & Shaw 1994)

    @property
    def score_based(self) -> bool:
        """True for methods that combine scores (and so normalise them and need a missing policy)."""
        return self is not FusionMethod.RRF


class Normalization(_Choice):
    NONE = "none"  # raw scores
    MINMAX = "minmax"  # (s - min) / (max - min) per list; a constant list maps to 1  (Lee 1997)
    ZSCORE = "zscore"  # (s - mean) / std per list (population std); a constant list maps to 0
    RANK = "rank"  # 1 - (rank - 1) / n: 1 for the top document, 1/n for the last (ranx "rank")


class MissingPolicy(_Choice):
    ZERO = "zero"  # a branch that did not return the document contributes 0
    MIN = "min"  # ... contributes its lowest (normalised) score for the query (Pyserini hybrid)
    SKIP = "skip"  # ... is left out: the document is scored on the branches that returned it
