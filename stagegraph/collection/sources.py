"""Where a collection's documents came from: each document records one source.

`ingest --sync` deletes only documents of the sources it reads, so a source must name the same
thing every time it is used. A source is a `key` (what each document records) and a `label`
(what people read, kept once per generation in its manifest):

* a folder or file ingest: its root. The key is `path:` and 16 hex digits of the SHA-256 of the
  resolved path, the label the resolved path; the same folder given as a relative path, an absolute
  path or through a symbolic link is one source;
* the Python API: `python`, or a name the caller gives (`Collection.upsert(docs, source="crawler")`);
* HTTP (`PUT /v1/documents`): `http`;
* `unknown`: documents written before sources were recorded (generation format 1).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from stagegraph.collection.layout import CollectionError

UNKNOWN_KEY = "unknown"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Source(BaseModel):
    """One source: `key` is what documents record, `label` what `collection info` and `ingest` print."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    label: str


PYTHON = Source(key="python", label="python")
HTTP = Source(key="http", label="http")
UNKNOWN = Source(key=UNKNOWN_KEY, label="unknown (written before sources were recorded)")


def path_source(path: str | Path) -> Source:
    """The source of an ingest root: one per resolved path (relative, absolute and linked forms agree)."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Source(key=f"path:{digest}", label=str(resolved))


def named_source(name: str | None) -> Source:
    """The source of a Python API write: `python`, or the caller's own name for it."""
    if name is None or name == PYTHON.key:
        return PYTHON
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CollectionError(
            f"source {name!r} is not a name; give up to 64 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit), e.g. source=\"crawler\""
        )
    if name == UNKNOWN_KEY:
        raise CollectionError(
            f"source {name!r} is kept for documents written before sources were recorded; give another name"
        )
    return Source(key=name, label=name)
