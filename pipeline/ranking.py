"""`Ranking`: one query's ranked documents, and `StepTrace`: where every earlier step put them.

Inside the engine a document is a corpus *row*. A ranking holds rows and float32 scores, best first;
equal scores are ordered by row, lowest first, so a ranking never depends on hash or thread order.

Provenance is typed and keyed by step, never by a naming convention: `ranking.provenance[step]` is
a `StepTrace` aligned with `doc_rows` that says which score and (1-based) rank that step gave each
document, NaN where the step did not return it. A reranker's trace also carries its model's own
score (`model_score`) and the upstream score it blended with (`blended_with`). The executor fills
the provenance after every step (`with_provenance`), so stages need not know the names of their
neighbours; a stage that has more to say about itself (a reranker) returns its own trace under its
name and the executor keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class StepTrace:
    """What one step gave each document of a ranking (arrays aligned with the ranking's rows)."""

    score: np.ndarray
    rank: np.ndarray
    model_score: np.ndarray | None = None
    blended_with: np.ndarray | None = None

    @classmethod
    def of(
        cls, scores: np.ndarray, model_score: np.ndarray | None = None, blended_with: np.ndarray | None = None
    ) -> StepTrace:
        """The trace of a step's own output: its scores, ranks 1..n."""
        scores = np.asarray(scores, dtype=np.float32)
        return cls(
            scores,
            np.arange(1, len(scores) + 1, dtype=np.float32),
            None if model_score is None else np.asarray(model_score, dtype=np.float32),
            None if blended_with is None else np.asarray(blended_with, dtype=np.float32),
        )

    @property
    def found(self) -> np.ndarray:
        """True where this step returned the document."""
        return ~np.isnan(self.rank)

    def take(self, index: np.ndarray) -> StepTrace:
        """Reordered (or cut) like the ranking: `index` selects positions."""
        return StepTrace(*(None if a is None else a[index] for a in self._arrays()))

    def realign(self, positions: np.ndarray) -> StepTrace:
        """The values at `positions` of this trace's ranking (-1: not there, NaN)."""
        present = positions >= 0
        safe = np.where(present, positions, 0)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            if values is None:
                return None
            out = _nan(len(positions))
            if len(values):
                out[present] = values[safe[present]]
            return out

        return StepTrace(*(pick(a) for a in self._arrays()))

    def fill(self, other: StepTrace) -> StepTrace:
        """This trace, with `other`'s values where this one has none (two paths from one step)."""

        def merge(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            if a is None or b is None:
                return a if b is None else b
            return np.where(np.isnan(a), b, a)

        return StepTrace(*(merge(a, b) for a, b in zip(self._arrays(), other._arrays())))

    def _arrays(self) -> tuple[np.ndarray | None, ...]:
        return (self.score, self.rank, self.model_score, self.blended_with)


@dataclass(frozen=True, eq=False)
class Ranking:
    """One query's documents (corpus rows) with float32 scores, best first, and their provenance."""

    doc_rows: np.ndarray
    scores: np.ndarray
    provenance: Mapping[str, StepTrace] = field(default_factory=dict)

    @staticmethod
    def order(doc_rows: np.ndarray, scores: np.ndarray, k: int | None = None) -> np.ndarray:
        """Positions of the best `k` by (score desc, row asc): the order every ranking is in."""
        rows = np.asarray(doc_rows, dtype=np.int64)
        vals = np.asarray(scores, dtype=np.float32)
        if rows.shape != vals.shape or rows.ndim != 1:
            raise ValueError(f"doc_rows {rows.shape} and scores {vals.shape} must be 1-d and the same length")
        keep = np.arange(len(rows))
        if k is not None and 0 <= k < len(rows):
            # Partial selection first, then exact ordering of the survivors (ties included).
            kth = np.partition(-vals, k - 1)[k - 1] if k > 0 else np.inf
            keep = np.flatnonzero(-vals <= kth)
        order = keep[np.lexsort((rows[keep], -vals[keep]))]
        return order if k is None else order[: max(k, 0)]

    @classmethod
    def from_scores(
        cls,
        doc_rows: np.ndarray,
        scores: np.ndarray,
        k: int | None = None,
        provenance: Mapping[str, StepTrace] | None = None,
    ) -> Ranking:
        """Sort (score desc, row asc) and keep the best `k`; provenance is reordered alongside."""
        order = cls.order(doc_rows, scores, k)
        rows = np.asarray(doc_rows, dtype=np.int64)[order]
        vals = np.asarray(scores, dtype=np.float32)[order]
        return cls(rows, vals, {name: trace.take(order) for name, trace in (provenance or {}).items()})

    @classmethod
    def empty(cls) -> Ranking:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.doc_rows)

    def top(self, k: int) -> Ranking:
        if k >= len(self):
            return self
        cut = slice(0, k)
        return Ranking(self.doc_rows[cut], self.scores[cut], {n: t.take(cut) for n, t in self.provenance.items()})

    def positions_of(self, rows: np.ndarray) -> np.ndarray:
        """For each of `rows`, its position in this ranking, or -1 when it is not here."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self):
            return np.full(len(rows), -1, dtype=np.int64)
        order = np.argsort(self.doc_rows, kind="stable")
        sorted_rows = self.doc_rows[order]
        at = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
        return np.where(sorted_rows[at] == rows, order[at], -1)


def with_provenance(step: str, output: Ranking, upstream: Sequence[Ranking]) -> Ranking:
    """`output` with the traces of every step upstream, realigned to its rows, plus its own.

    A step reached along two paths (a diamond) keeps the values either path saw. The step's own trace
    is the one the stage returned under `step` (a reranker's, with model scores), else its scores
    and ranks.
    """
    traces: dict[str, StepTrace] = {}
    for ranking in upstream:
        if not ranking.provenance:
            continue
        positions = ranking.positions_of(output.doc_rows)
        for name, trace in ranking.provenance.items():
            aligned = trace.realign(positions)
            traces[name] = traces[name].fill(aligned) if name in traces else aligned
    traces[step] = output.provenance.get(step) or StepTrace.of(output.scores)
    return Ranking(output.doc_rows, output.scores, traces)
