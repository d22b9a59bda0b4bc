"""A corpus made of immutable segments: one row space over several column stores, with deleted rows.

A segmented collection (`stagegraph.collection.segments`) keeps its chunks in segments that are
written once and never changed; a later write adds a segment and marks the rows it replaces or
removes as deleted. Stages see that as two things:

* `ColumnCorpus`: one segment as a `Corpus` whose columns are any sequences (memory-mapped Arrow
  arrays in a collection, read per row, never copied into Python lists), with a fingerprint given by
  its writer (its content hash) rather than computed by reading every text, and a `keys` column;
* `SegmentedCorpus`: the generation's corpus, the segments' rows one after the other (global row =
  segment offset + row in the segment). Deleted rows keep their place in the row space (so a
  ranking's rows stay valid while segments do not change) and every retriever keeps them out of its
  results with the segment's `live` mask.

**Ties that do not depend on the layout.** Each chunk has a key (`tie_key`: 64 bits of the SHA-256 of
its id), each segment stores its rows in key order, and everything that orders equal scores orders
them by key (`SegmentedCorpus.tie_keys`) rather than by row. So the same live chunks in one segment
or in twenty give the same rankings, ties included: per-segment top-k cuts keep the lowest keys,
and merging segments by (score desc, key asc) is the order a single segment has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stagegraph.corpora.types import Corpus, take
from stagegraph.hashing import hash_strings


def tie_key(chunk_id: str) -> int:
    """The layout-independent key that orders chunks of equal score (first 8 bytes of SHA-256, as int63)."""
    return int.from_bytes(hashlib.sha256(chunk_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") >> 1


def tie_keys_of(chunk_ids: Sequence[str]) -> np.ndarray:
    """`tie_key` of each id (int64)."""
    return np.fromiter((tie_key(c) for c in chunk_ids), dtype=np.int64, count=len(chunk_ids))


class ColumnCorpus(Corpus):
    """A `Corpus` over columns that are sequences (read per row), with a given fingerprint.

    `keys` (int64 per row, ascending) are the rows' tie keys. The id -> row map is built only when
    something asks for a row by id (evaluation, not search)."""

    __slots__ = ("keys",)

    def __init__(self, ids: Sequence[str], titles: Sequence[str], texts: Sequence[str], *, doc_ids: Sequence[str],
                 metadata: Sequence[dict[str, Any]], keys: np.ndarray, fingerprint: str):
        self.ids, self.titles, self.texts = ids, titles, texts  # type: ignore[assignment]
        self.doc_ids, self.metadata = doc_ids, metadata  # type: ignore[assignment]
        self.keys = keys
        self._row_of = None  # type: ignore[assignment]
        self._fingerprint = fingerprint
        self._metadata_index = None

    def _rows(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {doc_id: row for row, doc_id in enumerate(self.ids)}
        return self._row_of


@dataclass
class Part:
    """One segment of a `SegmentedCorpus`: its corpus, which of its rows are live (None: all), and
    its precomputed vectors (a `CorpusVectors` of its rows; None: stages encode)."""

    corpus: ColumnCorpus
    live: np.ndarray | None = None
    vectors: Any = None
    offset: int = field(default=0, compare=False)

    @property
    def live_count(self) -> int:
        return len(self.corpus) if self.live is None else int(np.count_nonzero(self.live))


class _Concat(Sequence):
    """The rows of several sequences one after the other (read per row)."""

    def __init__(self, columns: list[Sequence], starts: np.ndarray):
        self._columns, self._starts = columns, starts

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside the corpus ({len(self)} rows)")
        part = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._columns[part][row - int(self._starts[part])]

    def __iter__(self) -> Iterator:
        for column in self._columns:
            yield from column

    def take(self, rows: list[int]) -> list:
        """The values of `rows` (global), read per part with each part's own `take`."""
        positions = np.asarray(rows, dtype=np.int64)
        parts = np.searchsorted(self._starts, positions, side="right") - 1
        out: list = [None] * len(rows)
        for part in np.unique(parts).tolist():
            where = np.flatnonzero(parts == part)
            local = (positions[where] - self._starts[part]).tolist()
            for i, value in zip(where.tolist(), take(self._columns[part], local)):
                out[i] = value
        return out


