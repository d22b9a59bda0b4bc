"""`Collection`: a directory of a user's documents as chunks, with every index its pipeline needs.

    collection = Collection.create("notes.sg", pipeline_config)     # or Collection.open("notes.sg")
    collection.upsert([{"id": "a", "text": "..."}])                  # one writer transaction each
    collection.upsert(docs, source="crawler")                        # source: "python" unless named
    collection.refresh()                                             # move to the newest generation
    env = collection.environment()                                   # what a pipeline warms up on

A reader holds one generation (`generation`) until `refresh()`; while it does, a lease file tells
the writer not to remove it, so readers in any number of processes keep searching while a writer
publishes. `writer()` gives the single writer (`stagegraph.collection.writer`). The directory's
layout is described in `stagegraph.collection.layout`.

A collection created with `RecordFields(vector=..., vector_model=...)` holds precomputed vectors
(`stagegraph.collection.writer` says what it accepts); `create` refuses a pipeline whose dense stage
uses another model than `vector_model` (the stage refuses it again at bind, for a reader that opens
the collection with another pipeline), and each segment of `environment().corpus` hands its vectors
to stages.

Opening maps the current generation's segments (`stagegraph.collection.generation`): it reads
manifests, never the chunks, so it takes about as long for a million chunks as for ten. `merge()`
runs the merges the policy asks for (the writer runs only small ones after a commit) and
`compact()` merges everything into one segment; searches keep going on their generation meanwhile.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stagegraph import atomic
from stagegraph.collection.generation import Generation, LegacyGeneration, dump_settings, legacy_tables, read_current
from stagegraph.collection.layout import CollectionDamaged, CollectionError, CollectionSettings, Layout
from stagegraph.collection.sources import UNKNOWN, named_source
from stagegraph.collection.merges import MergePolicy
from stagegraph.collection.garbage import collect_garbage
from stagegraph.collection.writer import DEFAULT_LOCK_TIMEOUT_S, Writer
from stagegraph.corpora.ingest import Chunker, ChunkerConfig, Document, RecordFields
from stagegraph.corpora.validate import MetadataLimits
from stagegraph.indexes.text_cache import TextCache
from stagegraph.pipeline.stage import Environment

DEFAULT_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"


def chunk_tokenizer_of(pipeline_config: dict[str, Any]) -> str:
    """The model whose tokenizer measures chunks: the pipeline's dense model, else MiniLM's."""
    found = dense_models(pipeline_config)
    return found[0][1] if found else DEFAULT_TOKENIZER


def dense_models(pipeline_config: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, model) of every dense stage of a pipeline config, in config order."""
    found: list[tuple[str, str]] = []

    def visit(entry: Any) -> None:
        if isinstance(entry, dict):
            if entry.get("type") == "dense":
                found.append((entry.get("name") or "dense", entry.get("model") or DEFAULT_TOKENIZER))
            for value in entry.values():
                visit(value)
        elif isinstance(entry, list):
            for value in entry:
                visit(value)

    visit(pipeline_config)
    return found


