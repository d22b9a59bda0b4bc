"""The records ingestion hands on: a `Document` read from a user's file (or JSON record), the `Section`s
that mark where its headings and pages begin, and a `Skipped` note for what could not be read.

A document's `text` is what the reader kept (Markdown source without its front matter, the visible
text of a page, the text of a PDF's pages...), with line endings normalised to `\\n`. Every offset
(`Section.start`, and the chunks' `start`/`end` later on) is a *character* offset into that text.
`content_hash` identifies the input, not the output: the SHA-256 of the file's bytes, or of the
record's canonical JSON, so an incremental update can skip what did not change without parsing it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stagegraph.corpora.vectors import as_vector


class Section(BaseModel):
    """Where a heading (`title`) or a PDF page (`page`, 1-based) begins: a character offset into the text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=0)
    title: str | None = None
    page: int | None = Field(default=None, ge=1)


class Document(BaseModel):
    """One document: a file (id = its path relative to the root given, POSIX form) or a JSON record (id = its id).

    `metadata` always holds `path` (the file relative to the path walked; absolute only with
    `FileFacts.absolute_paths`), and for files `ext` (lower case, no dot), plus `size` (bytes) and
    `mtime` (ISO-8601, UTC) only with `FileFacts.size_and_mtime`; user fields (Markdown front matter, JSON record
    fields) come on top, except that these facts of the file win over a user field of the same name.
    `sections` are sorted by `start`. `vector` is a precomputed embedding of the document (a record's
    `--vector-field`), kept as float32 bytes (a list of numbers is accepted and converted): a million
    384-wide vectors take 1.5 GB so, not the 12 GB of Python floats; None when it carries none.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    title: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    sections: list[Section] = Field(default_factory=list)
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    vector: bytes | None = Field(default=None, repr=False)

    @field_validator("vector", mode="before")
    @classmethod
    def _float32_bytes(cls, value: object) -> bytes | None:
        if value is None:
            return None
        try:
            return as_vector(value).tobytes()
        except ValueError as exc:
            raise ValueError(f"the vector {exc}") from None

    def vector_array(self):
        """The vector as a float32 numpy row (None without one)."""
        import numpy as np

        return None if self.vector is None else np.frombuffer(self.vector, dtype=np.float32)


class Skipped(BaseModel):
    """Something that gave no document: `source` is a path (or `path:line` for a record), `reason` one plain line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"