class SegmentedCorpus(Corpus):
    """The rows of several segments as one corpus (see the module docstring); `parts` in order."""

    __slots__ = ("parts", "_starts")

    def __init__(self, parts: list[Part], fingerprint: str | None = None):
        starts = np.zeros(len(parts) + 1, dtype=np.int64)
        for i, part in enumerate(parts):
            part.offset = int(starts[i])
            starts[i + 1] = starts[i] + len(part.corpus)
        self.parts, self._starts = parts, starts

        def concat(name: str) -> _Concat:
            return _Concat([getattr(p.corpus, name) for p in parts], starts)

        self.ids, self.titles, self.texts = concat("ids"), concat("titles"), concat("texts")  # type: ignore[assignment]
        self.doc_ids, self.metadata = concat("doc_ids"), concat("metadata")  # type: ignore[assignment]
        self._row_of = None  # type: ignore[assignment]
        self._metadata_index = None
        self._fingerprint = fingerprint or hash_strings(
            s for p in parts for s in (p.corpus.fingerprint, _mask_digest(p.live)))

    def live_mask(self) -> np.ndarray | None:
        """A bool per global row, False for deleted rows (None: nothing deleted)."""
        if all(p.live is None for p in self.parts):
            return None
        return np.concatenate([np.ones(len(p.corpus), dtype=bool) if p.live is None else p.live for p in self.parts])

    @property
    def live_rows(self) -> int:
        return sum(p.live_count for p in self.parts)

    def tie_keys(self, rows: np.ndarray) -> np.ndarray:
        """The tie key of each global row (int64): what orders equal scores, whatever the layout."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        if not len(rows):
            return out
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(part_of):
            sel = part_of == p
            out[sel] = self.parts[p].corpus.keys[rows[sel] - self._starts[p]]
        return out

    def records(self, rows):  # type: ignore[override]
        """As `Corpus.records`, rows grouped by segment once for all five columns."""
        positions = np.asarray([int(r) for r in rows], dtype=np.int64)
        parts = np.searchsorted(self._starts, positions, side="right") - 1
        columns: tuple[list, ...] = tuple([None] * len(positions) for _ in range(5))
        for part in np.unique(parts).tolist():
            where = np.flatnonzero(parts == part).tolist()
            got = self.parts[part].corpus.records((positions[where] - self._starts[part]).tolist())
            for column, values in zip(columns, got):
                for i, value in zip(where, values):
                    column[i] = value
        return columns  # type: ignore[return-value]

    def _rows(self) -> dict[str, int]:
        if self._row_of is None:
            rows: dict[str, int] = {}
            for part in self.parts:
                live = part.live
                for local, chunk_id in enumerate(part.corpus.ids):
                    if live is None or live[local]:
                        rows[chunk_id] = part.offset + local
            self._row_of = rows
        return self._row_of



def _mask_digest(live: np.ndarray | None) -> str:
    if live is None:
        return "all"
    return hashlib.sha256(np.packbits(np.asarray(live, dtype=bool)).tobytes()).hexdigest()


def merge_top(candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` of several segments' (global rows, scores float32, tie keys), by (score desc, key asc)."""
    if not candidates:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    rows = np.concatenate([c[0] for c in candidates]).astype(np.int64, copy=False)
    scores = np.concatenate([c[1] for c in candidates]).astype(np.float32, copy=False)
    keys = np.concatenate([c[2] for c in candidates]).astype(np.int64, copy=False)
    order = np.lexsort((keys, -scores))[:k]
    return rows[order], scores[order]
