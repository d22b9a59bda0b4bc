"""Sharded collections: N shard collections under one manifest, written and published together.

The directory, the routing rule and the records: `stagegraph.collection.sharded_layout`.

**Routing.** A document lives in shard `shard_of(id, N)`: the first 8 bytes of the SHA-256 of its
(NFC) id, big-endian, modulo N. Documents never move between shards; changing N is an offline
rebuild into a new directory (`reshard`, `stagegraph collection reshard SRC DST --shards N`), which
copies chunks and vectors as they are (nothing is chunked or encoded again).

**One commit, every shard at once.** `ShardedWriter.commit` has each shard's writer write its new
generation without publishing it (`Writer(deferred=True)`), then writes the sharded manifest naming
them and replaces `CURRENT`: the only moment readers can move, so no reader ever sees shard A at
generation 8 beside shard B at 7. Then each shard's own `CURRENT` is rolled forward and its garbage
collected. A crash before the rename leaves the previous sharded generation current (the shards'
unpublished generations are debris the next writer removes); a crash after it leaves shards whose own
`CURRENT` lags, and the next writer (or `repair`) rolls them forward before doing anything else.

**Reading.** A reader opens every shard at the generation the sharded manifest names (each shard
leases it, so no writer removes it), then checks that `CURRENT` did not move meanwhile. Its corpus
(`ShardedGeneration.corpus`) is every shard's segments one after the other; BM25 and dense search
over segments take their statistics over all segments and break ties by chunk key, so searching it
in one process gives exactly what one collection holding the same documents gives. On Ray, each
shard is searched by its own actors (`stagegraph.scale.shards`) with the same results.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from pydantic import ValidationError

from stagegraph import atomic
from stagegraph.collection.collection import Collection
from stagegraph.collection.garbage import collect_garbage
from stagegraph.collection.generation import Generation, publish, read_current
from stagegraph.collection.layout import (
    CollectionDamaged,
    CollectionError,
    CollectionSettings,
    DocumentEntry,
    GenerationManifest,
    Layout,
)
from stagegraph.collection.merges import MergePolicy
from stagegraph.collection.sharded_layout import (
    KEEP_MANIFESTS,
    MAX_SHARDS,
    SHARDED_FILE,
    ShardedLayout,
    ShardedManifest,
    ShardedSettings,
    is_sharded,
    read_sharded_manifest,
    roll_forward,
    shard_of,
)
from stagegraph.collection.sources import UNKNOWN, Source, named_source
from stagegraph.collection.writer import DEFAULT_LOCK_TIMEOUT_S, Writer, as_document
from stagegraph.corpora.ingest import Chunk, ChunkerConfig, Document, RecordFields
from stagegraph.corpora.segmented import SegmentedCorpus
from stagegraph.corpora.validate import MetadataLimits
from stagegraph.hashing import hash_strings
from stagegraph.pipeline.stage import Environment

def open_collection(root: str | Path, *, progress: bool = False, merge_policy: MergePolicy | None = None
                    ) -> Collection | ShardedCollection:
    """The collection at `root`, sharded or not."""
    if is_sharded(root):
        return ShardedCollection(root, progress=progress, merge_policy=merge_policy)
    return Collection(root, progress=progress, merge_policy=merge_policy)


class ShardedGeneration:
    """One sharded generation as readers see it: every shard's generation, read as one collection's."""

    def __init__(self, manifest: ShardedManifest, shards: list[Generation], shard_count: int):
        self.sharded = manifest
        self.shards = shards
        self.shard_count = shard_count
        self.segments = [s for g in shards for s in g.segments]

    @property
    def number(self) -> int:
        return self.sharded.generation

    @property
    def live_chunks(self) -> int:
        return sum(g.live_chunks for g in self.shards)

    @property
    def offsets(self) -> list[int]:
        """The first row of each shard in `corpus` (the shards' rows one after the other)."""
        sizes = [len(g.corpus) for g in self.shards]
        return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []

    @cached_property
    def manifest(self) -> GenerationManifest:
        """The shards' manifests summed up (what `info`, a server's `/v1/info` and reports read)."""
        ms = [g.manifest for g in self.shards]
        counts: dict[str, int] = {}
        changes: dict[str, int] = {}
        for m in ms:
            for key, n in m.source_counts.items():
                counts[key] = counts.get(key, 0) + n
            for key, n in m.changes.items():
                changes[key] = changes.get(key, 0) + n
        refs = [ref.model_copy(update={"id": f"shard{i:03d}/{ref.id}"})
                for i, m in enumerate(ms) for ref in (m.segments or [])]
        return GenerationManifest(
            generation=self.number, created=self.sharded.created, documents=sum(m.documents for m in ms),
            chunks=sum(m.chunks for m in ms), corpus_fingerprint=self.fingerprint, segments=refs,
            artefacts=[f"shard{i:03d}/{a}" for i, m in enumerate(ms) for a in m.artefacts],
            stages=ms[0].stages if ms else {}, changes=changes, source_counts=dict(sorted(counts.items())),
            sources={k: v for m in ms for k, v in m.sources.items()},
        )

    @property
    def fingerprint(self) -> str:
        return hash_strings(g.manifest.corpus_fingerprint for g in self.shards)

    @cached_property
    def corpus(self) -> SegmentedCorpus:
        """Every shard's segments as one corpus (fresh `Part`s: a shard's own corpus keeps its offsets)."""
        parts = [dataclasses.replace(p) for g in self.shards for p in g.corpus.parts]
        return SegmentedCorpus(parts, fingerprint=self.fingerprint)

    def shard_for(self, doc_id: str) -> Generation:
        return self.shards[shard_of(doc_id, self.shard_count)]

    def document(self, doc_id: str) -> DocumentEntry | None:
        return self.shard_for(doc_id).document(doc_id)

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return self.shard_for(doc_id).chunks_of(doc_id)

    def documents(self) -> Iterator[DocumentEntry]:
        return itertools.chain.from_iterable(g.documents() for g in self.shards)

    def fields(self) -> set[str]:
        return set().union(*(g.fields() for g in self.shards))

    def live_ids(self, source: str | None = None) -> list[str]:
        return [d for g in self.shards for d in g.live_ids(source)]


class ShardedCollection:
    """A reader of a sharded collection (and the door to its writer); the API of `Collection`."""

    def __init__(self, root: str | Path, *, progress: bool = False, merge_policy: MergePolicy | None = None):
        self.layout = ShardedLayout(root)
        self.progress = progress
        self.merge_policy = merge_policy
        if not self.layout.exists():
            raise CollectionError(f"{self.layout.root} is not a sharded collection (no {SHARDED_FILE}); create one with "
                                  f"`stagegraph ingest PATH --collection {self.layout.root} --shards N`")
        try:
            self.sharded = ShardedSettings.model_validate_json(self.layout.settings.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            raise CollectionDamaged(f"{self.layout.settings} is unreadable ({type(exc).__name__}); rebuild the collection "
                                    "with `stagegraph ingest PATH --collection NEW_DIR --shards N`") from None
        self.settings: CollectionSettings = self.sharded.collection
        self._lock = threading.Lock()
        self._pinned: ShardedManifest | None = None
        self.shards: list[Collection] = []
        self.generation = self._open()

    @property
    def shard_count(self) -> int:
        return self.sharded.shards

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, pipeline: dict[str, Any], *, shards: int, chunker: ChunkerConfig | None = None,
               records: RecordFields | None = None, progress: bool = False) -> ShardedCollection:
        """A new sharded collection of `shards` shards at `root` (an existing one must match)."""
        layout = ShardedLayout(root)
        if not 1 <= shards <= MAX_SHARDS:
            raise CollectionError(f"--shards {shards}: a collection has 1 to {MAX_SHARDS} shards")
        if layout.exists():
            existing = cls(root, progress=progress)
            if existing.shard_count != shards:
                raise CollectionError(
                    f"{root} has {existing.shard_count} shards, not {shards}; documents never move between shards: "
                    f"reshard into a new directory with `stagegraph collection reshard {root} NEW_DIR --shards {shards}`")
            return existing
        if Layout(root).exists():
            raise CollectionError(f"{root} is an unsharded collection; shard it into a new directory with "
                                  f"`stagegraph collection reshard {root} NEW_DIR --shards {shards}`")
        if layout.root.exists() and any(layout.root.iterdir()):
            raise CollectionError(f"{layout.root} exists and is not empty, and is not a collection; give a new directory")
        settings = None
        for index in range(shards):
            shard = Collection.create(layout.shard(index), pipeline, chunker=chunker, records=records, progress=progress)
            settings = shard.settings
            shard.close()
        assert settings is not None
        layout.generations.mkdir(parents=True, exist_ok=True)
        atomic.write_text(layout.settings, ShardedSettings(shards=shards, collection=settings).model_dump_json(indent=2),
                          durable=True)  # last: a directory without it is not a collection yet
        return cls(root, progress=progress)

    @classmethod
    def open(cls, root: str | Path, *, progress: bool = False, merge_policy: MergePolicy | None = None) -> ShardedCollection:
        return cls(root, progress=progress, merge_policy=merge_policy)

    def check_same_build(self, wanted: CollectionSettings) -> None:
        Collection.check_same_build(self, wanted)  # type: ignore[arg-type]

    # -- reading --------------------------------------------------------------------------------
    def _manifest(self, number: int) -> ShardedManifest:
        if number == 0:
            return ShardedManifest(generation=0, shards=[0] * self.shard_count)
        return read_sharded_manifest(self.layout, number)

    def _open(self) -> ShardedGeneration:
        """Open every shard at the generation the current sharded generation names, leasing each,
        then check that `CURRENT` still names it (else again)."""
        for _ in range(20):
            number = read_current(self.layout)  # type: ignore[arg-type]
            try:
                manifest = self._manifest(number)
            except CollectionDamaged:
                if read_current(self.layout) != number:  # type: ignore[arg-type]
                    continue  # removed by a writer while we read: there is a newer one
                raise
            self._pinned = manifest
            if not self.shards:
                self.shards = [Collection(self.layout.shard(i), progress=self.progress, merge_policy=self.merge_policy,
                                          pin=self._pin(i)) for i in range(self.shard_count)]
            else:
                for shard in self.shards:
                    shard.refresh()
            if read_current(self.layout) == number:  # type: ignore[arg-type]
                return ShardedGeneration(manifest, [s.generation for s in self.shards], self.shard_count)
        raise CollectionDamaged(f"{self.layout.root}: the current generation kept changing while opening; try again")

    def _pin(self, index: int) -> Callable[[], int]:
        return lambda: self._pinned.shards[index] if self._pinned is not None else 0

    def refresh(self) -> bool:
        """Move to the newest published sharded generation; True when it changed."""
        with self._lock:
            if read_current(self.layout) == self.generation.number:  # type: ignore[arg-type]
                return False
            self.generation = self._open()
            return True

    @property
    def corpus(self) -> SegmentedCorpus:
        return self.generation.corpus

    def environment(self) -> Environment:
        """Every shard's segments as one corpus, read-only; each segment's indexes are found under its
        own shard's directory."""
        roots = tuple(s.layout.artefacts for s in self.shards)
        return Environment(self.generation.corpus, work_dir=roots[0], progress=self.progress, read_only=True,
                           artefact_roots=roots[1:])

    def chunker(self):
        return self.shards[0].chunker()

    # -- writing --------------------------------------------------------------------------------
    def writer(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None,
               encode: Callable[[Any, list[str]], Any] | None = None, merge_policy: MergePolicy | None = None,
               merge_after_commit: bool = True, limits: MetadataLimits | None = None) -> ShardedWriter:
        """The one writer of every shard (see `Collection.writer` for the arguments)."""
        policy = merge_policy or self.merge_policy
        writers = [s.writer(timeout=timeout, say=say, encode=encode, merge_policy=policy,
                            merge_after_commit=merge_after_commit, limits=limits, deferred=True) for s in self.shards]
        return ShardedWriter(self, writers, timeout=timeout, limits=limits, say=say)

    def _write(self, change: Callable[[ShardedWriter], Any]) -> ShardedGeneration:
        with self.writer() as w:
            change(w)
            generation = w.commit()
        self.refresh()
        return generation

    def add(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> ShardedGeneration:
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin, mode="add"))

    def update(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> ShardedGeneration:
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin, mode="update"))

    def upsert(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> ShardedGeneration:
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin))

    def delete(self, doc_ids: Iterable[str]) -> ShardedGeneration:
        return self._write(lambda w: w.delete(list(doc_ids)))

    def merge(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None) -> int:
        with self.writer(timeout=timeout, say=say) as w:
            done = w.merge()
        self.refresh()
        return done

    def compact(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None) -> ShardedGeneration:
        with self.writer(timeout=timeout, say=say) as w:
            generation = w.compact()
        self.refresh()
        return generation

    # -- information ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.generation.manifest
        return {
            "collection": str(self.layout.root), "generation": m.generation, "created": m.created,
            "documents": m.documents, "chunks": m.chunks, "changes": m.changes, "sources": self.sources(),
            "chunker": self.settings.chunker.model_dump(mode="json"), "chunk_tokenizer": self.settings.chunk_tokenizer,
            "pipeline": self.settings.pipeline, "stages": m.stages, "artefacts": m.artefacts,
            "segments": [{"id": r.id, "chunks": r.live_chunks, "deleted_chunks": r.deleted_chunks} for r in m.segments or []],
            "shards": [{"shard": i, "generation": g.number, "documents": g.manifest.documents, "chunks": g.manifest.chunks}
                       for i, g in enumerate(self.generation.shards)],
            "routing": self.sharded.routing,
        }

    def sources(self) -> list[dict[str, Any]]:
        m = self.generation.manifest
        labels = {UNKNOWN.key: UNKNOWN.label, **m.sources}
        rows = [{"source": k, "label": labels.get(k, k), "documents": n} for k, n in m.source_counts.items()]
        return sorted(rows, key=lambda r: (-r["documents"], r["label"]))

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardedWriter:
    """Every shard's writer, changes routed by document id, committed as one sharded generation."""

    def __init__(self, collection: ShardedCollection, writers: list[Writer], *, timeout: float,
                 limits: MetadataLimits | None, say: Callable[[str], None] | None):
        self.collection = collection
        self.layout = collection.layout
        self.writers = writers
        self.timeout = timeout
        self.limits = limits
        self.say = say or (lambda text: None)
        self._lock = FileLock(str(self.layout.lock))
        self._entered: list[Writer] = []
        self._base = 0
        #: whether a commit of this writer published a sharded generation
        self.published = False

    def __enter__(self) -> ShardedWriter:
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise CollectionError(f"another writer holds {self.layout.lock} (waited {self.timeout:g} s); wait for it to "
                                  "finish, or pass a longer timeout (--lock-timeout)") from None
        try:
            self._base = read_current(self.layout)  # type: ignore[arg-type]
            roll_forward(self.layout, self.collection._manifest(self._base))
            for w in self.writers:
                w.__enter__()
                self._entered.append(w)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        while self._entered:
            self._entered.pop().__exit__()
        if self._lock.is_locked:
            self._lock.release()

    def _route(self, doc_id: str) -> Writer:
        return self.writers[shard_of(doc_id, len(self.writers))]

    @property
    def chunker(self):
        return self.writers[0].chunker

    @property
    def changes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.writers:
            for key, n in w.changes.items():
                out[key] = out.get(key, 0) + n
        return out

    @property
    def new_chunks(self) -> list[Chunk]:
        return [c for w in self.writers for c in w.new_chunks]

    @property
    def changed(self) -> bool:
        return any(w.changed for w in self.writers)

    def upsert(self, documents: Iterable[Document | dict[str, Any]], *, source: Source, mode: str = "upsert") -> None:
        routed: list[list[Document]] = [[] for _ in self.writers]
        for item in documents:
            doc = as_document(item, self.limits)
            routed[shard_of(doc.id, len(self.writers))].append(doc)
        for w, docs in zip(self.writers, routed):
            if docs:
                w.upsert(docs, source=source, mode=mode)

    def delete(self, doc_ids: Iterable[str], *, missing_ok: bool = False) -> list[str]:
        doc_ids = list(doc_ids)
        routed: list[list[str]] = [[] for _ in self.writers]
        for doc_id in doc_ids:
            routed[shard_of(doc_id, len(self.writers))].append(doc_id)
        absent = {d for w, ids in zip(self.writers, routed) if ids for d in w.delete(ids, missing_ok=True)}
        if absent and not missing_ok:
            raise CollectionError(f"no document {', '.join(map(repr, sorted(absent)[:5]))} in the collection to delete")
        return [d for d in doc_ids if d in absent]

    def sync(self, source: Source, doc_ids: Iterable[str]) -> list[str]:
        wanted = list(doc_ids)
        return sorted(d for w in self.writers for d in w.sync(source, wanted))

    def adopt(self, entry: DocumentEntry, chunks: list[Chunk], vector: np.ndarray | None, label: str) -> None:
        self._route(entry.id).adopt(entry, chunks, vector, label)

    def documents_by_source(self) -> dict[Source, int]:
        out: dict[Source, int] = {}
        for w in self.writers:
            for source, n in w.documents_by_source().items():
                out[source] = out.get(source, 0) + n
        return out

    # -- publishing -----------------------------------------------------------------------------
    def commit(self) -> ShardedGeneration:
        """Each changed shard writes its generation (unpublished), then one sharded generation names
        them all and is published (see the module docstring); the current one when nothing changed."""
        if not self._entered:
            raise CollectionError("use the writer as a context manager: `with collection.writer() as w: ...`")
        if not self.changed:
            return self._load(self._base)
        for w in self.writers:
            w.commit()
        self.published = True
        return self._publish()

    def merge(self) -> int:
        done = sum(w.merge() for w in self.writers)
        if done:
            self._publish()
        return done

    def compact(self) -> ShardedGeneration:
        for w in self.writers:
            w.compact()
        return self._publish()

    def _publish(self) -> ShardedGeneration:
        numbers = [w._base.number for w in self.writers]  # type: ignore[union-attr]
        if self._base and self.collection._manifest(self._base).shards == numbers:
            return self._load(self._base)
        existing = [int(p.name[:8]) for p in self.layout.generations.glob("*.json") if p.name[:8].isdigit()]
        number = max([self._base, *existing]) + 1
        manifest = ShardedManifest(generation=number, shards=numbers)
        self.layout.generations.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.layout.generation(number), manifest.model_dump_json(indent=2), durable=True)
        publish(self.layout, number)  # type: ignore[arg-type]  # the moment every shard moves, together
        self.say(f"published sharded generation {number} (shard generations {numbers})")
        self._base = number
        roll_forward(self.layout, manifest)
        self._collect(number)
        return self._load(number)

    def _collect(self, current: int) -> None:
        """Remove what no reader can need: each shard's garbage, and old sharded manifests."""
        for w in self.writers:
            collect_garbage(w.layout)
        old = sorted((p for p in self.layout.generations.glob("*.json") if p.name[:8].isdigit()), reverse=True)
        for path in old[KEEP_MANIFESTS + 1:]:
            if int(path.name[:8]) != current:
                path.unlink(missing_ok=True)

    def _load(self, number: int) -> ShardedGeneration:
        manifest = self.collection._manifest(number)
        model = self.collection.settings.records.vector_model
        shards = [Generation.load(w.layout, n, vector_model=model) if n else Generation.empty(model)
                  for w, n in zip(self.writers, manifest.shards)]
        return ShardedGeneration(manifest, shards, len(self.writers))


