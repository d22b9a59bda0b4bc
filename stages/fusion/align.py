"""Lining up several rankings of one query over the union of the documents they returned.

`align(rankings)` gives the sorted union of corpus rows and one float32 table of (2B x U) holding,
for B branches over U documents, each branch's raw scores (rows 0..B-1) and 1-based ranks (rows
B..2B-1), NaN where the branch did not return the document, and each branch's positions in the
union, in its own rank order. A row that a branch
repeats is kept at its first (best-ranked) occurrence, so every branch contributes at most one score
per document. This runs once per query on the online path, so it sticks to a few vectorised numpy
calls (one sort and one `searchsorted` over the concatenated rows, rather than `np.unique`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stagegraph.pipeline.ranking import Ranking


@dataclass
class Aligned:
    rows: np.ndarray  # (U,) int64, ascending: the union of every branch's rows
    table: np.ndarray  # (2B, U) float32: raw scores, then 1-based ranks; NaN where absent
    present: np.ndarray  # (B, U) bool: did branch b return row u?
    positions: tuple[np.ndarray, ...]  # per branch: indexes into `rows`, in the branch's rank order

    @property
    def n_branches(self) -> int:
        return len(self.positions)

    @property
    def raw(self) -> np.ndarray:
        """(B, U) raw scores, NaN where absent."""
        return self.table[: self.n_branches]

    @property
    def ranks(self) -> np.ndarray:
        """(B, U) 1-based ranks, NaN where absent."""
        return self.table[self.n_branches :]


_ONE_TO_N = np.arange(1, 1025, dtype=np.float32)  # 1-based ranks, grown on demand


def _ranks(n: int) -> np.ndarray:
    """1, 2, ..., n as float32 (a view of a shared read-only array: no allocation per query)."""
    global _ONE_TO_N
    if n > len(_ONE_TO_N):
        grown = np.arange(1, max(n, 2 * len(_ONE_TO_N)) + 1, dtype=np.float32)
        grown.flags.writeable = False
        _ONE_TO_N = grown
    return _ONE_TO_N[:n]


_ONE_TO_N.flags.writeable = False


def sorted_union(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-d array (`np.unique`, without its per-call overhead)."""
    ordered = values.copy()
    ordered.sort()
    starts = np.empty(len(ordered), dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return ordered[starts]


def align(rankings: Sequence[Ranking]) -> Aligned:
    """The union of `rankings`' documents and each branch's scores and ranks over it."""
    n_branches = len(rankings)
    lengths = [len(r) for r in rankings]
    all_rows = np.concatenate([r.doc_rows for r in rankings]).astype(np.int64, copy=False) if rankings else np.empty(0, np.int64)
    rows = sorted_union(all_rows)
    all_positions = rows.searchsorted(all_rows)
    table = np.empty((2 * n_branches, len(rows)), dtype=np.float32)
    table.fill(np.nan)
    positions, scores = [], []
    start = 0
    for b, (ranking, n) in enumerate(zip(rankings, lengths)):
        pos = all_positions[start : start + n]
        start += n
        table[b][pos] = ranking.scores  # a row view, then a 1-d scatter: twice as fast as table[b, pos]
        table[n_branches + b][pos] = _ranks(n)
        positions.append(pos)
        scores.append(ranking.scores)
    present = ~np.isnan(table[n_branches:])
    if np.count_nonzero(present) != start:
        _drop_repeats(table, present, positions, scores)
    return Aligned(rows, table, present, tuple(positions))


def _drop_repeats(table: np.ndarray, present: np.ndarray, positions: list, scores: list) -> None:
    """A branch listed a row twice: keep its first occurrence and re-rank the rest (in place)."""
    n_branches = len(positions)
    for b in range(n_branches):
        if np.count_nonzero(present[b]) == len(positions[b]):
            continue
        _, first = np.unique(positions[b], return_index=True)
        keep = np.sort(first)
        positions[b], scores[b] = positions[b][keep], scores[b][keep]
        table[b] = table[n_branches + b] = np.nan
        table[b][positions[b]] = scores[b]
        table[n_branches + b][positions[b]] = _ranks(len(keep))