class Collection:
    """A reader of one collection directory (and the door to its writer)."""

    def __init__(self, root: str | Path, *, progress: bool = False, convert: bool = False,
                 merge_policy: MergePolicy | None = None, pin: Callable[[], int] | None = None):
        self.layout = Layout(root)
        #: which generation this reader opens and refreshes to: the one `CURRENT` names, unless pinned
        #: (a shard of a sharded collection opens the generation its sharded generation names)
        self._wanted = pin or (lambda: read_current(self.layout))
        self.progress = progress
        #: the merges every writer of this object runs after a commit (None: the defaults)
        self.merge_policy = merge_policy
        if not self.layout.exists():
            raise CollectionError(
                f"{self.layout.root} is not a collection (no {self.layout.settings.name}); create one with "
                f"`stagegraph ingest PATH --collection {self.layout.root}`"
            )
        try:
            self.settings = CollectionSettings.model_validate_json(self.layout.settings.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            raise CollectionDamaged(
                f"{self.layout.settings} is unreadable ({type(exc).__name__}); it is the collection's own settings: "
                "rebuild the collection with `stagegraph ingest PATH --collection NEW_DIR --config CONFIG`"
            ) from None
        self._lease = self.layout.readers / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.lease"
        self._lock = threading.Lock()
        self._cache: TextCache | None = None
        self._chunker: Chunker | None = None
        try:
            self.generation = self._open_current()
        except LegacyGeneration:
            if not convert:
                raise
            with self.writer() as w:  # a writer converts the old generation into one segment
                w.compact()
            self.generation = self._open_current()

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | Path,
        pipeline: dict[str, Any],
        *,
        chunker: ChunkerConfig | None = None,
        records: RecordFields | None = None,
        progress: bool = False,
    ) -> Collection:
        """A new collection at `root` (an existing one must have been built the same way).

        With precomputed vectors (`records.vector`), the chunker defaults to `none` (one chunk per
        record: a vector is a document's) and every dense stage must use `records.vector_model`."""
        layout = Layout(root)
        records = records or RecordFields()
        chunker = chunker or (ChunkerConfig(kind="none") if records.vector else ChunkerConfig())
        settings = CollectionSettings(pipeline=pipeline, chunker=chunker,
                                      chunk_tokenizer=chunk_tokenizer_of(pipeline), records=records)
        if records.vector_model is not None:
            from stagegraph.stages.retrieve.dense import vector_model_problem

            for name, model in dense_models(pipeline):
                problem = vector_model_problem(name, model, records.vector_model)
                if problem:
                    raise CollectionError(problem)
        if layout.exists():
            existing = cls(root, progress=progress, convert=True)
            existing.check_same_build(settings)
            return existing
        if layout.root.exists() and any(layout.root.iterdir()):
            raise CollectionError(f"{layout.root} exists and is not empty, and is not a collection; give a new directory")
        layout.root.mkdir(parents=True, exist_ok=True)
        dump_settings(layout.settings, settings.model_dump(mode="json"))
        return cls(root, progress=progress)

    @classmethod
    def open(cls, root: str | Path, *, progress: bool = False, merge_policy: MergePolicy | None = None) -> Collection:
        return cls(root, progress=progress, merge_policy=merge_policy)

    def check_same_build(self, wanted: CollectionSettings) -> None:
        """Refuse settings that would mix chunks or indexes of another kind into this collection."""
        have = self.settings
        differences = [
            name for name, a, b in (
                ("chunker", have.chunker, wanted.chunker),
                ("chunk tokenizer (the dense model)", have.chunk_tokenizer, wanted.chunk_tokenizer),
                ("record fields", have.records, wanted.records),
                ("pipeline", have.pipeline, wanted.pipeline),
            ) if a != b
        ]
        if differences:
            raise CollectionError(
                f"the collection {self.layout.root} was built with another {' and '.join(differences)}; it cannot be mixed: "
                f"rebuild into a new directory (`stagegraph ingest PATH --collection NEW_DIR ...`), or keep the "
                "collection's own settings (leave out --config and the chunker options)"
            )

    # -- reading --------------------------------------------------------------------------------
    def _open_current(self) -> Generation:
        """Lease the current generation, then load it (re-checking that it is still current)."""
        for _ in range(20):
            number = self._wanted()
            self._write_lease(number)
            if self._wanted() == number:
                try:
                    model = self.settings.records.vector_model
                    return Generation.load(self.layout, number, vector_model=model) if number else Generation.empty(model)
                except BaseException:
                    self._lease.unlink(missing_ok=True)  # a reader that failed to open holds nothing
                    raise
        raise CollectionDamaged(f"{self.layout.root}: the current generation kept changing while opening; try again")

    def _write_lease(self, number: int) -> None:
        atomic.write_text(self._lease, f'{{"pid": {os.getpid()}, "generation": {number}}}')

    def refresh(self) -> bool:
        """Move to the newest published generation; True when it changed."""
        with self._lock:
            if self._wanted() == self.generation.number:
                return False
            try:
                self.generation = self._open_current()
            except BaseException:
                self._write_lease(self.generation.number)  # keep holding what is still in use
                raise
            return True

    @property
    def corpus(self):
        return self.generation.corpus

    def environment(self) -> Environment:
        """What a pipeline warms up on to search this generation: its segments and their indexes, read-only."""
        return Environment(self.generation.corpus, work_dir=self.layout.artefacts, progress=self.progress,
                           read_only=True)

    def text_cache(self) -> TextCache:
        if self._cache is None:
            self._cache = TextCache(self.layout.cache)
        return self._cache

    def chunker(self) -> Chunker:
        """The collection's chunker, built once (loading its tokenizer costs a tenth of a second)."""
        if self._chunker is None:
            self._chunker = self._make_chunker()
        return self._chunker

    def _make_chunker(self) -> Chunker:
        from tokenizers import Tokenizer

        from stagegraph.indexes.encoder import locate_model

        model = locate_model(self.settings.chunk_tokenizer).path
        candidates = [model / "tokenizer.json", *sorted(model.glob("*/tokenizer.json"))]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise CollectionError(f"the model {self.settings.chunk_tokenizer!r} ({model}) has no tokenizer.json to measure chunks with")
        return Chunker(self.settings.chunker, Tokenizer.from_file(str(found)))

    # -- writing --------------------------------------------------------------------------------
    def writer(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None,
               encode: Callable[[Any, list[str]], Any] | None = None, merge_policy: MergePolicy | None = None,
               merge_after_commit: bool = True, limits: MetadataLimits | None = None, deferred: bool = False) -> Writer:
        """The one writer (a file lock); `encode` embeds new chunks (`Environment.encode`, e.g. on Ray);
        `merge_policy` the merges after each commit (`merge_after_commit=False`: none); `limits` what a
        document's metadata may hold (`stagegraph.corpora.validate`; None: the defaults); `deferred`:
        generations written, not published (a shard: `stagegraph.collection.sharded` publishes them)."""
        return Writer(self.layout, self.settings, chunker=self.chunker, text_cache=self.text_cache, timeout=timeout,
                      progress=self.progress, say=say, encode=encode, merge_policy=merge_policy or self.merge_policy,
                      merge_after_commit=merge_after_commit, limits=limits, deferred=deferred)

    def _write(self, change: Callable[[Writer], Any]) -> Generation:
        with self.writer() as w:
            change(w)
            generation = w.commit()
        self.refresh()
        return generation

    # `source`: what the documents record as where they came from (`stagegraph.collection.sources`):
    # "python" unless the caller names it; `ingest --sync` of a folder never deletes them.
    def add(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> Generation:
        """Add new documents (an id already present is an error); publishes a generation."""
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin, mode="add"))

    def update(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> Generation:
        """Replace existing documents (an absent id is an error); publishes a generation."""
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin, mode="update"))

    def upsert(self, documents: Iterable[Document | dict[str, Any]], *, source: str | None = None) -> Generation:
        """Add new documents and replace changed ones; publishes a generation."""
        origin = named_source(source)
        return self._write(lambda w: w.upsert(documents, source=origin))

    def delete(self, doc_ids: Iterable[str]) -> Generation:
        return self._write(lambda w: w.delete(list(doc_ids)))

    def merge(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None) -> int:
        """Run every merge the policy asks for (any size); returns how many ran. Searches go on meanwhile."""
        with self.writer(timeout=timeout, say=say) as w:
            done = w.merge()
        self._collect_after_refresh(timeout)
        return done

    def compact(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S, say: Callable[[str], None] | None = None) -> Generation:
        """Merge every segment into one, deleted rows dropped (and convert a collection written before segments)."""
        with self.writer(timeout=timeout, say=say) as w:
            generation = w.compact()
        self._collect_after_refresh(timeout)
        return generation

    def _collect_after_refresh(self, timeout: float) -> None:
        """Move this reader to the newest generation, then remove what only older ones used (which
        this reader's own lease kept while the writer ran): the space a merge frees is freed now."""
        self.refresh()
        with self.writer(timeout=timeout):
            collect_garbage(self.layout)

    # -- information ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.generation.manifest
        return {
            "collection": str(self.layout.root),
            "generation": m.generation,
            "created": m.created,
            "documents": m.documents,
            "chunks": m.chunks,
            "changes": m.changes,
            "sources": self.sources(),
            "chunker": self.settings.chunker.model_dump(mode="json"),
            "chunk_tokenizer": self.settings.chunk_tokenizer,
            "pipeline": self.settings.pipeline,
            "stages": m.stages,
            "artefacts": m.artefacts,
            "segments": [{"id": r.id, "chunks": r.live_chunks, "deleted_chunks": r.deleted_chunks}
                         for r in m.segments or []],
        }

    def sources(self) -> list[dict[str, Any]]:
        """Where this generation's documents came from: `{source, label, documents}` per source, most first."""
        counts = self.generation.manifest.source_counts
        labels = {UNKNOWN.key: UNKNOWN.label, **self.generation.manifest.sources}
        rows = [{"source": k, "label": labels.get(k, k), "documents": n} for k, n in counts.items()]
        return sorted(rows, key=lambda r: (-r["documents"], r["label"]))

    def close(self) -> None:
        self._lease.unlink(missing_ok=True)
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair(root: str | Path, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> int:
    """Point `CURRENT` at the newest generation that loads and passes its checksums, and clear the
    debris of crashed writers; returns that generation (0: none is intact). Takes the writer lock."""
    from filelock import FileLock, Timeout

    layout = Layout(root)
    if not layout.exists():
        raise CollectionError(f"{layout.root} is not a collection (no {layout.settings.name}); nothing to repair")
    try:
        with FileLock(str(layout.lock), timeout=timeout):
            return _repair(layout)
    except Timeout:
        raise CollectionError(f"another writer holds {layout.lock}; wait for it to finish, then repair") from None


def _repair(layout: Layout) -> int:
    from stagegraph.collection.generation import publish

    numbers = sorted((int(p.name) for p in layout.generations.iterdir() if p.name.isdigit()), reverse=True) \
        if layout.generations.is_dir() else []
    for number in numbers:
        try:
            Generation.load(layout, number, verify=True)
        except LegacyGeneration:
            try:
                legacy_tables(layout, number)
            except CollectionDamaged:
                continue
        except CollectionDamaged:
            continue
        if read_current_or_none(layout) != number:
            publish(layout, number)
        collect_garbage(layout)
        return number
    return 0


def read_current_or_none(layout: Layout) -> int | None:
    try:
        return read_current(layout)
    except CollectionDamaged:
        return None
