"""One SQLite table as a small persistent store: what stagegraph's on-disk caches are kept in.

A `SqliteStore` is one table in one file. Its rows are keyed by a pair (a group, such as a
namespace, a scorer or a query, and a key within it) and hold one or more value columns. It owns
everything about the file that its users used to write each for themselves:

* opening: the folder is created, the table is created if it is not there (an existing file, made
  by an earlier version with the same columns, is used as it is);
* journaling: WAL, so readers never block the writer, and a crash loses at most the batch being
  written, never what was committed; `synchronous` says how durable a commit is ("OFF" for a cache
  whose last writes may be lost, "NORMAL", or SQLite's default "FULL");
* threads: one connection, used under a lock, so one store can be shared by any number of threads;
* batches: `get_many` asks for at most `BATCH` keys per statement (SQLite's default limit of host
  parameters is 999), `put_many` writes all its rows in one transaction;
* closing: `close` is idempotent; using a closed store is an error that says so.

Its users: `stagegraph.indexes.text_cache.TextCache` (per-text embeddings and tokens),
`stagegraph.stages.rerank.score_cache.ScoreCache` (cross-encoder scores) and the timing store of
`stagegraph.evaluation.tune_rerank`. Each keeps its own meaning of the values; this module knows
only rows.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

BATCH = 900  # keys per SELECT: with the group's, well under SQLite's default limit of 999 host parameters
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SqliteStore:
    """Rows `(group, key, *values)` of one table, keyed by (group, key); safe to share between threads.

        store = SqliteStore(path, "scores", group="query", key="doc", values={"score": "REAL"})
        store.put_many([("q", "d1", 0.5), ("q", "d2", 0.25)])
        store.get_many("q", ["d1", "d3"])   # {"d1": (0.5,)}: the keys found, each with its values
    """

    def __init__(
        self,
        path: str | Path,
        table: str,
        *,
        group: str,
        key: str,
        values: Mapping[str, str],
        synchronous: Literal["OFF", "NORMAL", "FULL"] = "FULL",
        timeout: float = 30.0,
    ):
        names = [table, group, key, *values]
        bad = [n for n in names if not _NAME.fullmatch(n)]
        if bad or not values or len(set(names[1:])) != len(names) - 1:
            raise ValueError(
                f"SqliteStore({table!r}): table and column names must be distinct identifiers, with at least one "
                f"value column; got group={group!r}, key={key!r}, values={list(values)}"
            )
        if synchronous not in ("OFF", "NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'OFF', 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = Path(path)
        self.table = table
        self.width = len(values)
        self._select = f"SELECT {key}, {', '.join(values)} FROM {table} WHERE {group} = ? AND {key} IN "
        self._insert = f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * (2 + self.width))})"
        self._count = f"SELECT COUNT(*) FROM {table}"
        self._group = group
        self._key = key
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(str(self.path), check_same_thread=False, timeout=timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        columns = ", ".join(f"{name} {kind} NOT NULL" for name, kind in {group: "TEXT", key: "TEXT", **values}.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY ({group}, {key})) WITHOUT ROWID")
        self._db.commit()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise ValueError(f"the store {self.path} ({self.table}) is closed; open a new one to use it again")
        return self._db

    def get_many(self, group: str, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """The rows of `group` whose key is in `keys`: key -> its values (keys not stored are absent)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, tuple[Any, ...]] = {}
        with self._lock:
            db = self._open()
            for lo in range(0, len(unique), BATCH):
                chunk = unique[lo : lo + BATCH]
                for row in db.execute(self._select + f"({','.join('?' * len(chunk))})", [group, *chunk]):
                    found[row[0]] = tuple(row[1:])
        return found

    def get(self, group: str, key: str) -> tuple[Any, ...] | None:
        """The values stored under (group, key), or None."""
        return self.get_many(group, [key]).get(key)

    def put_many(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert or replace rows `(group, key, *values)`, all in one transaction."""
        rows = [tuple(row) for row in rows]
        if not rows:
            return
        wrong = next((row for row in rows if len(row) != 2 + self.width), None)
        if wrong is not None:
            raise ValueError(f"a row of {self.table} is (group, key) and {self.width} value(s); got {len(wrong)} items")
        with self._lock:
            db = self._open()
            with db:  # one transaction: committed, or rolled back on an error
                db.executemany(self._insert, rows)

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete the rows of every group whose key is in `keys`, in one transaction; returns how many."""
        unique = list(dict.fromkeys(keys))
        deleted = 0
        with self._lock:
            db = self._open()
            with db:
                for lo in range(0, len(unique), BATCH):
                    chunk = unique[lo : lo + BATCH]
                    cursor = db.execute(f"DELETE FROM {self.table} WHERE {self._key} IN ({','.join('?' * len(chunk))})", chunk)
                    deleted += cursor.rowcount
        return deleted

    def count(self, group: str | None = None) -> int:
        """Rows in the table, or in one group."""
        with self._lock:
            db = self._open()
            if group is None:
                return int(db.execute(self._count).fetchone()[0])
            return int(db.execute(self._count + f" WHERE {self._group} = ?", [group]).fetchone()[0])

    def close(self) -> None:
        """Close the file (again: nothing happens)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
