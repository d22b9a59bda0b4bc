"""JSON and JSONL files of records into documents, through a configurable field mapping.

`RecordFields` names the fields: `id` (BEIR's `_id` is accepted too), `title` (optional in a
record), `text`, and `metadata`, the fields to keep as user metadata (None: every field but those
three). A `.jsonl` file holds one object a line and is streamed, so it is not held to the size
limit; a `.json` file holds one object or a list of them and is read whole. Each record is its own
document: id = the record's id (integers become strings), `content_hash` = `stable_hash` of the
record (its canonical JSON: sorted keys), metadata = the user fields plus `path` (the file, as `SourceFile.shown_path` gives it) and
`line` (JSONL, 1-based) or `record` (JSON, 1-based position in the list).

Precomputed vectors (`stagegraph.corpora.vectors`): with `vector` set (`--vector-field embedding`),
that field is the record's embedding (a list of numbers made by the model named in `vector_model`,
which is required with it), carried as `Document.vector` and never kept as metadata. A record
without the field gives a document without a vector, which a collection with a vector field refuses
(every record carries one, or the collection has no vector field: no mix). A vector that is not a
flat, non-empty list of finite numbers fails the whole read with a `DataError` naming the file,
line and record id: it is a broken export to fix, not one record to pass over.

A record that cannot be a document is skipped on its own, with `source` = `path:line` (or
`path:position` for JSON): invalid JSON, not an object, no id, no text ("record without text"),
or an id seen before in the same file ("duplicate record id 'x' (first at line 3)").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stagegraph.corpora.ingest.documents import Document, Skipped
from stagegraph.corpora.ingest.sources import (
    BINARY_PROBE_BYTES,
    SourceFile,
    Unreadable,
    check_not_binary,
    decode_text,
    os_error_reason,
    read_bytes,
)
from stagegraph.corpora.types import DataError
from stagegraph.corpora.vectors import as_vector
from stagegraph.hashing import stable_hash


class RecordFields(BaseModel):
    """Which field of a JSON record is the id, the title, the text, and which become metadata (None: all others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default="id", min_length=1)
    title: str = Field(default="title", min_length=1)
    text: str = Field(default="text", min_length=1)
    metadata: list[str] | None = None
    #: the field holding a precomputed embedding (None: records carry none; the dense stage encodes)
    vector: str | None = Field(default=None, min_length=1)
    #: the model that made those embeddings: the name the dense stage's `model:` uses
    vector_model: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _vector_needs_its_model(self) -> RecordFields:
        if (self.vector is None) != (self.vector_model is None):
            raise ValueError(
                "a vector field needs the model that made the vectors, and only with one: give both "
                "--vector-field and --vector-model (vector= and vector_model=)"
            )
        return self

    @property
    def id_keys(self) -> tuple[str, ...]:
        return (self.id,) if self.id == "_id" else (self.id, "_id")

    def user_metadata(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.metadata is not None:
            return {key: record[key] for key in self.metadata if key in record}
        taken = {*self.id_keys, self.title, self.text, *([self.vector] if self.vector else [])}
        return {key: value for key, value in record.items() if key not in taken}


def read_jsonl_records(source: SourceFile, fields: RecordFields) -> Iterator[Document | Skipped]:
    if source.stat.st_size == 0:
        raise Unreadable("empty")
    try:
        with open(source.path, "rb") as handle:
            check_not_binary(handle.read(BINARY_PROBE_BYTES))
            handle.seek(0)
            lines = ((number, raw) for number, raw in enumerate(handle, start=1) if raw.strip())
            yield from _documents(source, fields, _parsed_lines(lines), position_word="line")
    except OSError as err:
        raise Unreadable(os_error_reason(err, source.path)) from None


def read_json_records(source: SourceFile, fields: RecordFields) -> Iterator[Document | Skipped]:
    data, _ = read_bytes(source)
    text, _ = decode_text(data)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise Unreadable(f"invalid JSON ({err.msg} at line {err.lineno})") from None
    records = payload if isinstance(payload, list) else [payload]
    yield from _documents(source, fields, enumerate(records, start=1), position_word="record")


def _parsed_lines(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    for number, raw in lines:
        try:
            yield number, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            yield number, _Invalid(f"invalid JSON ({getattr(err, 'msg', None) or err.reason})")


class _Invalid:
    """A line that did not parse, carried to `_documents` so that it is skipped in order."""

    def __init__(self, reason: str):
        self.reason = reason


def _documents(
    source: SourceFile, fields: RecordFields, records: Iterable[tuple[int, Any]], *, position_word: str
) -> Iterator[Document | Skipped]:
    first_position: dict[str, int] = {}
    for position, record in records:
        where = f"{source.label}:{position}"
        try:
            document = record_document(record, fields, source=source, position=position, position_word=position_word)
        except Unreadable as skip:
            yield Skipped(source=where, reason=skip.reason)
            continue
        if document.id in first_position:
            first = first_position[document.id]
            reason = f"duplicate record id {document.id!r} (first at {position_word} {first})"
            yield Skipped(source=where, reason=reason)
            continue
        first_position[document.id] = position
        yield document


def record_document(
    record: Any, fields: RecordFields, *, source: SourceFile, position: int, position_word: str
) -> Document:
    """One record as a `Document`; `Unreadable` with the reason when it cannot be one."""
    if isinstance(record, _Invalid):
        raise Unreadable(record.reason)
    if not isinstance(record, dict):
        raise Unreadable(f"not a JSON object but {type(record).__name__}")
    record_id = _record_id(record, fields)
    text = record.get(fields.text)
    if text is None or (isinstance(text, str) and not text.strip()):
        raise Unreadable("record without text")
    if not isinstance(text, str):
        raise Unreadable(f"record text ({fields.text!r}) is {type(text).__name__}, not a string")
    title = record.get(fields.title)
    metadata = {**fields.user_metadata(record), "path": source.shown_path, position_word: position}
    vector = None
    if fields.vector is not None and record.get(fields.vector) is not None:
        try:
            vector = as_vector(record[fields.vector]).tobytes()
        except ValueError as exc:
            raise DataError(
                f"{source.label}:{position}: record {record_id!r}: the vector field {fields.vector!r} {exc}; "
                f"write the embedding {fields.vector_model!r} made as a JSON list of numbers"
            ) from None
    return Document(
        id=record_id,
        title=title.strip() if isinstance(title, str) else "",
        text=text,
        metadata=metadata,
        content_hash=stable_hash(record),
        vector=vector,
    )


def _record_id(record: dict[str, Any], fields: RecordFields) -> str:
    for key in fields.id_keys:
        value = record.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise Unreadable(f"record id ({key!r}) is {type(value).__name__}, not a string or an integer")
        return str(value)
    raise Unreadable(f"record without id (field {fields.id!r})")
