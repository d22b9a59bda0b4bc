"""Immutable segments: a commit's chunks and documents in Arrow IPC files, memory-mapped, read per row.

    segments/<id>/
      chunks.arrow      id, doc_id, index, start, end, title, text, metadata (JSON), key, doc_row, text_key
      documents.arrow   id, title, metadata (JSON), content_hash, chunks, source, key (rows in key order)
      vectors.npy       precomputed vectors, a row per chunk (collections with a vector field only)
      segment.json      counts, the SHA-256 of each file, the segment's fingerprint
      deleted-<n>.npz   which documents and chunks of this segment generation n deleted (see below)

A segment is written once, by a commit (its new and changed documents) or a merge (the live rows of
several segments), and never changed again. Its chunks are stored in tie-key order
(`stagegraph.corpora.segmented`), its documents in the order of the same key of their id, so a
writer finds a document by a binary search of that column (`doc_rows`, vectorised over many ids)
with no id -> row map in memory. Later generations delete rows of it by
naming a deletion file written beside it (`deleted-<n>.npz`: sorted document rows and chunk rows,
the complete set as of generation n); a segment the commit does not touch keeps the file it had, so
a commit writes one new segment and a small file per touched segment, and never reads, rewrites or
re-checksums the others.

Why Arrow IPC (pyarrow): the file format is the in-memory format, so `pa.memory_map` + `read_all`
opens a segment without reading it (open time and resident memory do not grow with the corpus) and
a hit's text is one zero-copy slice. SQLite would read rows just as well but scans slowly when an
index is built over a segment; LMDB adds a native dependency for what Arrow already gives, and
pyarrow is a well-kept library most data stacks already have. Checksums are written in
`segment.json` and checked when a segment is written, by `repair` and `collection verify`, and on
open only the file sizes (a full check per open would read every byte, which is what segments avoid).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from stagegraph import atomic
from stagegraph.collection.layout import CollectionDamaged, DocumentEntry
from stagegraph.corpora.ingest import Chunk
from stagegraph.corpora.segmented import ColumnCorpus, Part, tie_keys_of
from stagegraph.corpora.types import joined_text
from stagegraph.hashing import check_files, sha256_file, stable_hash
from stagegraph.indexes.text_cache import text_key

CHUNKS = "chunks.arrow"
DOCUMENTS = "documents.arrow"
VECTORS = "vectors.npy"
INFO = "segment.json"
REPAIR = "`stagegraph collection repair DIR` goes back to the newest intact generation"

CHUNK_SCHEMA = pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("index", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
    ("title", pa.string()), ("text", pa.large_string()), ("metadata", pa.string()), ("key", pa.int64()),
    ("doc_row", pa.int32()), ("text_key", pa.string()),
])
DOCUMENT_SCHEMA = pa.schema([
    ("id", pa.string()), ("title", pa.string()), ("metadata", pa.string()), ("content_hash", pa.string()),
    ("chunks", pa.int32()), ("source", pa.string()), ("key", pa.int64()),
])


class SegmentInfo(BaseModel):
    """`segment.json`: what a segment holds and the checksums of its files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    documents: int
    chunks: int
    tokens: int = 0
    files: dict[str, str] = Field(default_factory=dict)  # file -> sha256
    sizes: dict[str, int] = Field(default_factory=dict)  # file -> bytes
    fingerprint: str
    fields: list[str] = Field(default_factory=list)  # the top-level metadata fields its documents have


class Deletions:
    """The document rows and chunk rows of one segment that a generation has deleted (sorted int64)."""

    def __init__(self, documents: np.ndarray | None = None, chunks: np.ndarray | None = None):
        self.documents = np.asarray(documents if documents is not None else [], dtype=np.int64)
        self.chunks = np.asarray(chunks if chunks is not None else [], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.documents)

    def union(self, documents: np.ndarray, chunks: np.ndarray) -> Deletions:
        return Deletions(np.union1d(self.documents, documents), np.union1d(self.chunks, chunks))

    def save(self, path: Path) -> None:
        with atomic.atomic_file(path, mode="wb", durable=True) as fh:
            np.savez(fh, documents=self.documents, chunks=self.chunks)

    @classmethod
    def load(cls, path: Path) -> Deletions:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["documents"], data["chunks"])


_TAKE_FROM = 12


