"""The rerank score cache: a (query text, document id) -> score map, per scorer and corpus.

A cache belongs to one scorer identity (model content, max_length, backend) and, on disk, to one
corpus fingerprint, so a key never meets a score from another model or another text of the same id.
Lookups hit memory first; with a path, scores also persist in a small SQLite file, so a re-run in a
new process or a sweep over rerank depth never scores a pair twice. Writes are batched per call and
not synced to disk (WAL, synchronous off): a crash may lose recent scores, never corrupt old ones.
The file is a `stagegraph.sqlite_store.SqliteStore` table `scores (query, doc) -> score`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagegraph.sqlite_store import SqliteStore


class ScoreCache:
    """Scores by (query text, doc id); `path=None` keeps them in memory only."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else None
        self._memory: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._db: SqliteStore | None = None
        if self.path is not None:
            # A cache: losing the last writes in a crash is harmless, an fsync per query is not.
            self._db = SqliteStore(self.path, "scores", group="query", key="doc", values={"score": "REAL"},
                                   synchronous="OFF", timeout=30)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def lookup(self, query: str, doc_ids: Sequence[str]) -> np.ndarray:
        """Scores for `doc_ids` under `query`, NaN where nothing is stored."""
        out = np.full(len(doc_ids), np.nan, dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, doc in enumerate(doc_ids):
                value = self._memory.get((query, doc))
                if value is None:
                    missing.append(i)
                else:
                    out[i] = value
            if missing and self._db is not None:
                stored = self._db.get_many(query, [doc_ids[i] for i in missing])
                for i in missing:
                    value = stored.get(doc_ids[i])
                    if value is not None:
                        out[i] = value[0]
                        self._memory[(query, doc_ids[i])] = float(value[0])
        found = int(np.count_nonzero(~np.isnan(out)))
        self.hits += found
        self.misses += len(doc_ids) - found
        return out

    def store(self, queries: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray) -> None:
        items = [(q, d, float(s)) for q, d, s in zip(queries, doc_ids, np.asarray(scores).tolist())]
        if not items:
            return
        with self._lock:
            for q, d, s in items:
                self._memory[(q, d)] = s
            if self._db is not None:
                self._db.put_many(items)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
