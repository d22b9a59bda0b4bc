"""Which reader reads which file, by extension, and the one place a reader's refusal becomes a `Skipped`.

| extension            | reader (module)                        | documents per file |
|----------------------|----------------------------------------|--------------------|
| txt                  | `read_plain_text` (markup)             | one                |
| md, markdown         | `read_markdown` (markup)               | one                |
| rst                  | `read_rst` (markup)                    | one                |
| html, htm            | `read_html` (html)                     | one                |
| pdf                  | `read_pdf` (pdf)                       | one                |
| json, jsonl          | `read_json_records`, `read_jsonl_records` (records) | one per record |

`read_file(source, fields)` yields the file's documents and skips; any other extension is skipped
as "unsupported extension .xyz".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from stagegraph.corpora.ingest.documents import Document, Skipped
from stagegraph.corpora.ingest.html import read_html
from stagegraph.corpora.ingest.markup import read_markdown, read_plain_text, read_rst
from stagegraph.corpora.ingest.pdf import read_pdf
from stagegraph.corpora.ingest.records import RecordFields, read_json_records, read_jsonl_records
from stagegraph.corpora.ingest.sources import SourceFile, Unreadable

DOCUMENT_READERS: dict[str, Callable[[SourceFile], Document]] = {
    "txt": read_plain_text,
    "md": read_markdown,
    "markdown": read_markdown,
    "rst": read_rst,
    "html": read_html,
    "htm": read_html,
    "pdf": read_pdf,
}
RECORD_READERS: dict[str, Callable[[SourceFile, RecordFields], Iterator[Document | Skipped]]] = {
    "json": read_json_records,
    "jsonl": read_jsonl_records,
}
SUPPORTED_EXTENSIONS = frozenset(DOCUMENT_READERS) | frozenset(RECORD_READERS)


def read_file(source: SourceFile, fields: RecordFields | None = None) -> Iterator[Document | Skipped]:
    """The documents of one file (one, or one per record), and a `Skipped` for whatever could not be read."""
    if source.ext not in SUPPORTED_EXTENSIONS:
        reason = f"unsupported extension .{source.ext}" if source.ext else "no file extension"
        yield Skipped(source=source.label, reason=reason)
        return
    try:
        if source.ext in DOCUMENT_READERS:
            yield DOCUMENT_READERS[source.ext](source)
            return
        produced = False
        for item in RECORD_READERS[source.ext](source, fields or RecordFields()):
            produced = True
            yield item
        if not produced:
            yield Skipped(source=source.label, reason="empty")
    except Unreadable as skip:
        yield Skipped(source=source.label, reason=skip.reason)
