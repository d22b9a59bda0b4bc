"""The one writer of a collection: documents in, a new generation published atomically.

    with collection.writer() as w:        # takes the writer lock (waits up to `timeout`, then fails)
        w.upsert(documents, source=PYTHON)  # new and changed documents are chunked; unchanged ones kept
        w.delete(["notes/old.md"])
        generation = w.commit()           # builds, checks and publishes the next generation

`commit` writes the next generation beside the current one: the document and chunk tables (chunks
sorted by document id and chunk index, so the rows do not depend on the order of updates), then
every index the collection's pipeline builds from its corpus, over exactly the live chunks (BM25's
N, avgdl and document frequencies never count a deleted chunk), with per-text work read from the
collection's cache (only new text is analysed and encoded), then the manifest with the tables'
checksums. The directory is renamed into place and `CURRENT` is replaced: readers see the old
generation or the new one, never a mix. Then generations no reader uses any more, and the indexes
only they used, are removed. A writer that dies at any point leaves `CURRENT` on an intact
generation; its half-built directory is removed by the next writer.

Every document records the source it was last written from (`stagegraph.collection.sources`): an
upsert gives it the source of that write, even when its content is unchanged (it "moved"), and
`sync(source, ids)` deletes only documents of that source, which is what `ingest --sync` calls.

Precomputed vectors (a collection created with `RecordFields.vector`, `--vector-field`): every
document must carry one vector (a document without, or one in a collection without a vector field,
is refused: no mix, since a dense index of half encoded, half supplied vectors would compare scores
of two models), of the width of the collection's others (refused with the document's id and
record), and must be one chunk (refused otherwise: one vector cannot stand for several chunks'
texts, and copying it to each would make them tie in every dense ranking and crowd the pool with
one document; the chunker of such a collection defaults to `none`). The generation stores them in
`vectors.npy` (`stagegraph.collection.generation`); the dense stage indexes them (`Environment.vectors`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from stagegraph import atomic
from stagegraph.collection.generation import (
    VECTORS_FILE,
    Generation,
    corpus_of,
    publish,
    read_current,
    write_manifest,
    write_tables,
    write_vectors,
)
from stagegraph.collection.layout import CollectionError, CollectionSettings, DocumentEntry, GenerationManifest, Layout
from stagegraph.collection.sources import UNKNOWN, Source
from stagegraph.corpora.ingest import Chunk, Chunker, Document
from stagegraph.corpora.validate import MetadataLimits, check_document, check_record
from stagegraph.corpora.vectors import CorpusVectors, as_vector
from stagegraph.hashing import stable_hash
from stagegraph.indexes.text_cache import TextCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.runner import build_indexes
from stagegraph.pipeline.stage import Environment

DEFAULT_LOCK_TIMEOUT_S = 60.0


def as_document(item: Document | dict[str, Any], limits: MetadataLimits | None = None) -> Document:
    """A `Document` from a record `{id, text, title?, metadata?, vector?}` (its content hash computed;
    `vector`, a list of numbers, is the document's precomputed embedding), checked by
    `stagegraph.corpora.validate` (id NFC, text cleaned, metadata within `limits`: the defaults for a
    record, the ceilings for a `Document`, which ingest checked with its own)."""
    if isinstance(item, Document):
        return check_document(item, limits or MetadataLimits.ceiling())
    if not isinstance(item, dict):
        raise CollectionError(f"a document is a Document or a dict with 'id' and 'text', not {type(item).__name__}")
    missing = [f for f in ("id", "text") if not isinstance(item.get(f), str) or not item.get(f)]
    if missing:
        raise CollectionError(f"document {item.get('id', '?')!r} has no {' or '.join(missing)} (a non-empty string)")
    unknown = set(item) - {"id", "text", "title", "metadata", "vector"}
    if unknown:
        raise CollectionError(f"document {item['id']!r} has unknown field(s) {sorted(unknown)}; put them under 'metadata'")
    item = check_record(item, limits)
    fields = {"id": item["id"], "title": item.get("title") or "", "text": item["text"], "metadata": dict(item.get("metadata") or {})}
    vector = item.get("vector")
    if vector is None:
        return Document(**fields, content_hash=stable_hash(fields))
    try:
        row = as_vector(vector)
    except ValueError as exc:
        raise CollectionError(f"document {item['id']!r}: the vector {exc}; give a list of numbers") from None
    return Document(**fields, vector=row.tobytes(), content_hash=stable_hash({**fields, "vector": row.tolist()}))


class Writer:
    """Stages changes to a collection and publishes them as one generation (see the module docstring).

    It is given what it uses of the collection (`Collection.writer()` passes them): the layout, the
    settings, and how to get the chunker and the text cache, which are built only when needed.
    """

    def __init__(self, layout: Layout, settings: CollectionSettings, *, chunker: Callable[[], Chunker],
                 text_cache: Callable[[], TextCache], timeout: float = DEFAULT_LOCK_TIMEOUT_S, progress: bool = False,
                 say: Callable[[str], None] | None = None, encode: Callable[[Any, list[str]], Any] | None = None):
        self.layout = layout
        self.settings = settings
        self._make_chunker = chunker
        self._text_cache = text_cache
        self.encode = encode
        self.timeout = timeout
        self.progress = progress
        self.say = say or (lambda text: None)
        self._lock = FileLock(str(self.layout.lock))
        self._base: Generation | None = None
        self._entries: dict[str, DocumentEntry] = {}
        self._chunks: dict[str, list[Chunk]] = {}
        self._chunker: Chunker | None = None
        self._labels: dict[str, str] = {}
        self.changes = {"added": 0, "updated": 0, "moved": 0, "unchanged": 0, "deleted": 0}
        self.new_chunks: list[Chunk] = []
        self._vectors: dict[str, np.ndarray] = {}  # precomputed vectors of new and changed documents
        self._width: tuple[int, str] | None = None  # (the collection's vector width, a document that has it)

    # -- the lock -------------------------------------------------------------------------------
    def __enter__(self) -> Writer:
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise CollectionError(
                f"another writer holds {self.layout.lock} (waited {self.timeout:g} s); wait for it to finish, "
                "or pass a longer timeout (--lock-timeout)"
            ) from None
        try:
            number = read_current(self.layout)
            self._base = Generation.load(self.layout, number) if number else Generation.empty()
        except BaseException:
            self._lock.release()
            raise
        self._entries = dict(self._base.by_id)
        self._chunks = {doc: list(chunks) for doc, chunks in self._base.chunks_of.items()}
        self._labels = {UNKNOWN.key: UNKNOWN.label, **self._base.manifest.sources}
        base_vectors = self._base.vectors
        if base_vectors is not None and len(base_vectors):
            self._width = (int(base_vectors.shape[1]), self._base.chunks[0].doc_id)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _require_lock(self) -> None:
        if self._base is None:
            raise CollectionError("use the writer as a context manager: `with collection.writer() as w: ...`")

    # -- changes --------------------------------------------------------------------------------
    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = self._make_chunker()
        return self._chunker

    def upsert(self, documents: Iterable[Document | dict[str, Any]], *, source: Source, mode: str = "upsert") -> None:
        """Add new documents and replace changed ones, all of `source`; `mode` "add" refuses existing ids,
        "update" missing ones. An unchanged document of another source takes this one (counted "moved")."""
        self._require_lock()
        self._labels[source.key] = source.label
        for item in documents:
            doc = as_document(item)
            old = self._entries.get(doc.id)
            if mode == "add" and old is not None:
                raise CollectionError(f"document {doc.id!r} is already in the collection; use update (or upsert)")
            if mode == "update" and old is None:
                raise CollectionError(f"document {doc.id!r} is not in the collection; use add (or upsert)")
            if old is not None and old.content_hash == doc.content_hash:
                if old.source == source.key:
                    self.changes["unchanged"] += 1
                else:  # same content from another source: only the record changes, no chunk is redone
                    self._entries[doc.id] = old.model_copy(update={"source": source.key})
                    self.changes["moved"] += 1
                continue
            chunks = self.chunker.chunk(doc)
            self._check_vector(doc, chunks)
            if doc.vector is not None:
                self._vectors[doc.id] = doc.vector_array()
            self._entries[doc.id] = DocumentEntry(id=doc.id, title=doc.title, metadata=doc.metadata,
                                                  content_hash=doc.content_hash, chunks=len(chunks), source=source.key)
            self._chunks[doc.id] = chunks
            self.new_chunks.extend(chunks)
            self.changes["updated" if old is not None else "added"] += 1

    def _check_vector(self, doc: Document, chunks: list[Chunk]) -> None:
        """Refuse a vector where the collection has none, none where it has them, a second chunk, another width."""
        records = self.settings.records
        where = f"document {doc.id!r}" + (f" ({doc.metadata['path']}:{doc.metadata['line']})"
                                           if "path" in doc.metadata and "line" in doc.metadata else "")
        if records.vector is None:
            if doc.vector is not None:
                raise CollectionError(
                    f"{where} carries a vector, but the collection {self.layout.root} was created without a vector "
                    "field; leave the vector out, or ingest into a new collection with --vector-field and --vector-model"
                )
            return
        if doc.vector is None:
            raise CollectionError(
                f"{where} has no vector (field {records.vector!r}): every document of this collection carries one, "
                f"made by {records.vector_model!r}; add it, or ingest into a collection without --vector-field"
            )
        if len(chunks) != 1:
            raise CollectionError(
                f"{where} carries one vector but its text makes {len(chunks)} chunks; a document with a precomputed "
                "vector is one chunk: create the collection with --chunker none (the default with --vector-field), "
                "or split the document into records that each carry their own vector"
            )
        width = len(doc.vector) // 4
        if self._width is None:
            self._width = (width, doc.id)
        elif width != self._width[0]:
            raise CollectionError(
                f"{where} has a {width}-dim vector, but the collection's vectors have {self._width[0]} "
                f"(e.g. {self._width[1]!r}); write this record's vector with {records.vector_model!r} and ingest again"
            )

    def delete(self, doc_ids: Iterable[str], *, missing_ok: bool = False) -> list[str]:
        """Remove documents (and their chunks); returns the ids that were not there."""
        self._require_lock()
        absent = []
        for doc_id in doc_ids:
            if self._entries.pop(doc_id, None) is None:
                absent.append(doc_id)
                continue
            self._chunks.pop(doc_id, None)
            self.changes["deleted"] += 1
        if absent and not missing_ok:
            raise CollectionError(f"no document {', '.join(map(repr, absent[:5]))} in the collection to delete")
        return absent

    def sync(self, source: Source, doc_ids: Iterable[str]) -> list[str]:
        """Delete every document of `source` whose id is not in `doc_ids` (`ingest --sync`); returns
        those deleted. Documents of other sources are never touched."""
        self._require_lock()
        wanted = set(doc_ids)
        gone = sorted(d for d, entry in self._entries.items() if entry.source == source.key and d not in wanted)
        self.delete(gone)
        return gone

    def documents_by_source(self) -> dict[Source, int]:
        """How many documents each source has, as the next commit would publish them."""
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            counts[entry.source] = counts.get(entry.source, 0) + 1
        return {Source(key=k, label=self._labels.get(k, k)): n for k, n in counts.items()}

    @property
    def changed(self) -> bool:
        return any(self.changes[k] for k in ("added", "updated", "moved", "deleted"))

    # -- publishing -----------------------------------------------------------------------------
    def commit(self) -> Generation:
        """Build, check and publish the next generation (the current one when nothing changed)."""
        self._require_lock()
        assert self._base is not None
        if not self.changed:
            return self._base
        layout = self.layout
        number = max([self._base.number, *_numbers(layout)]) + 1
        layout.generations.mkdir(parents=True, exist_ok=True)
        building = layout.generations / f".building-{number:08d}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        try:
            generation = self._build(building, number)
            final = layout.generation(number)
            os.replace(building, final)
            atomic.fsync_dir(layout.generations)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        publish(layout, number)
        self.say(f"published generation {number}")
        generation.directory = final
        previous, self._base = self._base, generation
        collect_garbage(layout)
        self._forget_texts(previous, generation)
        return generation

    def _forget_texts(self, previous: Generation, current: Generation) -> None:
        """Drop the text cache's entries of texts the previous generation had and this one does not,
        so that deleted and replaced chunks' tokens and embeddings are not kept for ever. (A crash
        between publishing and here leaves those rows behind; they are only unused, never wrong.)"""
        if not len(previous.corpus):
            return
        gone = set(previous.corpus.doc_texts()).difference(current.corpus.doc_texts())
        if gone:
            removed = self._text_cache().forget(gone)
            if removed:
                self.say(f"text cache: {removed} entries of {len(gone)} texts no chunk has any more removed")

    def _build(self, directory: Path, number: int) -> Generation:
        documents = [self._entries[d] for d in sorted(self._entries)]
        chunks = [c for d in sorted(self._chunks) for c in sorted(self._chunks[d], key=lambda c: c.index)]
        files = write_tables(directory, documents, chunks)
        vectors = None
        if self.settings.records.vector_model is not None and chunks:
            array = self._chunk_vectors(chunks)
            files[VECTORS_FILE] = write_vectors(directory, array)
            vectors = CorpusVectors(self.settings.records.vector_model, array, fingerprint=files[VECTORS_FILE])
        corpus = corpus_of(chunks)
        pipeline = Pipeline.from_config(self.settings.pipeline, source=str(self.layout.settings))
        env = Environment(corpus, work_dir=self.layout.artefacts, progress=self.progress,
                          text_cache=self._text_cache(), encode=self.encode, vectors=vectors)
        if len(corpus):
            build_indexes(pipeline, env)
        artefacts = sorted(p.relative_to(self.layout.artefacts).as_posix() for p in env.artefacts if p.is_dir())
        manifest = GenerationManifest(
            generation=number, parent=self._base.number if self._base and self._base.number else None,
            documents=len(documents), chunks=len(chunks), corpus_fingerprint=corpus.fingerprint, files=files,
            artefacts=artefacts, stages={s.name: s.stage.fingerprint() for s in pipeline.steps},
            changes=dict(self.changes),
            sources={k: self._labels.get(k, k) for k in sorted({d.source for d in documents})},
        )
        write_manifest(directory, manifest)
        return Generation(directory, manifest, documents, chunks)

    def _chunk_vectors(self, chunks: list[Chunk]) -> np.ndarray:
        """A row per chunk: the new vector of a new or changed document, else the base generation's row."""
        assert self._base is not None
        base = self._base.vectors
        base_row = {c.id: row for row, c in enumerate(self._base.chunks)} if base is not None else {}
        out = np.empty((len(chunks), self._width[0] if self._width else 0), dtype=np.float32)
        for row, chunk in enumerate(chunks):
            fresh = self._vectors.get(chunk.doc_id)
            out[row] = fresh if fresh is not None else base[base_row[chunk.id]]
        return out


