"""A user's own files into documents, and documents into chunks: the input side of a collection.

* `read_paths(paths)` walks files and folders and yields a `Document` (or a `Skipped` with its
  reason) per file or JSON record: text, Markdown, reStructuredText, HTML, PDF, JSON and JSONL
  (`walk`, `readers` and the per-format modules `markup`, `html`, `pdf`, `records`);
* `Chunker(ChunkerConfig(...), tokenizer).chunk(document)` cuts a document into `Chunk`s of at most
  `max_tokens` tokens of the dense model's tokenizer (`chunking`).
"""

from stagegraph.corpora.ingest.chunking import Chunk, Chunker, ChunkerConfig
from stagegraph.corpora.ingest.documents import Document, Section, Skipped
from stagegraph.corpora.ingest.readers import SUPPORTED_EXTENSIONS, read_file
from stagegraph.corpora.ingest.records import RecordFields
from stagegraph.corpora.ingest.sources import DEFAULT_MAX_FILE_BYTES, FileFacts
from stagegraph.corpora.ingest.walk import IngestSummary, read_paths

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "Chunker",
    "ChunkerConfig",
    "Document",
    "FileFacts",
    "IngestSummary",
    "RecordFields",
    "Section",
    "Skipped",
    "read_file",
    "read_paths",
]