def repair_sharded(root: str | Path, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> int:
    """Point `CURRENT` at the newest sharded generation whose every shard generation loads and passes
    its checksums, roll the shards forward to it and clear debris; returns it (0: none is intact)."""
    layout = ShardedLayout(root)
    if not layout.exists():
        raise CollectionError(f"{layout.root} is not a sharded collection; nothing to repair")
    try:
        with FileLock(str(layout.lock), timeout=timeout):
            numbers = sorted((int(p.name[:8]) for p in layout.generations.glob("*.json") if p.name[:8].isdigit()),
                             reverse=True)
            for number in numbers:
                try:
                    manifest = read_sharded_manifest(layout, number)
                    for index, n in enumerate(manifest.shards):
                        if n:
                            Generation.load(Layout(layout.shard(index)), n, verify=True)
                except CollectionDamaged:
                    continue
                if read_current(layout) != number:  # type: ignore[arg-type]
                    publish(layout, number)  # type: ignore[arg-type]
                roll_forward(layout, manifest)
                for index in range(len(manifest.shards)):
                    collect_garbage(Layout(layout.shard(index)))
                return number
            return 0
    except Timeout:
        raise CollectionError(f"another writer holds {layout.lock}; wait for it to finish, then repair") from None


def reshard(source: str | Path, target: str | Path, *, shards: int, progress: bool = False,
            say: Callable[[str], None] | None = None) -> ShardedGeneration:
    """Rebuild the collection at `source` (sharded or not) into a new sharded collection of `shards`
    shards at `target`: every document with its chunks and vectors as they are (nothing is chunked or
    encoded again), the indexes built per shard. The source is only read."""
    say = say or (lambda text: None)
    if Path(target).exists() and any(Path(target).iterdir()):
        raise CollectionError(f"{target} exists and is not empty; reshard into a new directory")
    with open_collection(source, progress=progress) as src:
        settings = src.settings
        out = ShardedCollection.create(target, settings.pipeline, shards=shards, chunker=settings.chunker,
                                       records=settings.records, progress=progress)
        labels = {UNKNOWN.key: UNKNOWN.label, **src.generation.manifest.sources}
        generations = src.generation.shards if isinstance(src, ShardedCollection) else [src.generation]
        moved = 0
        with out.writer(merge_after_commit=False) as w:
            for generation in generations:
                for segment, deletions in generation.segments:
                    dead = set() if deletions is None else set(deletions.documents.tolist())
                    array = segment.vectors()
                    for row in range(segment.info.documents):
                        if row in dead:
                            continue
                        entry = segment.entry(row)
                        rows = segment.chunk_rows(np.array([row]))
                        chunks = sorted((segment.chunk(int(r)) for r in rows), key=lambda c: c.index)
                        vector = None if array is None else np.asarray(array[int(rows[0])])
                        w.adopt(entry, chunks, vector, labels.get(entry.source, entry.source))
                        moved += 1
            say(f"{moved} documents into {shards} shards; building each shard's indexes")
            generation = w.commit()
        out.close()
        return generation


def create_collection(root: str | Path, pipeline: dict[str, Any], *, shards: int | None = None,
                      chunker: ChunkerConfig | None = None, records: RecordFields | None = None,
                      progress: bool = False) -> Collection | ShardedCollection:
    """A new collection at `root`, sharded when `shards` is given (or when `root` is sharded already)."""
    if shards is not None or is_sharded(root):
        if shards is None:
            shards = ShardedSettings.model_validate_json(ShardedLayout(root).settings.read_text(encoding="utf-8")).shards
        return ShardedCollection.create(root, pipeline, shards=shards, chunker=chunker, records=records, progress=progress)
    return Collection.create(root, pipeline, chunker=chunker, records=records, progress=progress)


__all__ = ["ShardedCollection", "ShardedGeneration", "ShardedWriter", "create_collection", "is_sharded",
           "open_collection", "repair_sharded", "reshard", "shard_of"]
