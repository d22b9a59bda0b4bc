"""A file on its way to becoming a document: its facts, its bytes, its text, and why it may be skipped.

Every reader goes through here, so the rules are the same for every format:

* `Unreadable(reason)` is raised by a reader for a file (or record) that gives no document; the
  walker turns it into a `Skipped` with that one-line reason. It never reaches the caller.
* `read_bytes(source)` refuses files over the size limit ("larger than 50 MB (--max-file-mb)") and
  empty ones, reads the bytes once and hashes the file with `stagegraph.hashing.sha256_file`; a file
  whose size or mtime changed in between is skipped ("changed while being read"), so a document's
  `content_hash` always belongs to the text it came with (the next update reads it again).
* `decode_text(data)`: files with a NUL byte in their first 8 KiB are binary (unless they start with
  a UTF-16/32 byte-order mark); UTF-8 (with or without BOM) is tried first, then charset-normalizer's
  best guess, preferring cp1252 (a superset of latin-1) when it is as plausible as the best guess,
  since charset-normalizer cannot tell Western European code pages apart on short texts. Line endings
  become `\\n`.
* `make_document(...)` assembles the `Document` with the file's facts as metadata: `path` relative to
  the path the walk was given (a file given on its own: its name) and `ext`; `FileFacts` is what the
  operator may ask for on top (the absolute path, the size and the modification time). A document's
  metadata is what any client that can search reads, so nothing of the server's disk is in it unless
  asked for (issue 23.5).
"""

from __future__ import annotations

import codecs
import datetime as dt
import errno
import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stagegraph.corpora.ingest.documents import Document, Section
from stagegraph.errors import InputError
from stagegraph.hashing import sha256_file

MB = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 50 * MB
BINARY_PROBE_BYTES = 8192
# How much more "chaos" (charset-normalizer's mess ratio) cp1252 may show than the best guess and still win.
WESTERN_MARGIN = 0.1
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class Unreadable(InputError):
    """A file or record gives no document; `reason` is the one line its `Skipped` will carry."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FileFacts(BaseModel):
    """What a file's document records about the file beyond `path` (relative) and `ext`: each an opt-in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: `path` is the absolute path of the file on the ingesting machine (`--absolute-paths`); default: relative to the path given
    absolute_paths: bool = False
    #: add `size` (bytes) and `mtime` (ISO-8601, UTC) (`--file-facts`); default: neither
    size_and_mtime: bool = False


NO_FILE_FACTS = FileFacts()


@dataclass(frozen=True)
class SourceFile:
    """A regular file found by the walker: where it is, the id it will have, and its `os.stat` result."""

    path: Path
    id: str
    stat: os.stat_result
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    file_facts: FileFacts = NO_FILE_FACTS

    @property
    def ext(self) -> str:
        return self.path.suffix.lower().lstrip(".")

    @property
    def label(self) -> str:
        """How messages name the file: its path as walked."""
        return str(self.path)

    @property
    def shown_path(self) -> str:
        """The file as its documents' `path` gives it: relative to the path walked (POSIX form), or absolute
        with `FileFacts.absolute_paths`."""
        return str(self.path.absolute()) if self.file_facts.absolute_paths else self.id

    def facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.shown_path, "ext": self.ext}
        if self.file_facts.size_and_mtime:
            mtime = dt.datetime.fromtimestamp(self.stat.st_mtime, tz=dt.timezone.utc)
            out.update(size=self.stat.st_size, mtime=mtime.isoformat())
        return out


def too_large_reason(max_bytes: int) -> str:
    limit = f"{max_bytes / MB:g} MB" if max_bytes >= MB else f"{max_bytes} bytes"
    return f"larger than {limit} (--max-file-mb)"


def os_error_reason(err: OSError, path: Path) -> str:
    """The skip reason for an `OSError` met while finding or reading `path`."""
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno == errno.ENOENT and path.is_symlink():
        return "broken symlink"
    return f"unreadable: {err.strerror or err}"


def read_bytes(source: SourceFile) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256; `Unreadable` when too large, empty, unreadable or changing."""
    if source.stat.st_size > source.max_bytes:
        raise Unreadable(too_large_reason(source.max_bytes))
    if source.stat.st_size == 0:
        raise Unreadable("empty")
    try:
        data = source.path.read_bytes()
        digest = sha256_file(source.path)
        after = os.stat(source.path)
    except OSError as err:
        raise Unreadable(os_error_reason(err, source.path)) from None
    if len(data) != source.stat.st_size or not _same_version(source.stat, after):
        raise Unreadable("changed while being read")
    return data, digest


def _same_version(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino) == (after.st_size, after.st_mtime_ns, after.st_ino)


def is_regular(st: os.stat_result) -> bool:
    return stat_module.S_ISREG(st.st_mode)


def check_not_binary(data: bytes) -> None:
    if b"\x00" in data[:BINARY_PROBE_BYTES] and not data.startswith(_WIDE_BOMS):
        raise Unreadable("binary file")


def decode_text(data: bytes) -> tuple[str, str]:
    """`(text, encoding)` of a text file's bytes, line endings normalised; `Unreadable` for binary or undecodable."""
    check_not_binary(data)
    if not data.startswith(_WIDE_BOMS):
        try:
            return normalize_newlines(data.decode("utf-8-sig")), "utf-8"
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise Unreadable("undecodable text")
    western = any("cp1252" in m.could_be_from_charset and m.chaos <= best.chaos + WESTERN_MARGIN for m in matches)
    if western:
        try:
            return normalize_newlines(data.decode("cp1252")), "cp1252"
        except UnicodeDecodeError:  # one of the five bytes cp1252 leaves undefined
            pass
    return normalize_newlines(str(best)), best.encoding


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


#: the most values user metadata may expand to while being read (`MetadataLimits.max_values` can be
#: raised to this); YAML aliases let a 1 KB front matter stand for billions ("billion laughs")
MAX_METADATA_VALUES = 100_000
#: nesting a reader follows (`MetadataLimits.max_depth` can be raised to 32)
MAX_METADATA_DEPTH = 64


def jsonable(value: Any, _budget: list[int] | None = None, _depth: int = 0) -> Any:
    """User metadata made JSON-safe: dates become ISO-8601 strings, tuples lists, unknown objects strings.
    `Unreadable` past `MAX_METADATA_VALUES` values or `MAX_METADATA_DEPTH` levels, before expanding them."""
    budget = _budget if _budget is not None else [MAX_METADATA_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise Unreadable(f"metadata of more than {MAX_METADATA_VALUES} values (YAML aliases expand to copies)")
    if _depth > MAX_METADATA_DEPTH:
        raise Unreadable(f"metadata nested more than {MAX_METADATA_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v, budget, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, budget, _depth + 1) for v in value]
    return str(value)


def make_document(
    source: SourceFile,
    *,
    content_hash: str,
    title: str,
    text: str,
    sections: list[Section] | None = None,
    user_metadata: dict[str, Any] | None = None,
    extra_facts: dict[str, Any] | None = None,
) -> Document:
    """A file's `Document`: user fields, then the file's facts (which win); `Unreadable("empty")` for blank text."""
    if not text.strip():
        raise Unreadable("empty")
    metadata = {**jsonable(user_metadata or {}), **source.facts(), **(extra_facts or {})}
    return Document(
        id=source.id,
        title=title.strip() or source.path.stem,
        text=text,
        metadata=metadata,
        sections=sections or [],
        content_hash=content_hash,
    )
