"""What one document may carry, checked on every write path: its id, its text and title, its metadata.

One document must never break, slow or reveal another's (issue 23), so everything a write brings is
checked before anything is written: the Python API (`Writer.upsert` through `as_document`), `stagegraph
ingest` (a file or record that fails is skipped with one warning line, the rest is ingested) and
`PUT /v1/documents` (a 422 `invalid_document` naming the document and the field; nothing of the
request is written). The rules, and why:

* **ids** are NFC-normalised (`café` typed composed or decomposed is one document) and refused when
  empty, longer than `max_id_chars`, holding a lone surrogate or any control character (NUL, tab,
  newline...), or a `.` or `..` path segment (a URL client folds those away, so such an id could not
  be fetched or deleted by its name);
* **text and title** are *cleaned*, not refused: each lone surrogate becomes U+FFFD and each control
  character other than tab, newline and carriage return a space, one character for one, so offsets
  into the text (sections, chunks) stay valid. A PDF's form feeds are no reason to lose the document;
* **metadata** is *refused* when it breaks a rule (a field is something filters compare, so a silently
  changed value would be a silently wrong filter):
  - keys are non-empty strings of at most `max_key_chars`, without control characters or lone
    surrogates, and do not start with `$` (the filter language's operators do);
  - values are strings (at most `max_value_chars`, no lone surrogate, no control character but tab,
    newline and carriage return), booleans, null, dates (Python API), lists and objects;
  - **numbers** are finite (no NaN or Infinity) and integers lie within +-(2**53 - 1), the range a
    float64 holds exactly: the filter index compares numbers as float64, so a larger integer could not
    be compared (a 400-digit integer once made every filtered search fail) or two different ones would
    compare equal. Such values are refused rather than stored as text, because text would make
    `{"$gt": ...}` on the field an error for every other document; store long ids as strings;
  - at most `max_depth` levels of nesting (`{"a": 1}` is one level, `{"a": {"b": [1]}}` three),
    `max_fields` top-level fields, `max_values` values in all (every key, list element and scalar at
    any depth), `max_metadata_bytes` bytes as JSON;
  - a collection holds at most `max_collection_fields` distinct top-level fields (`FieldBudget`; checked
    by ingest and by the server against the current generation).

`MetadataLimits` holds the limits with their defaults (the table in docs/collections.md);
`MetadataLimits.ceiling()` is the most any may be raised to, which `as_document` applies to a
`Document` built elsewhere (ingest built it and checked it with its own limits).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.errors import InputError

#: the largest integer a float64 holds exactly (JavaScript's Number.MAX_SAFE_INTEGER)
MAX_SAFE_INTEGER = 2**53 - 1
#: in text, titles, metadata strings and queries: C0 controls but tab, newline, CR; DEL; C1 controls
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SURROGATE = "\ud800-\udfff"
_BAD_IN_TEXT = re.compile(f"[{_CONTROL}{_SURROGATE}]")
_SURROGATES = re.compile(f"[{_SURROGATE}]")
_CONTROLS = re.compile(f"[{_CONTROL}]")
#: in ids and metadata keys: every control character (tab and newline too) and lone surrogates
_BAD_IN_NAME = re.compile(f"[\x00-\x1f\x7f-\x9f{_SURROGATE}]")


class MetadataLimits(BaseModel):
    """How much metadata one document, and one collection, may carry (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_depth: int = Field(8, ge=1, le=32, description="levels of nesting of objects and lists")
    max_fields: int = Field(256, ge=1, le=10_000, description="top-level fields of one document")
    max_values: int = Field(4096, ge=1, le=100_000, description="keys, list elements and scalars at any depth")
    max_key_chars: int = Field(256, ge=1, le=4096, description="characters of one key")
    max_value_chars: int = Field(8192, ge=1, le=1_048_576, description="characters of one string value")
    max_metadata_bytes: int = Field(65_536, ge=256, le=16_777_216, description="one document's metadata as JSON")
    max_collection_fields: int = Field(1024, ge=1, le=100_000, description="distinct top-level fields of a collection")
    max_id_chars: int = Field(1024, ge=1, le=65_536, description="characters of a document id")

    @classmethod
    def ceiling(cls) -> MetadataLimits:
        """Every limit at the most it may be configured to."""
        return cls(**{name: _le(info) for name, info in cls.model_fields.items()})


def _le(info: Any) -> int:
    return next(m.le for m in info.metadata if getattr(m, "le", None) is not None)


class DocumentError(InputError):
    """A document a write refuses: `doc_id` (as given), `field` ("id", "metadata.tags[3]") and the reason."""

    def __init__(self, doc_id: Any, field: str, reason: str):
        self.doc_id, self.field, self.reason = doc_id, field, reason
        super().__init__(f"document {_shown(doc_id)}: {field}: {reason}")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _describe(char: str) -> str:
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"{kind} U+{ord(char):04X}"


def digits(value: int) -> int:
    """How many decimal digits `value` has (str() refuses integers of over 4,300 digits)."""
    if value.bit_length() < 13_000:  # under 3,900 digits: exact
        return len(str(abs(value)))
    return math.floor(math.log10(abs(value))) + 1


# -- text -------------------------------------------------------------------------------------------
def text_problem(text: str) -> str | None:
    """Why `text` (a query, a metadata string) cannot be taken: its first lone surrogate or control
    character other than tab, newline and CR, with its position; None when it is fine."""
    found = _BAD_IN_TEXT.search(text)
    return None if found is None else f"{_describe(found.group())} at character {found.start()}"


def clean_text(text: str) -> str:
    """Lone surrogates as U+FFFD, control characters other than tab, newline and CR as a space; one
    character for one, so every offset into the text stays valid."""
    if _BAD_IN_TEXT.search(text) is None:
        return text
    return _CONTROLS.sub(" ", _SURROGATES.sub("\ufffd", text))


def check_query(query: str) -> None:
    """An `InputError` for a query holding a lone surrogate or a control character (the message says which)."""
    problem = text_problem(query)
    if problem is not None:
        raise InputError(f"the query holds {problem}; send text without them")


def normalize_id(doc_id: Any, limits: MetadataLimits | None = None) -> str:
    """The id in NFC; a `DocumentError` for one that cannot name a document (see the module docstring)."""
    limits = limits or _DEFAULT
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise DocumentError(doc_id, "id", "the id is empty or not a string; give a non-empty string")
    found = _BAD_IN_NAME.search(doc_id)
    if found is not None:
        raise DocumentError(doc_id, "id", f"the id holds {_describe(found.group())} at character {found.start()}; "
                            "ids are names: printable characters only")
    normal = unicodedata.normalize("NFC", doc_id)
    if len(normal) > limits.max_id_chars:
        raise DocumentError(doc_id[:40], "id", f"the id has {len(normal)} characters; the limit is {limits.max_id_chars}")
    if any(part in (".", "..") for part in normal.split("/")):
        raise DocumentError(doc_id, "id", "the id has a '.' or '..' segment, which URLs fold away; name it without")
    return normal


# -- metadata ---------------------------------------------------------------------------------------
def check_metadata(metadata: Any, limits: MetadataLimits | None = None, *, doc_id: Any = "?") -> dict[str, Any]:
    """`metadata` itself when it keeps every rule (see the module docstring); a `DocumentError` naming
    the document and the first field that breaks one otherwise. Never recurses past `max_depth`."""
    limits = limits or _DEFAULT
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise DocumentError(doc_id, "metadata", f"metadata is an object of fields, not {type(metadata).__name__}")
    if len(metadata) > limits.max_fields:
        raise DocumentError(doc_id, "metadata", f"{len(metadata)} fields; the limit is {limits.max_fields} per document")
    budget = [limits.max_values]
    for key, value in metadata.items():
        _check_key(key, "metadata", limits, doc_id)
        _check_value(value, f"metadata.{key}", 1, limits, doc_id, budget)
    try:
        size = len(json.dumps(metadata, default=str, ensure_ascii=False).encode("utf-8"))
    except (ValueError, TypeError) as exc:  # pragma: no cover - every value was checked above
        raise DocumentError(doc_id, "metadata", f"not JSON: {exc}") from None
    if size > limits.max_metadata_bytes:
        raise DocumentError(doc_id, "metadata", f"{size} bytes as JSON; the limit is {limits.max_metadata_bytes} per document")
    return dict(metadata)


def _check_key(key: Any, where: str, limits: MetadataLimits, doc_id: Any) -> None:
    if not isinstance(key, str) or not key:
        raise DocumentError(doc_id, where, f"a key is {_shown(key)}; keys are non-empty strings")
    found = _BAD_IN_NAME.search(key)
    if found is not None:
        raise DocumentError(doc_id, where, f"a key holds {_describe(found.group())}; keys are printable names")
    shown = f"{where}.{key[:40]}"
    if len(key) > limits.max_key_chars:
        raise DocumentError(doc_id, shown, f"the key has {len(key)} characters; the limit is {limits.max_key_chars}")
    if key.startswith("$"):
        raise DocumentError(doc_id, shown, "keys may not start with '$', which marks the filter language's operators")


def _check_value(value: Any, where: str, depth: int, limits: MetadataLimits, doc_id: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise DocumentError(doc_id, where, f"more than {limits.max_values} values in all (keys, list elements and "
                            "scalars at any depth); the limit is per document")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise DocumentError(doc_id, where, f"an integer of {digits(value)} digits is out of range: filters compare "
                                f"integers within +-{MAX_SAFE_INTEGER} (2**53 - 1); store it as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(doc_id, where, f"{value} is not a number filters can compare; give a finite number")
        return
    if isinstance(value, str):
        if len(value) > limits.max_value_chars:
            raise DocumentError(doc_id, where, f"the value has {len(value)} characters; the limit is {limits.max_value_chars}")
        problem = text_problem(value)
        if problem is not None:
            raise DocumentError(doc_id, where, f"the value holds {problem}")
        return
    if isinstance(value, (_dt.date, _dt.time)):
        return
    if isinstance(value, (list, tuple, Mapping)):
        if depth >= limits.max_depth:
            raise DocumentError(doc_id, where, f"nested more than {limits.max_depth} levels deep")
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_key(key, where, limits, doc_id)
                budget[0] -= 1
                _check_value(item, f"{where}.{key}", depth + 1, limits, doc_id, budget)
        else:
            for i, item in enumerate(value):
                _check_value(item, f"{where}[{i}]", depth + 1, limits, doc_id, budget)
        return
    raise DocumentError(doc_id, where, f"a {type(value).__name__} is not a metadata value; give a string, number, "
                        "true/false, null, list or object")


class FieldBudget:
    """The distinct top-level metadata fields a collection may hold (`max_collection_fields`): the
    fields it has, plus those a write brings; `admit` refuses the document that would pass the limit."""

    def __init__(self, existing: Iterable[str], limits: MetadataLimits | None = None):
        self.limit = (limits or _DEFAULT).max_collection_fields
        self.fields = set(existing)

    def admit(self, doc_id: Any, metadata: Mapping[str, Any]) -> None:
        new = [k for k in metadata if k not in self.fields]
        if len(self.fields) + len(new) > self.limit:
            raise DocumentError(doc_id, f"metadata.{str(new[0])[:40]}",
                                f"the collection would hold more than {self.limit} distinct metadata fields "
                                "(max_collection_fields); reuse existing field names, or nest values under one field")
        self.fields.update(new)


# -- whole documents -------------------------------------------------------------------------------
def check_record(record: dict[str, Any], limits: MetadataLimits | None = None) -> dict[str, Any]:
    """A record `{id, text, title?, metadata?, ...}` with its id normalised, its text and title cleaned
    and its metadata checked (other fields as given); a `DocumentError` for the first rule it breaks."""
    limits = limits or _DEFAULT
    doc_id = normalize_id(record.get("id"), limits)
    out = {**record, "id": doc_id}
    for name in ("text", "title"):
        if isinstance(record.get(name), str):
            out[name] = clean_text(record[name])
    if record.get("metadata") is not None:
        out["metadata"] = check_metadata(record["metadata"], limits, doc_id=doc_id)
    return out


def check_document(document: Any, limits: MetadataLimits | None = None) -> Any:
    """`document` (a `stagegraph.corpora.ingest.Document`) as `check_record` would have it: the same object when nothing changes."""
    limits = limits or _DEFAULT
    doc_id = normalize_id(document.id, limits)
    check_metadata(document.metadata, limits, doc_id=doc_id)
    changes = {name: new for name, new in (("id", doc_id), ("text", clean_text(document.text)),
                                           ("title", clean_text(document.title)))
               if new != getattr(document, name)}
    return document.model_copy(update=changes) if changes else document


_DEFAULT = MetadataLimits()
