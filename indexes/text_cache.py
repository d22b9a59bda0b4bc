"""A content-addressed cache of what is derived from one text: its embedding, its BM25 tokens.

A collection changes a few documents at a time, but its indexes are rebuilt for every generation
so that their statistics are exact (BM25's N, avgdl and document frequencies count live chunks
only). What makes that cheap is this cache: the expensive per-text work (encoding a chunk with the
dense model, analysing it for BM25) is done once per distinct text and read back afterwards, keyed
by (a namespace naming the model or tokenizer settings, the SHA-256 of the text).

Storage is one SQLite file, a `stagegraph.sqlite_store.SqliteStore` table `entries (ns, key) ->
value` (WAL mode: readers never block the writer; a crash loses at most the last uncommitted batch
and never corrupts what was committed). Values are bytes: float32 vectors for embeddings, UTF-8
token strings joined by a separator for tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from stagegraph.sqlite_store import SqliteStore

_SEP = "\x1f"  # unit separator: never part of an analysed token


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextCache:
    """(namespace, text) -> bytes, in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db = SqliteStore(self.path, "entries", group="ns", key="key", values={"value": "BLOB"},
                               synchronous="NORMAL", timeout=60)

    # -- raw ------------------------------------------------------------------------------------
    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        return {key: value for key, (value,) in self._db.get_many(namespace, keys).items()}

    def put_many(self, namespace: str, items: Iterable[tuple[str, bytes]]) -> None:
        self._db.put_many((namespace, key, bytes(value)) for key, value in items)

    def count(self, namespace: str | None = None) -> int:
        return self._db.count(namespace)

    def forget(self, texts: Iterable[str]) -> int:
        """Drop what is cached for `texts` in every namespace (texts no chunk has any more); returns
        the rows deleted."""
        return self._db.delete_keys(text_key(t) for t in texts)

    def close(self) -> None:
        self._db.close()

    # -- typed ----------------------------------------------------------------------------------
    def vectors(self, namespace: str, texts: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 array len(texts) x dim, bool array: which rows were cached); missing rows are 0."""
        keys = [text_key(t) for t in texts]
        found = self.get_many(namespace, keys)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        hit = np.zeros(len(texts), dtype=bool)
        for i, key in enumerate(keys):
            blob = found.get(key)
            if blob is not None and len(blob) == 4 * dim:
                out[i] = np.frombuffer(blob, dtype=np.float32)
                hit[i] = True
        return out, hit

    def put_vectors(self, namespace: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.put_many(namespace, ((text_key(t), v.tobytes()) for t, v in zip(texts, vectors)))

    def tokens(self, namespace: str, texts: Sequence[str]) -> list[list[str] | None]:
        """The cached token list of each text, None where there is none."""
        keys = [text_key(t) for t in texts]
        found = self.get_many(namespace, keys)
        out: list[list[str] | None] = []
        for key in keys:
            blob = found.get(key)
            if blob is None:
                out.append(None)
            else:
                text = blob.decode("utf-8")
                out.append(text.split(_SEP) if text else [])
        return out

    def put_tokens(self, namespace: str, texts: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        self.put_many(namespace, ((text_key(t), _SEP.join(toks).encode("utf-8")) for t, toks in zip(texts, tokens)))
