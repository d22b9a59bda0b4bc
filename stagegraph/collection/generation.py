"""One generation of a collection: its documents and chunks, read, checked and turned into a corpus.

`Generation.load(layout, number)` reads `manifest.json`, checks the tables' SHA-256 against it and
parses them; anything missing or damaged is a `CollectionDamaged` that names the repair command.
`corpus()` is what stages index and rank: one row per chunk, in the stored order (document id, then
chunk index), so two collections holding the same documents have the same rows, the same corpus
fingerprint, and therefore identical indexes and rankings. `write_tables` is the writer's half.

A collection whose records carry precomputed vectors (`RecordFields.vector`) keeps them in the
generation itself: `vectors.npy`, one float32 row per chunk in the chunks' order (a document with a
vector is one chunk), checksummed in the manifest like the tables. That file, not the text cache,
is where they live: the cache holds what can be recomputed, these cannot, and a vector stored per
document can never be served for another document with the same text. The next generation's writer
reads the rows of unchanged documents from it (memory-mapped) and writes the file anew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from stagegraph import atomic
from stagegraph.collection.layout import (
    CHUNKS_FILE,
    DOCUMENTS_FILE,
    MANIFEST_FILE,
    CollectionDamaged,
    DocumentEntry,
    GenerationManifest,
    Layout,
)
from stagegraph.corpora.ingest import Chunk
from stagegraph.corpora.types import Corpus
from stagegraph.hashing import check_files, sha256_file

VECTORS_FILE = "vectors.npy"
REPAIR = "`stagegraph collection repair DIR` goes back to the newest intact generation"


class Generation:
    """A published (or just built) generation: manifest, documents and chunks."""

    def __init__(self, directory: Path, manifest: GenerationManifest, documents: list[DocumentEntry], chunks: list[Chunk]):
        self.directory = directory
        self.manifest = manifest
        self.documents = documents
        self.chunks = chunks

    @property
    def number(self) -> int:
        return self.manifest.generation

    @classmethod
    def empty(cls) -> Generation:
        manifest = GenerationManifest(generation=0, documents=0, chunks=0, corpus_fingerprint=Corpus([], [], []).fingerprint)
        return cls(Path(), manifest, [], [])

    @classmethod
    def load(cls, layout: Layout, number: int, *, verify: bool = True) -> Generation:
        directory = layout.generation(number)
        where = f"generation {number} of the collection {layout.root}"
        path = directory / MANIFEST_FILE
        try:
            manifest = GenerationManifest.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CollectionDamaged(f"{where} is missing ({path}); {REPAIR}") from None
        except (OSError, ValueError) as exc:
            raise CollectionDamaged(f"the manifest of {where} is unreadable ({type(exc).__name__}); {REPAIR}") from None
        problem = check_files(directory, manifest.files, owner=where, fix=REPAIR, checksums=verify)
        if problem:
            raise CollectionDamaged(problem)
        try:
            documents = [DocumentEntry.model_validate_json(line) for line in _lines(directory / DOCUMENTS_FILE)]
            chunks = [Chunk.model_validate_json(line) for line in _lines(directory / CHUNKS_FILE)]
        except (OSError, ValueError) as exc:
            raise CollectionDamaged(f"the tables of {where} cannot be read ({type(exc).__name__}); {REPAIR}") from None
        if len(documents) != manifest.documents or len(chunks) != manifest.chunks:
            raise CollectionDamaged(f"{where} holds {len(documents)} documents / {len(chunks)} chunks, its manifest says "
                                    f"{manifest.documents} / {manifest.chunks}; {REPAIR}")
        return cls(directory, manifest, documents, chunks)

    @cached_property
    def by_id(self) -> dict[str, DocumentEntry]:
        return {d.id: d for d in self.documents}

    @cached_property
    def chunks_of(self) -> dict[str, list[Chunk]]:
        out: dict[str, list[Chunk]] = {}
        for chunk in self.chunks:
            out.setdefault(chunk.doc_id, []).append(chunk)
        return out

    @cached_property
    def corpus(self) -> Corpus:
        return corpus_of(self.chunks)

    @cached_property
    def vectors(self):
        """The chunks' precomputed vectors (memory-mapped float32, a row per chunk), None without them."""
        if VECTORS_FILE not in self.manifest.files:
            return None
        import numpy as np

        return np.load(self.directory / VECTORS_FILE, mmap_mode="r")

    @property
    def vectors_fingerprint(self) -> str | None:
        """The SHA-256 of `vectors.npy` (None without it): what keys a dense index built from it."""
        return self.manifest.files.get(VECTORS_FILE)


def corpus_of(chunks: Sequence[Chunk]) -> Corpus:
    """The corpus stages index: a row per chunk, with its document id and metadata."""
    return Corpus(
        [c.id for c in chunks],
        [c.title for c in chunks],
        [c.text for c in chunks],
        doc_ids=[c.doc_id for c in chunks],
        metadata=[c.metadata for c in chunks],
    )


def write_tables(directory: Path, documents: Sequence[DocumentEntry], chunks: Sequence[Chunk]) -> dict[str, str]:
    """Write the two tables (durably) into `directory`; returns their checksums for the manifest."""
    files = {}
    for name, rows in ((DOCUMENTS_FILE, documents), (CHUNKS_FILE, chunks)):
        with atomic.atomic_file(directory / name, durable=True) as fh:
            for row in rows:
                fh.write(row.model_dump_json())
                fh.write("\n")
        files[name] = sha256_file(directory / name)
    return files


def write_vectors(directory: Path, array) -> str:
    """Write the chunks' vectors (n x dim float32) as `vectors.npy`, durably; returns its checksum."""
    import numpy as np

    with atomic.atomic_file(directory / VECTORS_FILE, mode="wb", durable=True) as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))
    return sha256_file(directory / VECTORS_FILE)


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
