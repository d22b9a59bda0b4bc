"""`ingest(paths, collection_dir)`: files and folders into a collection, as one new generation.

Files are read by `stagegraph.corpora.ingest.read_paths` (recursively; each unreadable, binary,
empty, encrypted, oversized or undecodable file, each duplicate or textless record, is skipped with
one line saying why). Documents whose content hash is unchanged are kept as they are (never
re-chunked, re-analysed or re-encoded); new and changed ones are chunked; `delete` removes ids.
Everything lands in one generation, published atomically. Nothing ingestible at all (no document
read, nothing to delete) is an `InputError`.

Each path given is a source (`stagegraph.collection.sources.path_source`: its resolved path), read
on its own, and every document read records it. With `sync`, the documents of those sources that
were not found again are deleted; documents of other sources (other folders, the Python API, HTTP)
never are, and the report counts them. Paths inside one another are refused (the documents under
both would belong to two sources); a document id read under two paths is kept from the first.

Every document read is checked (`stagegraph.corpora.validate`, with `limits`: the defaults of
`MetadataLimits` unless given): its id NFC-normalised, its text and title cleaned, and a file or
record whose id or metadata (front matter, record fields) breaks a rule is skipped with one warning
line naming it and the field, the rest ingested. So is one that would take the collection past
`max_collection_fields` distinct metadata fields. `file_facts` (`FileFacts`) says what the documents
record about their files: `path` relative to the path given, unless asked for more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from stagegraph.collection.collection import Collection
from stagegraph.collection.layout import CollectionError, Layout
from stagegraph.collection.sharded import ShardedCollection, create_collection, is_sharded, open_collection
from stagegraph.collection.sources import UNKNOWN, Source, path_source
from stagegraph.corpora.ingest import ChunkerConfig, Document, FileFacts, IngestSummary, RecordFields, Skipped, read_paths
from stagegraph.corpora.ingest.sources import DEFAULT_MAX_FILE_BYTES
from stagegraph.corpora.validate import DocumentError, FieldBudget, MetadataLimits, check_document


class IngestReport(BaseModel):
    """What one ingest did: the summary printed at the end."""

    collection: str
    generation: int
    published: bool
    files_read: int
    documents_read: int
    skipped: list[str] = Field(default_factory=list)
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    deleted: int = 0
    left_alone: dict[str, int] = Field(default_factory=dict)  # with sync: other sources' labels -> documents kept
    new_chunks: int = 0
    new_tokens: int = 0
    chunks: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        verb = f"published generation {self.generation}" if self.published else f"nothing changed: generation {self.generation} stays"
        moved = f", {self.moved} moved here from another source" if self.moved else ""
        lines = [
            f"{self.files_read} files read, {self.documents_read} documents, {len(self.skipped)} skipped",
            f"{self.added} added, {self.updated} updated{moved}, {self.unchanged} unchanged, {self.deleted} deleted; "
            f"{self.new_chunks} new chunks ({self.new_tokens} tokens); {self.chunks} chunks in all",
        ]
        if self.left_alone:
            kept = ", ".join(f"{label} {n}" for label, n in self.left_alone.items())
            line = f"sync left {sum(self.left_alone.values())} documents of other sources alone ({kept})"
            if UNKNOWN.label in self.left_alone:
                line += "; remove one of unknown source with --delete DOC_ID"
            lines.append(line)
        return [*lines, f"{verb} in {self.seconds:.1f} s"]


def ingest(
    paths: Sequence[str | Path],
    collection: str | Path,
    *,
    pipeline: dict[str, Any] | None = None,
    chunker: ChunkerConfig | None = None,
    records: RecordFields | None = None,
    sync: bool = False,
    delete: Sequence[str] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    limits: MetadataLimits | None = None,
    file_facts: FileFacts | None = None,
    lock_timeout: float = 60.0,
    progress: bool = True,
    warn: Callable[[str], None] = print,
    encode: Callable[[Any, list[str]], Any] | None = None,
    shards: int | None = None,
) -> IngestReport:
    """Ingest `paths` into the collection at `collection` (created with `pipeline` when new).

    `encode`: how new chunks are embedded (`Environment.encode`; `stagegraph.scale` passes a Ray
    encoder); the pipeline's `executor:` is where it runs, not part of how the collection is built.
    `shards`: a new collection is sharded into that many shards (`stagegraph.collection.sharded`;
    an existing one must have as many)."""
    if pipeline is not None:
        pipeline = {k: v for k, v in pipeline.items() if k != "executor"}
    started = time.perf_counter()
    exists = Layout(collection).exists() or is_sharded(collection)
    fields = records or (_settings_of(collection).records if exists else RecordFields())
    summary = IngestSummary()
    limits = limits or MetadataLimits()
    read, origins = _read(paths, fields=fields, max_file_bytes=max_file_bytes, progress=progress, summary=summary, warn=warn,
                 limits=limits, file_facts=file_facts or FileFacts())
    documents = [d for found in read.values() for d in found]
    if not documents and not delete and not (sync and paths and exists):
        raise CollectionError(
            f"nothing to ingest from {', '.join(map(str, paths)) or 'no path'}: no document could be read "
            f"({len(summary.skipped)} skipped, see above); give files of a supported type (.txt .md .rst .html .pdf .json .jsonl)"
        )
    store = _collection(collection, pipeline, chunker, records, progress, shards)  # created only now, with something to hold
    try:
        with store.writer(timeout=lock_timeout, encode=encode, limits=limits) as w:
            store.refresh()  # the generation this writer starts from: its fields count against the limit
            budget = FieldBudget(store.generation.fields(), limits)
            for source, found in read.items():
                found[:] = _within_budget(found, budget, summary, warn, origins)
                w.upsert(found, source=source)
            if sync:
                for source, found in read.items():
                    w.sync(source, (d.id for d in found))
            if delete:
                w.delete(delete)
            left_alone: dict[str, int] = {}
            if sync:  # what a sync deleted before sources were recorded, and keeps now
                others = sorted(((s, n) for s, n in w.documents_by_source().items() if s not in read),
                                key=lambda item: (-item[1], item[0].label))
                left_alone = {s.label: n for s, n in others}
            generation = w.commit()
            new_tokens = sum(w.chunker.count_tokens(c.text) for c in w.new_chunks) if w.new_chunks else 0
            report = IngestReport(
                collection=str(store.layout.root), generation=generation.number, published=w.published,
                files_read=summary.files_read, documents_read=len(documents), skipped=[str(s) for s in summary.skipped],
                new_chunks=len(w.new_chunks), new_tokens=new_tokens, chunks=generation.manifest.chunks,
                left_alone=left_alone, **w.changes,
            )
    finally:
        store.close()
    report.seconds = time.perf_counter() - started
    return report


def _within_budget(found: list[Document], budget: FieldBudget, summary: IngestSummary,
                   warn: Callable[[str], None], origins: dict[str, str]) -> list[Document]:
    """`found` less the documents that would take the collection past its distinct-field limit (warned about)."""
    kept = []
    for doc in found:
        try:
            budget.admit(doc.id, doc.metadata)
        except DocumentError as exc:
            _skip(doc, str(exc), summary, warn, where=origins.get(doc.id))
            continue
        kept.append(doc)
    return kept


def _where(root: Path, doc: Document) -> str:
    """The file a document came from, for the operator's warnings: as walked (its metadata has it relative)."""
    path = doc.metadata.get("path")
    if not isinstance(path, str) or root.is_file():
        return str(root)
    return str(root / path)


