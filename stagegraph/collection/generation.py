"""One generation of a collection: the segments it is made of, each with the rows it has deleted.

`Generation.load(layout, number)` reads `manifest.json` and opens the segments it names
(`stagegraph.collection.segments`: memory-mapped, cached per process, sizes checked; with
`verify=True` every file's SHA-256, which `repair` does) and their deletion files. Opening reads
manifests and maps files: its cost does not grow with the number of chunks.

`corpus` is what stages index and rank: a `SegmentedCorpus` (the segments' rows one after the
other, deleted rows masked out by every retriever; ties ordered by chunk key, so the same live
chunks give the same rankings in any layout). A collection whose records carry precomputed vectors
keeps them per segment (`vectors.npy`, a row per chunk) and `corpus` hands each segment's vectors to
stages (`Part.vectors`). Documents are found by id per segment (`document`, `chunks_of`), newest
segment first; `documents()` walks every live one (for listings and `collection info`).

Generations written before segments (format 1 and 2: whole `documents.jsonl`/`chunks.jsonl` tables)
are not searched as they are: `LegacyGeneration` says so, and the writer converts one into a single
segment (`legacy_tables` reads it) at its next write or at `stagegraph collection compact DIR`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from stagegraph import atomic
from stagegraph.collection.layout import (
    CHUNKS_FILE,
    DOCUMENTS_FILE,
    MANIFEST_FILE,
    CollectionDamaged,
    CollectionError,
    DocumentEntry,
    GenerationManifest,
    Layout,
)
from stagegraph.collection.segments import Deletions, Segment, open_segment
from stagegraph.corpora.ingest import Chunk
from stagegraph.corpora.segmented import Part, SegmentedCorpus, tie_keys_of
from stagegraph.corpora.vectors import CorpusVectors
from stagegraph.hashing import check_files, hash_strings

LEGACY_VECTORS_FILE = "vectors.npy"
REPAIR = "`stagegraph collection repair DIR` goes back to the newest intact generation"


class LegacyGeneration(CollectionError):
    """A generation written before segments: convert it once (the message says how)."""


class Generation:
    """A published (or just built) generation: its manifest and its segments with their deletions."""

    def __init__(self, directory: Path, manifest: GenerationManifest, segments: list[tuple[Segment, Deletions | None]],
                 *, vector_model: str | None = None):
        self.directory = directory
        self.manifest = manifest
        self.segments = segments
        self.vector_model = vector_model

    @property
    def number(self) -> int:
        return self.manifest.generation

    @classmethod
    def empty(cls, vector_model: str | None = None) -> Generation:
        manifest = GenerationManifest(generation=0, documents=0, chunks=0, corpus_fingerprint=hash_strings([]), segments=[])
        return cls(Path(), manifest, [], vector_model=vector_model)

    @classmethod
    def load(cls, layout: Layout, number: int, *, verify: bool = False, vector_model: str | None = None) -> Generation:
        manifest = read_manifest(layout, number)
        where = f"generation {number} of the collection {layout.root}"
        if manifest.segments is None:
            raise LegacyGeneration(
                f"{where} was written by an older stagegraph (generation format {manifest.format_version}, before "
                f"segments); convert it once with `stagegraph collection compact {layout.root}` (or write to it)"
            )
        segments = []
        for ref in manifest.segments:
            segment = open_segment(layout.segment(ref.id), verify=verify, owner=f"{where}, segment {ref.id}")
            deletions = None
            if ref.deleted:
                path = layout.segment(ref.id) / ref.deleted
                try:
                    deletions = Deletions.load(path)
                except (OSError, ValueError, KeyError) as exc:
                    raise CollectionDamaged(f"{where}: the deletion file {path} cannot be read ({type(exc).__name__}); "
                                            f"{REPAIR}") from None
                if len(deletions.documents) != ref.deleted_documents or len(deletions.chunks) != ref.deleted_chunks:
                    raise CollectionDamaged(f"{where}: the deletion file {path} does not match its manifest; {REPAIR}")
            segments.append((segment, deletions))
        return cls(layout.generation(number), manifest, segments, vector_model=vector_model)

    # -- what stages see --------------------------------------------------------------------------
    @cached_property
    def corpus(self) -> SegmentedCorpus:
        parts = []
        for segment, deletions in self.segments:
            vectors = None
            if self.vector_model is not None:
                array = segment.vectors()
                if array is None:
                    raise CollectionDamaged(f"segment {segment.id} of {self.directory} has no vectors.npy, though its "
                                            f"records carry vectors; {REPAIR}")
                vectors = CorpusVectors(self.vector_model, array, fingerprint=segment.info.files["vectors.npy"])
            parts.append(segment.part(deletions, vectors))
        return SegmentedCorpus(parts, fingerprint=self.manifest.corpus_fingerprint)

    @property
    def live_chunks(self) -> int:
        return self.manifest.chunks

    # -- documents by id ----------------------------------------------------------------------------
    def locate(self, doc_id: str) -> tuple[int, int] | None:
        """(segment position, document row) of the live document `doc_id`, None when it is not live."""
        return self.locate_many([doc_id]).get(doc_id)

    def locate_many(self, doc_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(segment position, document row) of each of `doc_ids` that is live: a binary search per
        segment, newest first. An id found in a segment is looked for no further, deleted there or
        not: an older segment's copy of it was deleted when the newer one was written."""
        found: dict[str, tuple[int, int]] = {}
        keys = tie_keys_of(doc_ids)
        pending = np.arange(len(doc_ids))
        for position in range(len(self.segments) - 1, -1, -1):
            if not len(pending):
                break
            segment, deletions = self.segments[position]
            rows = segment.doc_rows([doc_ids[i] for i in pending.tolist()], keys[pending])
            here = rows >= 0
            live = here.copy()
            if deletions is not None and len(deletions.documents):
                live &= ~np.isin(rows, deletions.documents)
            for i, row in zip(pending[live].tolist(), rows[live].tolist()):
                found[doc_ids[i]] = (position, row)
            pending = pending[~here]
        return found

    def document(self, doc_id: str) -> DocumentEntry | None:
        found = self.locate(doc_id)
        return None if found is None else self.segments[found[0]][0].entry(found[1])

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        """The live document `doc_id`'s chunks in chunk order (empty when it is not live)."""
        found = self.locate(doc_id)
        if found is None:
            return []
        segment = self.segments[found[0]][0]
        chunks = [segment.chunk(int(r)) for r in segment.chunk_rows(np.array([found[1]]))]
        return sorted(chunks, key=lambda c: c.index)

    def documents(self) -> Iterator[DocumentEntry]:
        """Every live document (segment order, then id order within a segment)."""
        for segment, deletions in self.segments:
            dead = set() if deletions is None else set(deletions.documents.tolist())
            for row in range(segment.info.documents):
                if row not in dead:
                    yield segment.entry(row)

    def fields(self) -> set[str]:
        """The top-level metadata fields of this generation's segments (each segment records its own,
        so no document is read; a deleted document's fields count until its segment is merged)."""
        return {name for segment, _ in self.segments for name in segment.info.fields}

    def live_ids(self, source: str | None = None) -> list[str]:
        """The ids of live documents (of `source` only, when given), read column-wise."""
        out: list[str] = []
        for segment, deletions in self.segments:
            ids, sources = segment.column("documents", "id"), segment.column("documents", "source")
            dead = set() if deletions is None else set(deletions.documents.tolist())
            out.extend(d for row, (d, s) in enumerate(zip(ids, sources)) if row not in dead and (source is None or s == source))
        return out


