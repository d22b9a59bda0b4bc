"""The one writer of a collection: documents in, a new generation published atomically.

    with collection.writer() as w:        # takes the writer lock (waits up to `timeout`, then fails)
        w.upsert(documents, source=PYTHON)  # new and changed documents are chunked; unchanged ones kept
        w.delete(["notes/old.md"])
        generation = w.commit()           # writes a segment, publishes the next generation

`commit` writes **one new segment** (`stagegraph.collection.segments`) holding the added and changed
documents and their chunks, and, for each older segment whose documents it replaced or deleted, a new
deletion file beside that segment; segments it does not touch are named again by the new manifest,
never read, rewritten or re-checksummed. Then the indexes of the new segment (every stage that
indexes the corpus builds per segment: BM25 postings, FAISS indexes; per-text work read from the
collection's cache, so only new text is analysed and encoded), then the manifest, renamed into place,
then `CURRENT` replaced: readers see the old generation or the new one, never a mix. BM25's N, avgdl
and document frequencies never count a deleted chunk (`stagegraph.indexes.bm25_segments`), so
results equal a fresh build of the live documents whatever the layout.

After publishing, the writer runs at most one small merge its policy asks for
(`stagegraph.collection.merges`; the write is already visible, the merge publishes one more
generation), then removes generations and segments no reader uses any more. A writer that dies at
any point leaves `CURRENT` on an intact generation; its debris is removed by the next writer.
`merge()` runs every merge the policy wants, `compact()` merges everything into one segment.

A writer finds a document by id per segment (newest first; each segment's id map is built once per
process), so its cost per write does not grow with the collection once the segments are open.

Every document records the source it was last written from (`stagegraph.collection.sources`): an
upsert gives it the source of that write, even when its content is unchanged (it "moved": its row
moves to the new segment, with its chunks as they were), and `sync(source, ids)` deletes only
documents of that source, which is what `ingest --sync` calls.

Precomputed vectors (a collection created with `RecordFields.vector`, `--vector-field`): every
document must carry one vector (a document without, or one in a collection without a vector field,
is refused: no mix, since a dense index of half encoded, half supplied vectors would compare scores
of two models), of the width of the collection's others (refused with the document's id and
record), and must be one chunk (refused otherwise: one vector cannot stand for several chunks'
texts, and copying it to each would make them tie in every dense ranking and crowd the pool with
one document; the chunker of such a collection defaults to `none`). Each segment stores its chunks'
vectors in `vectors.npy`; the dense stage indexes them (`Part.vectors`).

A collection written before segments (generation format 1 or 2) is converted by its first write:
that commit writes the old generation's documents as one segment, chunks and vectors as they were.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from stagegraph.collection.generation import (
    Generation,
    LegacyGeneration,
    legacy_tables,
    publish,
    read_current,
    read_manifest,
    write_manifest,
)
from stagegraph.collection.layout import (
    CollectionError,
    CollectionSettings,
    DocumentEntry,
    GenerationManifest,
    Layout,
    SegmentRef,
)
from stagegraph.collection.garbage import collect_garbage
from stagegraph.collection.merges import MergePolicy
from stagegraph.collection.segments import Deletions, Segment, merge_segments, open_segment, write_segment
from stagegraph.collection.sources import UNKNOWN, Source
from stagegraph.corpora.ingest import Chunk, Chunker, Document
from stagegraph.corpora.validate import FieldBudget, MetadataLimits, check_document, check_record
from stagegraph.corpora.vectors import as_vector
from stagegraph.hashing import hash_strings, stable_hash
from stagegraph.indexes.text_cache import TextCache, text_key
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.runner import build_indexes
from stagegraph.pipeline.stage import Environment
from stagegraph import atomic

DEFAULT_LOCK_TIMEOUT_S = 60.0
LOOKUP_BATCH = 4096  # documents whose ids are looked up in the segments at once


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


@dataclass
class _New:
    """A document this writer adds (or re-adds): its record, chunks and vector."""

    entry: DocumentEntry
    chunks: list[Chunk]
    vector: np.ndarray | None = None


@dataclass
class _Staged:
    """What the next commit changes: new documents, and per base segment the document rows it deletes."""

    new: dict[str, _New] = field(default_factory=dict)
    deleted: dict[int, set[int]] = field(default_factory=dict)  # segment position -> document rows


class Writer:
    """Stages changes to a collection and publishes them as one generation (see the module docstring).

    It is given what it uses of the collection (`Collection.writer()` passes them): the layout, the
    settings, and how to get the chunker and the text cache, which are built only when needed.
    `merge_policy` decides the merges after each commit (`merge_after_commit=False`: none).
    """

    def __init__(self, layout: Layout, settings: CollectionSettings, *, chunker: Callable[[], Chunker],
                 text_cache: Callable[[], TextCache], timeout: float = DEFAULT_LOCK_TIMEOUT_S, progress: bool = False,
                 say: Callable[[str], None] | None = None, encode: Callable[[Any, list[str]], Any] | None = None,
                 merge_policy: MergePolicy | None = None, merge_after_commit: bool = True,
                 limits: MetadataLimits | None = None, deferred: bool = False):
        self.layout = layout
        #: write generations without publishing them or collecting garbage: a shard of a sharded
        #: collection, whose commit publishes every shard's generation at once (`collection.sharded`)
        self.deferred = deferred
        self.settings = settings
        self._make_chunker = chunker
        self._text_cache = text_cache
        self.encode = encode
        self.timeout = timeout
        self.progress = progress
        self.say = say or (lambda text: None)
        self.merge_policy = merge_policy or MergePolicy()
        self.merge_after_commit = merge_after_commit
        self.limits = limits
        self._budget: FieldBudget | None = None  # the collection's metadata fields, and how many it may hold
        self._lock = FileLock(str(self.layout.lock))
        self._base: Generation | None = None
        self._legacy: dict[str, _New] = {}  # a format-1/2 generation's documents, written as a segment at commit
        self._staged = _Staged()
        self._dirty = False  # something staged since the last commit
        #: whether a commit of this writer published a generation (merges aside)
        self.published = False
        self._chunker: Chunker | None = None
        self._labels: dict[str, str] = {}
        self._source_counts: dict[str, int] = {}
        self.changes = {"added": 0, "updated": 0, "moved": 0, "unchanged": 0, "deleted": 0}
        self.new_chunks: list[Chunk] = []
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
            self._start(read_current(self.layout))
        except BaseException:
            self._lock.release()
            raise
        return self

    def _start(self, number: int) -> None:
        model = self.settings.records.vector_model
        self._staged, self._legacy = _Staged(), {}
        try:
            self._base = Generation.load(self.layout, number, vector_model=model) if number else Generation.empty(model)
        except LegacyGeneration:
            self._base = self._convert_legacy(number)
        manifest = self._base.manifest
        self._labels = {UNKNOWN.key: UNKNOWN.label, **manifest.sources}
        self._source_counts = dict(manifest.source_counts)
        for segment, _ in self._base.segments:
            array = segment.vectors()
            if array is not None and len(array):
                self._width = (int(array.shape[1]), str(segment.corpus.doc_ids[0]))
                break

    def _convert_legacy(self, number: int) -> Generation:
        """Stage a format-1/2 generation's documents (chunks and vectors as they were) as new ones."""
        manifest = read_manifest(self.layout, number)
        documents, chunks, vectors = legacy_tables(self.layout, number)
        by_doc: dict[str, list[Chunk]] = {}
        rows: dict[str, int] = {}
        for row, chunk in enumerate(chunks):
            by_doc.setdefault(chunk.doc_id, []).append(chunk)
            rows.setdefault(chunk.doc_id, row)
        self._legacy = {d.id: _New(d, by_doc.get(d.id, []), None if vectors is None else vectors[rows[d.id]])
                        for d in documents}
        if vectors is not None and len(vectors):
            self._width = (int(vectors.shape[1]), chunks[0].doc_id)
        counts: dict[str, int] = {}
        for d in documents:
            counts[d.source] = counts.get(d.source, 0) + 1
        self.say(f"converting generation {number} ({len(documents)} documents) to segments")
        empty = Generation.empty(self.settings.records.vector_model)
        empty.manifest = empty.manifest.model_copy(update={"generation": number, "sources": manifest.sources,
                                                           "source_counts": counts})
        return empty

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

    def _fields(self) -> FieldBudget:
        """The distinct metadata fields the collection holds (`max_collection_fields` of `limits`)."""
        if self._budget is None:
            assert self._base is not None
            self._budget = FieldBudget(self._base.fields() | {k for n in self._legacy.values() for k in n.entry.metadata},
                                       self.limits)
        return self._budget

    def _find(self, doc_id: str, located: dict[str, tuple[int, int]] | None = None
              ) -> tuple[DocumentEntry, int | None, int | None] | None:
        """(record, segment position, document row) of the live document `doc_id` as the next commit
        would see it (position None: staged in this writer), None when it is not there. `located`:
        the base generation's answer for a batch of ids (`Generation.locate_many`), when looked up."""
        staged = self._staged.new.get(doc_id)
        if staged is not None:
            return staged.entry, None, None
        legacy = self._legacy.get(doc_id)
        if legacy is not None:
            return legacy.entry, None, None
        assert self._base is not None
        found = self._base.locate(doc_id) if located is None else located.get(doc_id)
        if found is None or found[1] in self._staged.deleted.get(found[0], ()):
            return None
        return self._base.segments[found[0]][0].entry(found[1]), found[0], found[1]

    def _drop(self, doc_id: str, position: int | None, row: int | None) -> None:
        if position is None:
            if self._staged.new.pop(doc_id, None) is None:
                self._legacy.pop(doc_id, None)
        else:
            self._staged.deleted.setdefault(position, set()).add(row)  # type: ignore[arg-type]

    def _count(self, source: str, delta: int) -> None:
        self._source_counts[source] = self._source_counts.get(source, 0) + delta
        if self._source_counts[source] <= 0:
            del self._source_counts[source]

    def upsert(self, documents: Iterable[Document | dict[str, Any]], *, source: Source, mode: str = "upsert") -> None:
        """Add new documents and replace changed ones, all of `source`; `mode` "add" refuses existing ids,
        "update" missing ones. An unchanged document of another source takes this one (counted "moved")."""
        self._require_lock()
        self._labels[source.key] = source.label
        for batch in _batches(documents, LOOKUP_BATCH):
            docs = [as_document(item, self.limits) for item in batch]
            assert self._base is not None
            located = self._base.locate_many([d.id for d in docs])  # one vectorised search per segment
            for doc in docs:
                self._upsert_one(doc, located, source, mode)

    def _upsert_one(self, doc: Document, located: dict[str, tuple[int, int]], source: Source, mode: str) -> None:
        """One document of `upsert` (see there)."""
        self._fields().admit(doc.id, doc.metadata)
        found = self._find(doc.id, located)
        old = found[0] if found else None
        if mode == "add" and old is not None:
            raise CollectionError(f"document {doc.id!r} is already in the collection; use update (or upsert)")
        if mode == "update" and old is None:
            raise CollectionError(f"document {doc.id!r} is not in the collection; use add (or upsert)")
        if old is not None and old.content_hash == doc.content_hash:
            if old.source == source.key:
                self.changes["unchanged"] += 1
            else:  # same content from another source: the record moves, its chunks as they were
                self._move(found, source)  # type: ignore[arg-type]
                self.changes["moved"] += 1
                self._dirty = True
            return
        chunks = self.chunker.chunk(doc)
        self._check_vector(doc, chunks)
        if found is not None:
            self._drop(doc.id, found[1], found[2])
            self._count(old.source, -1)  # type: ignore[union-attr]
        entry = DocumentEntry(id=doc.id, title=doc.title, metadata=doc.metadata, content_hash=doc.content_hash,
                              chunks=len(chunks), source=source.key)
        self._staged.new[doc.id] = _New(entry, chunks, doc.vector_array() if doc.vector is not None else None)
        self._count(source.key, +1)
        self.new_chunks.extend(chunks)
        self.changes["updated" if old is not None else "added"] += 1
        self._dirty = True

    def adopt(self, entry: DocumentEntry, chunks: list[Chunk], vector: np.ndarray | None, label: str) -> None:
        """Stage a document exactly as another collection holds it (record, chunks, vector; `label` its
        source's): a reshard moves documents without chunking or encoding them again."""
        self._require_lock()
        if self._find(entry.id) is not None:
            raise CollectionError(f"document {entry.id!r} is already in the collection {self.layout.root}")
        self._labels[entry.source] = label
        self._staged.new[entry.id] = _New(entry, chunks, vector)
        self._count(entry.source, +1)
        self.changes["added"] += 1
        self._dirty = True

    def _move(self, found: tuple[DocumentEntry, int | None, int | None], source: Source) -> None:
        entry, position, row = found
        moved = entry.model_copy(update={"source": source.key})
        if position is None:
            staged = self._staged.new.get(entry.id) or self._legacy[entry.id]
            staged.entry = moved
        else:
            assert self._base is not None
            segment = self._base.segments[position][0]
            rows = segment.chunk_rows(np.array([row]))
            chunks = sorted((segment.chunk(int(r)) for r in rows), key=lambda c: c.index)
            array = segment.vectors()
            vector = None if array is None else np.asarray(array[int(rows[0])])
            self._drop(entry.id, position, row)
            self._staged.new[entry.id] = _New(moved, chunks, vector)
        self._count(entry.source, -1)
        self._count(source.key, +1)

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
        doc_ids = list(doc_ids)
        assert self._base is not None
        located = self._base.locate_many(doc_ids)
        for doc_id in doc_ids:
            found = self._find(doc_id, located)
            if found is None:
                absent.append(doc_id)
                continue
            self._drop(doc_id, found[1], found[2])
            self._count(found[0].source, -1)
            self.changes["deleted"] += 1
            self._dirty = True
        if absent and not missing_ok:
            raise CollectionError(f"no document {', '.join(map(repr, absent[:5]))} in the collection to delete")
        return absent

    def sync(self, source: Source, doc_ids: Iterable[str]) -> list[str]:
        """Delete every document of `source` whose id is not in `doc_ids` (`ingest --sync`); returns
        those deleted. Documents of other sources are never touched."""
        self._require_lock()
        wanted = set(doc_ids)
        gone = sorted(d for d in self._live_ids(source.key) if d not in wanted)
        self.delete(gone)
        return gone

    def _live_ids(self, source: str) -> set[str]:
        assert self._base is not None
        ids = set()
        for position, (segment, deletions) in enumerate(self._base.segments):
            dead = set(self._staged.deleted.get(position, ()))
            if deletions is not None:
                dead.update(deletions.documents.tolist())
            for row, (doc_id, origin) in enumerate(zip(segment.column("documents", "id"), segment.column("documents", "source"))):
                if origin == source and row not in dead:
                    ids.add(doc_id)
        ids.update(n.entry.id for n in [*self._legacy.values(), *self._staged.new.values()] if n.entry.source == source)
        return ids

    def documents_by_source(self) -> dict[Source, int]:
        """How many documents each source has, as the next commit would publish them."""
        return {Source(key=k, label=self._labels.get(k, k)): n for k, n in self._source_counts.items()}

    @property
    def changed(self) -> bool:
        """Whether the next commit publishes something (`changes` counts over the writer's whole life)."""
        return bool(self._legacy) or self._dirty

    # -- publishing -----------------------------------------------------------------------------
    def commit(self) -> Generation:
        """Write the new segment, build its indexes, publish the next generation (the current one
        when nothing changed), then run at most one small merge."""
        self._require_lock()
        assert self._base is not None
        if not self.changed:
            return self._base
        previous = self._base
        new = [*self._legacy.values(), *self._staged.new.values()]
        number = self._next_number()
        refs = self._carried_refs(number)
        segment = None
        if new:
            segment = self._write_new_segment(f"g{number:08d}", new)
            refs.append(_ref(segment, None))
        generation = self._publish(number, refs, changes=dict(self.changes))
        self.published = True
        self._forget_texts(previous, generation)
        if self.merge_after_commit:
            self._merge_once(self.merge_policy.max_inline_chunks)
        self._collect()
        return self._base

    def _collect(self) -> None:
        if not self.deferred:  # a deferred generation is not current yet: collecting now would remove it
            collect_garbage(self.layout)

    def merge(self) -> int:
        """Run every merge the policy asks for, whatever its size; returns how many ran."""
        self._require_lock()
        done = 0
        while self._merge_once(None):
            done += 1
        self._collect()
        return done

    def compact(self) -> Generation:
        """Merge every segment into one (deleted rows dropped); converts a format-1/2 generation."""
        self._require_lock()
        assert self._base is not None
        if self._legacy or self.changed:
            self.commit()
        refs = self._base.manifest.segments or []
        if len(refs) > 1 or any(r.deleted for r in refs):
            self._merge([r.id for r in refs])
        self._collect()
        return self._base

    def _merge_once(self, max_chunks: int | None) -> bool:
        assert self._base is not None
        chosen = self.merge_policy.choose(self._base.manifest.segments or [], max_chunks=max_chunks)
        if not chosen:
            return False
        self._merge(chosen)
        return True

    def _merge(self, ids: list[str]) -> None:
        """Publish a generation in which segments `ids` are one (their live rows; deleted rows dropped)."""
        assert self._base is not None
        base = self._base
        number = self._next_number()
        chosen = [(s, d) for s, d in base.segments if s.id in ids]
        merged = merge_segments(self.layout.segment(f"m{number:08d}"), f"m{number:08d}", chosen)
        refs, placed = [], False
        for segment, deletions in base.segments:  # the merged segment takes the place of the first it replaces
            if segment.id in ids:
                if not placed and merged.info.documents:  # (every row deleted: the segments just go)
                    refs.append(_ref(merged, None))
                placed = True
            else:
                refs.append(next(r for r in base.manifest.segments or [] if r.id == segment.id))
        self.say(f"merging {len(ids)} segments ({merged.info.chunks} live chunks) into {merged.id}")
        self._staged = _Staged()
        self._publish(number, refs, changes={}, merges=ids)

    def _next_number(self) -> int:
        assert self._base is not None
        return max([self._base.number, *_numbers(self.layout)]) + 1

    def _carried_refs(self, number: int) -> list[SegmentRef]:
        """The base generation's segments, each with its deletions plus this commit's (a new file)."""
        assert self._base is not None
        refs = []
        for position, ((segment, deletions), ref) in enumerate(zip(self._base.segments, self._base.manifest.segments or [])):
            rows = self._staged.deleted.get(position)
            if not rows:
                refs.append(ref)
                continue
            doc_rows = np.array(sorted(rows), dtype=np.int64)
            current = deletions or Deletions()
            updated = current.union(doc_rows, segment.chunk_rows(doc_rows))
            name = f"deleted-{number:08d}.npz"
            updated.save(self.layout.segment(segment.id) / name)
            refs.append(_ref(segment, name, updated))
        return refs

    def _write_new_segment(self, segment_id: str, new: list[_New]) -> Segment:
        chunks = [c for n in sorted(new, key=lambda n: n.entry.id) for c in sorted(n.chunks, key=lambda c: c.index)]
        vectors = None
        if self.settings.records.vector_model is not None and chunks:
            by_doc = {n.entry.id: n.vector for n in new}
            vectors = np.stack([by_doc[c.doc_id] for c in chunks]).astype(np.float32)
        return write_segment(self.layout.segment(segment_id), segment_id, [n.entry for n in new], chunks, vectors)

    def _publish(self, number: int, refs: list[SegmentRef], *, changes: dict[str, int], merges: list[str] = ()) -> Generation:
        """Build the new segments' indexes, write the manifest, publish; the writer moves to it."""
        assert self._base is not None
        layout = self.layout
        atomic.fsync_dir(layout.segments)
        segments = [(open_segment(layout.segment(r.id)), _deletions(layout, r)) for r in refs]
        model = self.settings.records.vector_model
        fingerprint = hash_strings(s for r, (seg, _) in zip(refs, segments) for s in (seg.info.fingerprint, r.deleted or ""))
        live_docs, live_chunks = sum(r.live_documents for r in refs), sum(r.live_chunks for r in refs)
        manifest = GenerationManifest(
            generation=number, parent=self._base.number or None, documents=live_docs, chunks=live_chunks,
            corpus_fingerprint=fingerprint, segments=refs, changes=changes, merges=list(merges),
            source_counts=dict(sorted(self._source_counts.items())),
            sources={k: self._labels.get(k, k) for k in sorted(self._source_counts)},
        )
        generation = Generation(layout.generation(number), manifest, segments, vector_model=model)
        pipeline = Pipeline.from_config(self.settings.pipeline, source=str(layout.settings))
        env = Environment(generation.corpus, work_dir=layout.artefacts, progress=self.progress,
                          text_cache=self._text_cache(), encode=self.encode)
        if live_chunks:
            build_indexes(pipeline, env)
        manifest.artefacts = sorted(p.relative_to(layout.artefacts).as_posix() for p in env.artefacts if p.is_dir())
        manifest.stages = {s.name: s.stage.fingerprint() for s in pipeline.steps}
        layout.generations.mkdir(parents=True, exist_ok=True)
        building = layout.generations / f".building-{number:08d}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        try:
            write_manifest(building, manifest)
            os.replace(building, layout.generation(number))
            atomic.fsync_dir(layout.generations)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        if not self.deferred:
            publish(layout, number)
            self.say(f"published generation {number}")
        self._base, self._staged, self._legacy, self._dirty = generation, _Staged(), {}, False
        return generation

    def _forget_texts(self, previous: Generation, current: Generation) -> None:
        """Drop the text cache's entries of the texts of chunks this commit deleted or replaced, unless
        a live chunk still has the same text (a lookup in each segment's `text_key` column). A crash
        between publishing and here leaves rows behind; they are only unused, never wrong."""
        dead: dict[str, str] = {}
        for segment, deletions in previous.segments:
            now = next((d for s, d in current.segments if s.id == segment.id), None)
            before = set() if deletions is None else set(deletions.chunks.tolist())
            after = set() if now is None else set(now.chunks.tolist())
            for row in sorted(after - before):
                text = segment.corpus.doc_text(row)
                dead[text_key(text)] = text
        if not dead:
            return
        for segment, deletions in current.segments:
            rows = segment.rows_with_texts(set(dead))
            if deletions is not None:
                rows = np.setdiff1d(rows, deletions.chunks)
            for row in rows.tolist():
                dead.pop(text_key(segment.corpus.doc_text(row)), None)
        removed = self._text_cache().forget(dead.values()) if dead else 0
        if removed:
            self.say(f"text cache: {removed} entries of {len(dead)} texts no chunk has any more removed")


def _batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ref(segment: Segment, deleted: str | None, deletions: Deletions | None = None) -> SegmentRef:
    return SegmentRef(id=segment.id, documents=segment.info.documents, chunks=segment.info.chunks, deleted=deleted,
                      deleted_documents=len(deletions.documents) if deletions else 0,
                      deleted_chunks=len(deletions.chunks) if deletions else 0)


def _deletions(layout: Layout, ref: SegmentRef) -> Deletions | None:
    return Deletions.load(layout.segment(ref.id) / ref.deleted) if ref.deleted else None


def _numbers(layout: Layout) -> list[int]:
    if not layout.generations.is_dir():
        return []
    return [int(p.name) for p in layout.generations.iterdir() if p.name.isdigit()]