def _skip(doc: Document, reason: str, summary: IngestSummary, warn: Callable[[str], None], *,
          where: str | None = None) -> None:
    item = Skipped(source=where or str(doc.metadata.get("path", doc.id)), reason=reason)
    summary.documents -= 1
    summary.skipped.append(item)
    warn(f"skipped {item}")


def _read(paths: Sequence[str | Path], *, fields: RecordFields, max_file_bytes: int, progress: bool,
          summary: IngestSummary, warn: Callable[[str], None], limits: MetadataLimits,
          file_facts: FileFacts) -> tuple[dict[Source, list[Document]], dict[str, str]]:
    """The documents under each path, by its source, each checked against `limits`, and the file each
    document id was read from; every skip is warned about as it happens."""
    walks = [(Path(p), read_paths([Path(p)], fields=fields, max_file_bytes=max_file_bytes, file_facts=file_facts,
                                  progress=progress, summary=summary)) for p in paths]  # every path checked before any is read
    sources = _distinct_roots([root for root, _ in walks])
    out: dict[Source, list[Document]] = {}
    first: dict[str, str] = {}  # document id -> the file it was first read from
    for (root, walk), source in zip(walks, sources):
        if source is None:
            continue  # the same path given again
        found = out.setdefault(source, [])
        for item in walk:
            if isinstance(item, Document):
                try:
                    item = check_document(item, limits)
                except DocumentError as exc:
                    _skip(item, str(exc), summary, warn, where=_where(root, item))
                    continue
            if isinstance(item, Document) and item.id in first:  # read under an earlier path: keep that one
                where = _where(root, item)
                item = Skipped(source=where, reason=f"duplicate document id {item.id!r} (first from {first[item.id]})")
                summary.documents -= 1
                summary.skipped.append(item)
            if isinstance(item, Skipped):
                warn(f"skipped {item}")
            else:
                first[item.id] = _where(root, item)
                found.append(item)
    return out, first


