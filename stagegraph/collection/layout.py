"""What a collection directory holds, and the records that describe it.

```
COLLECTION/
  collection.json            CollectionSettings: the pipeline config, the chunker, record fields (fixed at creation)
  CURRENT                    the published generation's number: replaced in one atomic, fsync'ed rename
  segments/<id>/             an immutable segment: chunks and documents in Arrow IPC files, memory-mapped,
                             its precomputed vectors, and the deletion files of later generations
                             (stagegraph.collection.segments)
  generations/00000007/      one generation, immutable once published:
      manifest.json          GenerationManifest: the segments it is made of, each with its deletion file,
                             counts, documents per source, the artefacts it uses, model identities
  artefacts/<kind>/<key>/    the indexes stages built per segment (BM25 postings, FAISS indexes), each with
                             its own manifest, shared by every generation that names the segment
  cache.sqlite               per-text work (embeddings, BM25 terms) by text hash: only new text is encoded
  readers/<pid>-<id>.lease   the generation each open reader uses, so the writer never removes it
  writer.lock                one writer at a time (a file lock)
```

A commit writes one new segment (its new and changed documents), a deletion file for each older
segment it deletes rows of, the indexes of the new segment only, then the generation's manifest,
renamed into place and published by replacing `CURRENT`. A crash at any point leaves `CURRENT`
naming an intact generation; the debris is removed by the next writer. Generations of format 1 and
2 (whole tables per generation, written before segments) are converted by `stagegraph collection
compact DIR` or by the next write.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.corpora.ingest import ChunkerConfig, RecordFields
from stagegraph.errors import InputError, StageError

FORMAT_VERSION = 1  # collection.json
# generations: 2 records each document's source (`DocumentEntry.source`, `GenerationManifest.sources`);
# a format-1 generation still reads, its documents of source `unknown`
# 3: a generation is a list of segments (`SegmentRef`); 1 and 2 are converted by the next write or `compact`
GENERATION_FORMAT_VERSION = 3
SETTINGS_FILE = "collection.json"
CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
DOCUMENTS_FILE = "documents.jsonl"
CHUNKS_FILE = "chunks.jsonl"
CACHE_FILE = "cache.sqlite"
LOCK_FILE = "writer.lock"


class CollectionError(InputError):
    """A collection directory is missing, damaged or used the wrong way; the message names the fix."""


class CollectionDamaged(StageError):
    """A collection's published state cannot be read; the message names the command that repairs it."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class CollectionSettings(BaseModel):
    """How a collection is built; fixed when it is created (changing it means a rebuild)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    created: str = Field(default_factory=now)
    pipeline: dict[str, Any]
    chunker: ChunkerConfig = ChunkerConfig()
    chunk_tokenizer: str = Field(description="the model whose tokenizer measures chunks (the dense model's)")
    records: RecordFields = RecordFields()

    def build_identity(self) -> dict[str, Any]:
        """The settings that decide the chunks: a different one needs a rebuild, never a mix."""
        return {"chunker": self.chunker.model_dump(mode="json"), "chunk_tokenizer": self.chunk_tokenizer,
                "records": self.records.model_dump(mode="json")}


class DocumentEntry(BaseModel):
    """A document of a generation: what an update compares (`content_hash`), what hits show, and the
    `source` it came from (the key of a `stagegraph.collection.sources.Source`: what `ingest --sync` may delete)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    content_hash: str
    chunks: int
    source: str = "unknown"  # absent in format-1 generations, written before sources were recorded


class SegmentRef(BaseModel):
    """A segment as one generation uses it: its id and the rows it has deleted there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    documents: int  # rows of the segment, deleted ones included
    chunks: int
    deleted: str | None = None  # the deletion file in the segment's directory (None: nothing deleted)
    deleted_documents: int = 0
    deleted_chunks: int = 0

    @property
    def live_documents(self) -> int:
        return self.documents - self.deleted_documents

    @property
    def live_chunks(self) -> int:
        return self.chunks - self.deleted_chunks


class GenerationManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = GENERATION_FORMAT_VERSION  # 1 when read from a generation written before sources
    generation: int
    parent: int | None = None
    created: str = Field(default_factory=now)
    documents: int
    chunks: int
    tokens: int = 0
    corpus_fingerprint: str
    files: dict[str, str] = Field(default_factory=dict)  # table file -> sha256
    artefacts: list[str] = Field(default_factory=list)  # directories under artefacts/, relative
    stages: dict[str, str] = Field(default_factory=dict)  # stage name -> fingerprint (model identities included)
    changes: dict[str, int] = Field(default_factory=dict)  # added, updated, moved, deleted, unchanged documents
    sources: dict[str, str] = Field(default_factory=dict)  # source key -> label, for the sources its documents have
    segments: list[SegmentRef] | None = None  # format 3; None: a format-1/2 generation (tables in files)
    source_counts: dict[str, int] = Field(default_factory=dict)  # source key -> live documents (format 3)
    merges: list[str] = Field(default_factory=list)  # what the writer merged into this generation, for the log


class Layout:
    """The paths of one collection directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def current(self) -> Path:
        return self.root / CURRENT_FILE

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    def generation(self, number: int) -> Path:
        return self.generations / f"{number:08d}"

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    def segment(self, segment_id: str) -> Path:
        return self.segments / segment_id

    @property
    def artefacts(self) -> Path:
        return self.root / "artefacts"

    @property
    def cache(self) -> Path:
        return self.root / CACHE_FILE

    @property
    def readers(self) -> Path:
        return self.root / "readers"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def exists(self) -> bool:
        return self.settings.is_file()