def read_manifest(layout: Layout, number: int) -> GenerationManifest:
    directory = layout.generation(number)
    where = f"generation {number} of the collection {layout.root}"
    path = directory / MANIFEST_FILE
    try:
        return GenerationManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionDamaged(f"{where} is missing ({path}); {REPAIR}") from None
    except (OSError, ValueError) as exc:
        raise CollectionDamaged(f"the manifest of {where} is unreadable ({type(exc).__name__}); {REPAIR}") from None


def legacy_tables(layout: Layout, number: int) -> tuple[list[DocumentEntry], list[Chunk], np.ndarray | None]:
    """The documents, chunks and vectors of a format-1/2 generation (checksums checked), to convert it."""
    directory = layout.generation(number)
    manifest = read_manifest(layout, number)
    where = f"generation {number} of the collection {layout.root}"
    problem = check_files(directory, manifest.files, owner=where, fix=REPAIR)
    if problem:
        raise CollectionDamaged(problem)
    try:
        documents = [DocumentEntry.model_validate_json(line) for line in _lines(directory / DOCUMENTS_FILE)]
        chunks = [Chunk.model_validate_json(line) for line in _lines(directory / CHUNKS_FILE)]
    except (OSError, ValueError) as exc:
        raise CollectionDamaged(f"the tables of {where} cannot be read ({type(exc).__name__}); {REPAIR}") from None
    vectors = np.load(directory / LEGACY_VECTORS_FILE) if LEGACY_VECTORS_FILE in manifest.files else None
    return documents, chunks, vectors


def write_manifest(directory: Path, manifest: GenerationManifest) -> None:
    atomic.write_text(directory / MANIFEST_FILE, manifest.model_dump_json(indent=2), durable=True)


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line for line in fh.read().split("\n") if line]


def read_current(layout: Layout) -> int:
    """The published generation's number (0: nothing published yet)."""
    try:
        text = layout.current.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise CollectionDamaged(f"{layout.current} cannot be read ({exc}); {REPAIR}") from None
    if not text.isdigit():
        raise CollectionDamaged(f"{layout.current} holds {text[:20]!r}, not a generation number; {REPAIR}")
    return int(text)


def publish(layout: Layout, number: int) -> None:
    """Make generation `number` the current one: one atomic, durable rename of `CURRENT`."""
    atomic.write_text(layout.current, f"{number}\n", durable=True)


def dump_settings(path: Path, payload: dict) -> None:
    atomic.write_text(path, json.dumps(payload, indent=2, sort_keys=True), durable=True)