def _numbers(layout: Layout) -> list[int]:
    if not layout.generations.is_dir():
        return []
    return [int(p.name) for p in layout.generations.iterdir() if p.name.isdigit()]


def live_leases(layout: Layout) -> set[int]:
    """Generations that open readers on this host still use (leases of dead processes are ignored)."""
    used: set[int] = set()
    if not layout.readers.is_dir():
        return used
    for lease in layout.readers.glob("*.lease"):
        try:
            data = json.loads(lease.read_text(encoding="utf-8"))
            pid, generation = int(data["pid"]), int(data["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            used.add(generation)
        else:
            lease.unlink(missing_ok=True)
    return used


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_garbage(layout: Layout) -> list[str]:
    """Remove what no reader can need: unpublished or superseded generations without a live lease,
    half-built directories, and the artefacts only removed generations used. Call with the lock held."""
    current = read_current(layout)
    keep = {current} | live_leases(layout)
    removed = []
    if layout.generations.is_dir():
        for path in layout.generations.iterdir():
            if path.name.startswith(".building-") or (path.name.isdigit() and int(path.name) not in keep):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    referenced: set[str] = set()
    for number in keep:
        manifest = layout.generation(number) / "manifest.json"
        try:
            referenced.update(GenerationManifest.model_validate_json(manifest.read_text(encoding="utf-8")).artefacts)
        except (OSError, ValueError):
            return removed  # cannot tell what is referenced: remove no artefact
    if layout.artefacts.is_dir():
        for kind in layout.artefacts.iterdir():
            if not kind.is_dir():
                continue
            for artefact in kind.iterdir():
                rel = f"{kind.name}/{artefact.name}"
                if rel not in referenced:
                    shutil.rmtree(artefact, ignore_errors=True)
                    removed.append(rel)
    return removed
