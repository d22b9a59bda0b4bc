"""`stagegraph.sqlite_store`: the one SQLite table under the text cache, the score cache and the tuning
store. Rows by (group, key), batched reads past SQLite's parameter limit, WAL, threads, clear errors,
and files written by the hand-written stores it replaced still read the same."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from stagegraph.evaluation.tune_rerank import TimingStore
from stagegraph.indexes.text_cache import TextCache
from stagegraph.sqlite_store import BATCH, SqliteStore
from stagegraph.stages.rerank.score_cache import ScoreCache


def timings(path):
    return SqliteStore(path, "timings", group="scorer", key="query", values={"block_ns": "TEXT", "tokens": "TEXT"})


def test_rows_are_read_by_group_and_key_and_replaced_by_a_later_write(tmp_path):
    store = timings(tmp_path / "deep" / "er" / "t.sqlite")  # the folder is made
    store.put_many([("a", "q1", "[1]", "[2]"), ("a", "q2", "[3]", "[4]"), ("b", "q1", "[5]", "[6]")])
    assert store.get_many("a", ["q1", "q2", "q3", "q1"]) == {"q1": ("[1]", "[2]"), "q2": ("[3]", "[4]")}
    assert store.get_many("b", ["q1", "q2"]) == {"q1": ("[5]", "[6]")}
    assert store.get("b", "q2") is None
    store.put_many([("a", "q1", "[9]", "[9]")])
    assert store.get("a", "q1") == ("[9]", "[9]")
    assert (store.count(), store.count("a"), store.count("c")) == (3, 2, 0)
    store.close()
    again = timings(tmp_path / "deep" / "er" / "t.sqlite")
    assert again.get("a", "q1") == ("[9]", "[9]") and again.count() == 3


def test_a_read_of_more_keys_than_one_statement_takes_gets_them_all(tmp_path):
    store = SqliteStore(tmp_path / "s.sqlite", "scores", group="query", key="doc", values={"score": "REAL"})
    n = 2 * BATCH + 7
    store.put_many(("q", f"d{i}", float(i)) for i in range(n))
    found = store.get_many("q", [f"d{i}" for i in range(n + 5)])
    assert len(found) == n and found[f"d{n - 1}"] == (float(n - 1),) and "d0" in found


def test_the_file_is_in_wal_mode_with_the_asked_durability_and_the_old_schema(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SqliteStore(path, "scores", group="query", key="doc", values={"score": "REAL"}, synchronous="OFF")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 0  # OFF
    other = sqlite3.connect(str(path))
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (ddl,) = other.execute("SELECT sql FROM sqlite_master WHERE name = 'scores'").fetchone()
    assert ddl == ("CREATE TABLE scores (query TEXT NOT NULL, doc TEXT NOT NULL, score REAL NOT NULL, "
                   "PRIMARY KEY (query, doc)) WITHOUT ROWID")
    other.close()


def test_one_store_is_shared_by_threads(tmp_path):
    store = SqliteStore(tmp_path / "s.sqlite", "scores", group="query", key="doc", values={"score": "REAL"})
    start = threading.Barrier(8)
    failures = []

    def work(t: int) -> None:
        start.wait()
        try:
            for i in range(50):
                store.put_many([(f"q{t}", f"d{i}", float(t * 1000 + i))])
                assert store.get(f"q{t}", f"d{i}") == (float(t * 1000 + i),)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == [] and store.count() == 8 * 50


def test_bad_rows_names_and_a_closed_store_are_refused_with_one_line(tmp_path):
    store = timings(tmp_path / "t.sqlite")
    with pytest.raises(ValueError) as bad_row:
        store.put_many([("a", "q", "[1]")])
    assert str(bad_row.value) == "a row of timings is (group, key) and 2 value(s); got 3 items"
    store.close()
    store.close()  # a second close does nothing ...
    with pytest.raises(ValueError) as closed:  # ... and the closed store says so when used
        store.get("a", "q")
    assert str(closed.value) == f"the store {tmp_path / 't.sqlite'} (timings) is closed; open a new one to use it again"
    with pytest.raises(ValueError) as bad_name:
        SqliteStore(tmp_path / "x.sqlite", "x; DROP", group="g", key="k", values={"v": "TEXT"})
    assert str(bad_name.value) == ("SqliteStore('x; DROP'): table and column names must be distinct identifiers, with "
                                   "at least one value column; got group='g', key='k', values=['v']")
    with pytest.raises(ValueError, match="^synchronous must be 'OFF', 'NORMAL' or 'FULL', not 'ON'$"):
        SqliteStore(tmp_path / "x.sqlite", "x", group="g", key="k", values={"v": "TEXT"}, synchronous="ON")


# The three stores as they were written by hand before they shared SqliteStore: a file of each, made
# with the old code's own statements, is read by its store as it is.
OLD = {
    "scores": ("CREATE TABLE scores (query TEXT NOT NULL, doc TEXT NOT NULL, score REAL NOT NULL,"
               " PRIMARY KEY (query, doc)) WITHOUT ROWID", ("what is heat", "d7", 1.5)),
    "entries": ("CREATE TABLE entries (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                " PRIMARY KEY (ns, key)) WITHOUT ROWID", ("bm25", "k1", sqlite3.Binary(b"heat\x1fflow"))),
    "timings": ("CREATE TABLE timings (scorer TEXT NOT NULL, query TEXT NOT NULL, block_ns TEXT NOT NULL,"
                " tokens TEXT NOT NULL, PRIMARY KEY (scorer, query)) WITHOUT ROWID", ("s", "q", "[10, 20]", "[3, 4]")),
}


@pytest.mark.parametrize("table", sorted(OLD))
def test_a_file_written_by_the_hand_written_store_reads_the_same(tmp_path, table):
    path = tmp_path / f"{table}.sqlite"
    ddl, row = OLD[table]
    old = sqlite3.connect(str(path))
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(ddl)
    old.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    old.commit()
    old.close()
    if table == "scores":
        cache = ScoreCache(path)
        assert cache.lookup("what is heat", ["d7", "d8"]).tolist()[0] == 1.5
        assert (cache.hits, cache.misses) == (1, 1)
        cache.store(["what is heat"], ["d8"], np.array([0.25], dtype=np.float32))
        cache.close()
        assert ScoreCache(path).lookup("what is heat", ["d8", "d7"]).tolist() == [0.25, 1.5]
    elif table == "entries":
        cache = TextCache(path)
        assert cache.get_many("bm25", ["k1", "k2"]) == {"k1": b"heat\x1fflow"}
        cache.put_tokens("bm25", ["some text"], [["some", "text"]])
        assert cache.tokens("bm25", ["some text", "other"]) == [["some", "text"], None] and cache.count("bm25") == 2
        cache.close()
    else:
        store = TimingStore(path)
        block_ns, tokens = store.get("s", "q")
        assert block_ns.tolist() == [10, 20] and tokens.tolist() == [3, 4] and block_ns.dtype == np.int64
        store.put("s", "q2", [5], [6])
        assert [a.tolist() for a in store.get("s", "q2")] == [[5], [6]] and store.get("t", "q") is None
        store.close()
