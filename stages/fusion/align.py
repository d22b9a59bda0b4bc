"""Lining up several rankings of one query over the union of the documents they returned.

`align(rankings)` gives the sorted union of corpus rows and, per branch, the positions of its
documents in that union, its scores and its 1-based ranks. A row that a branch repeats is kept at
its first (best-ranked) occurrence, so every branch contributes at most one score per document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.base import Ranking


@dataclass(frozen=True)
class Branch:
    """One branch's list for one query, de-duplicated: where its documents sit in the union."""

    positions: np.ndarray  # int64 indexes into `Aligned.rows`, in the branch's rank order
    scores: np.ndarray  # float64 raw scores, best first

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def ranks(self) -> np.ndarray:
        """1-based ranks (float64), in the branch's order."""
        return np.arange(1, len(self.positions) + 1, dtype=np.float64)


@dataclass(frozen=True)
class Aligned:
    rows: np.ndarray  # int64 sorted union of the rows every branch returned
    branches: tuple[Branch, ...]

    def matrix(self, values: Sequence[np.ndarray]) -> np.ndarray:
        """A (branches x union) float64 matrix with `values[b]` at branch b's positions, NaN elsewhere."""
        out = np.full((len(self.branches), len(self.rows)), np.nan)
        for b, (branch, vals) in enumerate(zip(self.branches, values)):
            out[b, branch.positions] = vals
        return out

    def present(self) -> np.ndarray:
        """A (branches x union) bool matrix: did branch b return document u?"""
        out = np.zeros((len(self.branches), len(self.rows)), dtype=bool)
        for b, branch in enumerate(self.branches):
            out[b, branch.positions] = True
        return out


def align(rankings: Sequence[Ranking]) -> Aligned:
    """The union of `rankings`' documents and each branch's place in it (see module docstring)."""
    lengths = [len(r) for r in rankings]
    if sum(lengths) == 0:
        empty = Branch(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
        return Aligned(np.empty(0, dtype=np.int64), tuple(empty for _ in rankings))
    rows, inverse = np.unique(np.concatenate([r.doc_rows for r in rankings]), return_inverse=True)
    branches = []
    start = 0
    for ranking, n in zip(rankings, lengths):
        positions = inverse[start : start + n]
        scores = np.asarray(ranking.scores, dtype=np.float64)
        start += n
        if n > 1 and len(np.unique(positions)) < n:
            _, first = np.unique(positions, return_index=True)
            keep = np.sort(first)
            positions, scores = positions[keep], scores[keep]
        branches.append(Branch(positions.astype(np.int64, copy=False), scores))
    return Aligned(rows, tuple(branches))