class _Column(Sequence):
    """An Arrow array read per row as Python values (never copied whole unless iterated)."""

    def __init__(self, array: pa.Array, decode=None):
        self._array, self._decode = array, decode

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        value = self._array[int(row)].as_py()
        return self._decode(value) if self._decode else value

    def take(self, rows: list[int]) -> list:
        if len(rows) < _TAKE_FROM:  # a take costs ~8 us whatever its size, a value ~0.7 us
            values = [self._array[r].as_py() for r in rows]
        else:
            values = self._array.take(pa.array(rows, pa.int64())).to_pylist()
        return [self._decode(v) for v in values] if self._decode else values

    def __iter__(self) -> Iterator:
        step = 65536
        for start in range(0, len(self._array), step):
            values = self._array.slice(start, step).to_pylist()
            yield from (map(self._decode, values) if self._decode else values)


def _single(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class Segment:
    """One segment, memory-mapped; `corpus` is its chunks as a `ColumnCorpus` (rows in key order)."""

    def __init__(self, directory: Path, info: SegmentInfo):
        self.directory = directory
        self.info = info
        self.chunks = _read_arrow(directory / CHUNKS)
        self.documents = _read_arrow(directory / DOCUMENTS)
        self._doc_keys = _single(self.documents, "key").to_numpy()
        self._doc_ids = _single(self.documents, "id")
        self.keys = _single(self.chunks, "key").to_numpy()
        self.chunk_doc_rows = _single(self.chunks, "doc_row").to_numpy()
        self.corpus = ColumnCorpus(
            _Column(_single(self.chunks, "id")), _Column(_single(self.chunks, "title")),
            _Column(_single(self.chunks, "text")), doc_ids=_Column(_single(self.chunks, "doc_id")),
            metadata=_Column(_single(self.chunks, "metadata"), json.loads), keys=self.keys,
            fingerprint=info.fingerprint,
        )

    @property
    def id(self) -> str:
        return self.info.id

    def vectors(self) -> np.ndarray | None:
        return np.load(self.directory / VECTORS, mmap_mode="r") if VECTORS in self.info.files else None

    def doc_rows(self, doc_ids: Sequence[str], keys: np.ndarray | None = None) -> np.ndarray:
        """The row of each of `doc_ids` in this segment (deleted or not), -1 where it never was here:
        a binary search of the key column (`keys`: the ids' tie keys, when the caller has them)."""
        keys = tie_keys_of(doc_ids) if keys is None else keys
        n = len(self._doc_keys)
        start = np.searchsorted(self._doc_keys, keys, side="left")
        out = np.full(len(doc_ids), -1, dtype=np.int64)
        for i in np.flatnonzero((start < n) & (self._doc_keys[np.minimum(start, n - 1)] == keys)).tolist():
            row = int(start[i])
            while row < n and self._doc_keys[row] == keys[i]:  # the same key for two ids: compare the ids
                if self._doc_ids[row].as_py() == doc_ids[i]:
                    out[i] = row
                    break
                row += 1
        return out

    def entry(self, row: int) -> DocumentEntry:
        d = {name: self.documents.column(name)[row].as_py() for name in DOCUMENT_SCHEMA.names}
        return DocumentEntry(id=d["id"], title=d["title"], metadata=json.loads(d["metadata"]),
                             content_hash=d["content_hash"], chunks=d["chunks"], source=d["source"])

    def chunk_rows(self, doc_rows: np.ndarray) -> np.ndarray:
        """The chunk rows of documents `doc_rows` (sorted)."""
        return np.flatnonzero(np.isin(self.chunk_doc_rows, np.asarray(doc_rows, dtype=np.int64)))

    def chunk(self, row: int) -> Chunk:
        c = {name: self.chunks.column(name)[row].as_py() for name in ("id", "doc_id", "index", "start", "end", "title", "text", "metadata")}
        return Chunk(**{**c, "metadata": json.loads(c["metadata"])})

    def column(self, table: str, name: str) -> np.ndarray | list:
        return _single(getattr(self, table), name).to_pylist()

    def rows_with_texts(self, keys: set[str]) -> np.ndarray:
        """The chunk rows whose text (title and text, as `text_key` hashes them) is one of `keys`."""
        found = pc.is_in(_single(self.chunks, "text_key"), value_set=pa.array(sorted(keys), pa.string()))
        return np.flatnonzero(found.to_numpy(zero_copy_only=False))

    def part(self, deletions: Deletions | None, vectors: Any = None) -> Part:
        live = None
        if deletions is not None and len(deletions.chunks):
            live = np.ones(self.info.chunks, dtype=bool)
            live[deletions.chunks] = False
        return Part(self.corpus, live, vectors)


def _read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


_OPEN: dict[tuple[str, str], Segment] = {}
_OPEN_LOCK = threading.Lock()


def open_segment(directory: Path, *, verify: bool = False, owner: str = "") -> Segment:
    """The segment at `directory` (cached per process: a segment never changes); its files' sizes
    (and with `verify`, checksums) checked against `segment.json`, a `CollectionDamaged` otherwise."""
    where = owner or f"the segment {directory}"
    try:
        info = SegmentInfo.model_validate_json((directory / INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionDamaged(f"{where}: {directory / INFO} is missing; {REPAIR}") from None
    except (OSError, ValueError) as exc:
        raise CollectionDamaged(f"{where}: {directory / INFO} is unreadable ({type(exc).__name__}); {REPAIR}") from None
    for name, size in info.sizes.items():  # cheap (a stat per file), so also for a segment opened before
        try:
            actual = (directory / name).stat().st_size
        except FileNotFoundError:
            raise CollectionDamaged(f"{where}: the file {name} is missing; {REPAIR}") from None
        if actual != size:
            raise CollectionDamaged(f"{where}: the file {name} is damaged (size {actual}, written {size}); {REPAIR}")
    problem = check_files(directory, info.files, owner=where, fix=REPAIR) if verify else None
    if problem:
        raise CollectionDamaged(problem)
    key = (str(directory.resolve()), info.fingerprint)
    with _OPEN_LOCK:
        cached = _OPEN.get(key)
    if cached is not None:
        return cached
    try:
        segment = Segment(directory, info)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise CollectionDamaged(f"{where} cannot be read ({type(exc).__name__}: {exc}); {REPAIR}") from None
    if segment.chunks.num_rows != info.chunks or segment.documents.num_rows != info.documents:
        raise CollectionDamaged(f"{where} holds {segment.documents.num_rows} documents / {segment.chunks.num_rows} chunks, "
                                f"its segment.json says {info.documents} / {info.chunks}; {REPAIR}")
    with _OPEN_LOCK:
        if len(_OPEN) > 512:
            _OPEN.clear()
        _OPEN[key] = segment
    return segment


def write_segment(directory: Path, segment_id: str, documents: Sequence[DocumentEntry], chunks: Sequence[Chunk],
                  vectors: np.ndarray | None = None, *, tokens: int = 0) -> Segment:
    """Write a segment (durably, atomically: a half-written one is never named by a manifest).

    `documents` and `chunks` are the segment's (every chunk's document among `documents`);
    `vectors`, when given, a row per chunk in the order of `chunks`."""
    doc_keys = tie_keys_of([d.id for d in documents])
    documents = [documents[i] for i in np.argsort(doc_keys, kind="stable").tolist()]
    doc_keys = np.sort(doc_keys, kind="stable")
    doc_row = {d.id: i for i, d in enumerate(documents)}
    keys = tie_keys_of([c.id for c in chunks])
    order = np.argsort(keys, kind="stable")
    ordered = [chunks[i] for i in order.tolist()]
    chunk_table = pa.table({
        "id": [c.id for c in ordered], "doc_id": [c.doc_id for c in ordered],
        "index": pa.array([c.index for c in ordered], pa.int32()), "start": pa.array([c.start for c in ordered], pa.int64()),
        "end": pa.array([c.end for c in ordered], pa.int64()), "title": [c.title for c in ordered],
        "text": pa.array([c.text for c in ordered], pa.large_string()),
        "metadata": [json.dumps(c.metadata, sort_keys=True, ensure_ascii=False) for c in ordered],
        "key": pa.array(keys[order], pa.int64()), "doc_row": pa.array([doc_row[c.doc_id] for c in ordered], pa.int32()),
        "text_key": [text_key(joined_text(c.title, c.text)) for c in ordered],
    }, schema=CHUNK_SCHEMA)
    document_table = pa.table({
        "id": [d.id for d in documents], "title": [d.title for d in documents],
        "metadata": [json.dumps(d.metadata, sort_keys=True, ensure_ascii=False) for d in documents],
        "content_hash": [d.content_hash for d in documents], "chunks": pa.array([d.chunks for d in documents], pa.int32()),
        "source": [d.source for d in documents], "key": pa.array(doc_keys, pa.int64()),
    }, schema=DOCUMENT_SCHEMA)
    chosen = None if vectors is None else np.asarray(vectors, dtype=np.float32)[order]
    fields = sorted({key for d in documents for key in d.metadata})
    return _write(directory, segment_id, chunk_table, document_table, chosen, tokens, fields)


def merge_segments(directory: Path, segment_id: str, sources: Sequence[tuple[Segment, Deletions | None]]) -> Segment:
    """Write one segment holding the live rows of `sources` (their deleted rows dropped), column-wise:
    no row becomes a Python object, so a merge of millions of chunks costs a few array copies."""
    doc_tables, chunk_tables, vectors, doc_base = [], [], [], 0
    position_of: list[np.ndarray] = []  # per source: old document row -> row in the concatenated live documents
    for segment, deletions in sources:
        dead_docs = np.zeros(segment.info.documents, dtype=bool)
        live_chunks = np.ones(segment.info.chunks, dtype=bool)
        if deletions is not None:
            dead_docs[deletions.documents] = True
            live_chunks[deletions.chunks] = False
        keep_docs = np.flatnonzero(~dead_docs)
        position = np.full(segment.info.documents, -1, dtype=np.int64)
        position[keep_docs] = doc_base + np.arange(len(keep_docs))
        doc_base += len(keep_docs)
        position_of.append(position)
        keep_chunks = np.flatnonzero(live_chunks)
        doc_tables.append(segment.documents.take(pa.array(keep_docs)))
        chunks = segment.chunks.take(pa.array(keep_chunks))
        old_rows = _single(chunks, "doc_row").to_numpy().astype(np.int64)
        chunk_tables.append(chunks.set_column(chunks.schema.get_field_index("doc_row"), "doc_row",
                                              pa.array(position[old_rows], pa.int64())))
        array = segment.vectors()
        if array is not None:
            vectors.append(np.asarray(array)[keep_chunks])
    documents = pa.concat_tables(doc_tables).combine_chunks()
    doc_order = np.argsort(_single(documents, "key").to_numpy(), kind="stable")
    new_row = np.empty(len(doc_order), dtype=np.int64)
    new_row[doc_order] = np.arange(len(doc_order))
    documents = documents.take(pa.array(doc_order))
    chunks = pa.concat_tables(chunk_tables).combine_chunks()
    order = np.argsort(_single(chunks, "key").to_numpy(), kind="stable")
    chunks = chunks.take(pa.array(order))
    remapped = new_row[_single(chunks, "doc_row").to_numpy()]
    chunks = chunks.set_column(chunks.schema.get_field_index("doc_row"), "doc_row", pa.array(remapped, pa.int32()))
    chunks = chunks.cast(CHUNK_SCHEMA)
    merged_vectors = np.concatenate(vectors)[order] if vectors else None
    fields: set[str] = set()
    if any(s.info.fields for s, _ in sources):  # the live documents' fields: a deleted document's go
        for metadata in _single(documents, "metadata").to_pylist():
            fields.update(json.loads(metadata))
    return _write(directory, segment_id, chunks, documents, merged_vectors, sum(s.info.tokens for s, _ in sources),
                  sorted(fields))


def _write(directory: Path, segment_id: str, chunk_table: pa.Table, document_table: pa.Table,
           vectors: np.ndarray | None, tokens: int, fields: list[str]) -> Segment:
    with atomic.atomic_dir(directory) as tmp:
        files: dict[str, str] = {}
        for name, table in ((CHUNKS, chunk_table), (DOCUMENTS, document_table)):
            with pa.OSFile(str(tmp / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
                out.write_table(table, max_chunksize=max(table.num_rows, 1))
        if vectors is not None:
            np.save(tmp / VECTORS, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        for path in sorted(tmp.iterdir()):
            _fsync(path)
            files[path.name] = sha256_file(path)
        info = SegmentInfo(id=segment_id, documents=document_table.num_rows, chunks=chunk_table.num_rows, tokens=tokens,
                           files=files, sizes={n: (tmp / n).stat().st_size for n in files},
                           fingerprint=stable_hash({"segment": segment_id, "files": files}), fields=fields)
        atomic.write_text(tmp / INFO, info.model_dump_json(indent=2), durable=True)
    return open_segment(directory)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
