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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from stagegraph import atomic
from stagegraph.collection.generation import Generation, corpus_of, publish, read_current, write_manifest, write_tables
from stagegraph.collection.layout import CollectionError, CollectionSettings, DocumentEntry, GenerationManifest, Layout
from stagegraph.collection.sources import UNKNOWN, Source
from stagegraph.corpora.ingest import Chunk, Chunker, Document
from stagegraph.hashing import stable_hash
from stagegraph.indexes.text_cache import TextCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.runner import build_indexes
from stagegraph.pipeline.stage import Environment

DEFAULT_LOCK_TIMEOUT_S = 60.0


def as_document(item: Document | dict[str, Any]) -> Document:
    """A `Document` from a record `{id, text, title?, metadata?}` (its content hash computed)."""
    if isinstance(item, Document):
        return item
    if not isinstance(item, dict):
        raise CollectionError(f"a document is a Document or a dict with 'id' and 'text', not {type(item).__name__}")
    missing = [f for f in ("id", "text") if not isinstance(item.get(f), str) or not item.get(f)]
    if missing:
        raise CollectionError(f"document {item.get('id', '?')!r} has no {' or '.join(missing)} (a non-empty string)")
    unknown = set(item) - {"id", "text", "title", "metadata"}
    if unknown:
        raise CollectionError(f"document {item['id']!r} has unknown field(s) {sorted(unknown)}; put them under 'metadata'")
    fields = {"id": item["id"], "title": item.get("title") or "", "text": item["text"], "metadata": dict(item.get("metadata") or {})}
    return Document(**fields, content_hash=stable_hash(fields))


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
            self._entries[doc.id] = DocumentEntry(id=doc.id, title=doc.title, metadata=doc.metadata,
                                                  content_hash=doc.content_hash, chunks=len(chunks), source=source.key)
            self._chunks[doc.id] = chunks
            self.new_chunks.extend(chunks)
            self.changes["updated" if old is not None else "added"] += 1

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
        self._base = generation
        collect_garbage(layout)
        return generation

    def _build(self, directory: Path, number: int) -> Generation:
        documents = [self._entries[d] for d in sorted(self._entries)]
        chunks = [c for d in sorted(self._chunks) for c in sorted(self._chunks[d], key=lambda c: c.index)]
        files = write_tables(directory, documents, chunks)
        corpus = corpus_of(chunks)
        pipeline = Pipeline.from_config(self.settings.pipeline, source=str(self.layout.settings))
        env = Environment(corpus, work_dir=self.layout.artefacts, progress=self.progress,
                          text_cache=self._text_cache(), encode=self.encode)
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