def _distinct_roots(roots: list[Path]) -> list[Source | None]:
    """Each root's source (None for a repeat of an earlier one); a root inside another is refused."""
    resolved = [r.resolve() for r in roots]
    out: list[Source | None] = []
    for i, (root, path) in enumerate(zip(roots, resolved)):
        if path in resolved[:i]:
            out.append(None)
            continue
        for other, other_path in zip(roots, resolved):
            if other_path != path and path.is_relative_to(other_path):
                raise CollectionError(
                    f"{root} is inside {other}, also given; each path given is a source of its own, so give only "
                    f"{other}, which holds it"
                )
        out.append(path_source(root))
    return out


def _settings_of(root: str | Path) -> Any:
    with open_collection(root) as store:
        return store.settings


def _collection(root, pipeline, chunker, records, progress, shards=None) -> Collection | ShardedCollection:
    if Layout(root).exists() or is_sharded(root):
        store = open_collection(root, progress=progress)
        have = store.shard_count if isinstance(store, ShardedCollection) else None
        if shards is not None and shards != have:
            store.close()
            raise CollectionError(
                f"{root} has {f'{have} shards' if have else 'no shards'}, not {shards}; documents never move between "
                f"shards: reshard into a new directory with `stagegraph collection reshard {root} NEW_DIR --shards {shards}`")
        if pipeline is not None or chunker is not None or records is not None:
            from stagegraph.collection.layout import CollectionSettings

            wanted = CollectionSettings(
                pipeline=pipeline if pipeline is not None else store.settings.pipeline,
                chunker=chunker or store.settings.chunker,
                chunk_tokenizer=store.settings.chunk_tokenizer if pipeline is None else _tokenizer(pipeline),
                records=records or store.settings.records,
            )
            store.check_same_build(wanted)
        return store
    if pipeline is None:
        from stagegraph.pipeline.config import load_config

        pipeline = load_config("hybrid")
    return create_collection(root, pipeline, shards=shards, chunker=chunker, records=records, progress=progress)


def _tokenizer(pipeline: dict[str, Any]) -> str:
    from stagegraph.collection.collection import chunk_tokenizer_of

    return chunk_tokenizer_of(pipeline)
