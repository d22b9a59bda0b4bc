"""Metadata filters: one expression, checked against a corpus' metadata, compiled to a row mask.

    {"ext": "md", "year": {"$gte": 2024}, "tags": {"$in": ["gpu", "cuda"]}}

* a bare value is equality; `$ne`, `$in`, `$nin`, `$gt`, `$gte`, `$lt`, `$lte`, `$exists`;
  `$and` / `$or` take lists of expressions; several fields in one mapping are and-ed;
* on a list-valued field (`tags: [gpu, llama]`) equality means "contains", `$in` "shares one",
  `$nin` "shares none";
* `$gt/$gte/$lt/$lte` fit numbers and dates (ISO-8601 strings or dates, compared as dates); on
  text they are an error, as are unknown fields (the message lists the fields that exist) and
  values of the wrong kind;
* a document without the field never matches a comparison, `$in` or equality, and matches `$ne`
  and `$nin` (the Mongo reading); `{"$exists": false}` selects exactly those.

`MetadataIndex.of(corpus)` builds a columnar view of the metadata once (numbers and dates as
float arrays, text as integer codes, list values as row sets), so compiling a filter is a few numpy
operations over the rows, not a Python loop per query. `parse_cli(["ext=md", "year>=2024",
"tags in gpu,cuda"])` reads the command line's short form; JSON is accepted there too.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stagegraph.errors import InputError
from stagegraph.hashing import stable_hash

COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS)


class FilterError(InputError):
    """A filter that does not fit the metadata; the message names the field and what exists."""


def _as_date(value: Any) -> float | None:
    """Days since the epoch for a date, a datetime or an ISO-8601 string; None otherwise."""
    if isinstance(value, _dt.datetime):
        return value.timestamp() / 86400.0
    if isinstance(value, _dt.date):
        return float(value.toordinal() - 719163)
    if isinstance(value, str) and len(value) >= 8 and value[:4].isdigit() and "-" in value:
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None and len(value) <= 10:
            return float(parsed.date().toordinal() - 719163)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed.timestamp() / 86400.0
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Column:
    """One metadata field across the rows: its kind and its values in a form numpy can compare."""

    name: str
    kind: str  # number | date | bool | text | list | mixed
    present: np.ndarray  # bool per row
    numbers: np.ndarray | None = None  # float per row (number, date, bool), NaN where absent
    codes: np.ndarray | None = None  # int per row into `vocab` (text, mixed), -1 where absent
    vocab: dict[Any, int] = field(default_factory=dict)
    members: dict[Any, np.ndarray] = field(default_factory=dict)  # list: element -> rows holding it

    def describe(self) -> str:
        return f"{self.name} ({self.kind})"


def _kind(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(_is_number(v) for v in values):
        return "number"
    if all(isinstance(v, (list, tuple)) for v in values):
        return "list"
    if all(isinstance(v, (str, _dt.date)) for v in values) and all(_as_date(v) is not None for v in values):
        return "date"
    if all(isinstance(v, str) for v in values):
        return "text"
    return "mixed"


def _key(value: Any) -> Any:
    """A hashable, type-aware key for equality (1 and "1" differ; True and 1 differ)."""
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True, default=str))
    return (type(value).__name__ if not _is_number(value) else "number", value)


class MetadataIndex:
    """The metadata of every row of a corpus as columns (see the module docstring)."""

    def __init__(self, metadata: Sequence[Mapping[str, Any]]):
        self.n = len(metadata)
        names = sorted({k for m in metadata for k in m})
        self.columns: dict[str, Column] = {name: self._column(name, metadata) for name in names}

    @classmethod
    def of(cls, corpus: Any) -> MetadataIndex:
        """The index of `corpus` (built once per corpus object)."""
        cached = getattr(corpus, "_metadata_index", None)
        if cached is None:
            cached = cls(corpus.metadata if corpus.metadata is not None else [{}] * len(corpus))
            corpus._metadata_index = cached
        return cached

    def _column(self, name: str, metadata: Sequence[Mapping[str, Any]]) -> Column:
        raw = [m.get(name) for m in metadata]
        present = np.array([v is not None for v in raw], dtype=bool)
        seen = [v for v in raw if v is not None]
        kind = _kind(seen) if seen else "mixed"
        col = Column(name, kind, present)
        if kind in ("number", "bool"):
            col.numbers = np.array([float(v) if v is not None else np.nan for v in raw], dtype=np.float64)
        elif kind == "date":
            col.numbers = np.array([_as_date(v) if v is not None else np.nan for v in raw], dtype=np.float64)
        elif kind == "list":
            rows: dict[Any, list[int]] = {}
            for i, v in enumerate(raw):
                for element in v or ():
                    rows.setdefault(_key(element), []).append(i)
            col.members = {k: np.array(r, dtype=np.int64) for k, r in rows.items()}
        else:
            col.codes = np.full(self.n, -1, dtype=np.int64)
            for i, v in enumerate(raw):
                if v is not None:
                    col.codes[i] = col.vocab.setdefault(_key(v), len(col.vocab))
        return col

    def fields(self) -> str:
        return ", ".join(c.describe() for c in self.columns.values()) or "none (the documents carry no metadata)"

    # -- compiling ------------------------------------------------------------------------------
    def mask(self, expression: Mapping[str, Any] | None) -> np.ndarray:
        """The rows `expression` allows (all rows for None or {})."""
        if not expression:
            return np.ones(self.n, dtype=bool)
        if not isinstance(expression, Mapping):
            raise FilterError(f"a filter is a mapping such as {{'ext': 'md'}}, not {type(expression).__name__}")
        out = np.ones(self.n, dtype=bool)
        for name, condition in expression.items():
            if name == "$and":
                for part in self._parts(name, condition):
                    out &= self.mask(part)
            elif name == "$or":
                any_of = np.zeros(self.n, dtype=bool)
                for part in self._parts(name, condition):
                    any_of |= self.mask(part)
                out &= any_of
            elif name.startswith("$"):
                raise FilterError(f"unknown operator {name!r} at the top of a filter; use a field name, $and or $or")
            else:
                out &= self._field(name, condition)
        return out

    @staticmethod
    def _parts(name: str, condition: Any) -> list[Mapping[str, Any]]:
        if not isinstance(condition, list) or not condition or not all(isinstance(c, Mapping) for c in condition):
            raise FilterError(f"{name} takes a non-empty list of filters, e.g. {{'{name}': [{{'ext': 'md'}}, {{'year': 2024}}]}}")
        return condition

    def _field(self, name: str, condition: Any) -> np.ndarray:
        col = self.columns.get(name)
        operators = condition if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition) else {"$eq": condition}
        if col is None:
            if set(operators) == {"$exists"}:
                return np.full(self.n, not bool(operators["$exists"]), dtype=bool)
            raise FilterError(f"unknown filter field {name!r}; the documents' fields are: {self.fields()}")
        out = np.ones(self.n, dtype=bool)
        for op, value in operators.items():
            if op not in OPERATORS:
                raise FilterError(f"unknown operator {op!r} on field {name!r}; use one of {', '.join(OPERATORS)}")
            out &= self._apply(col, op, value)
        return out

    def _apply(self, col: Column, op: str, value: Any) -> np.ndarray:
        if op == "$exists":
            if not isinstance(value, bool):
                raise FilterError(f"$exists on {col.name!r} takes true or false, not {value!r}")
            return col.present.copy() if value else ~col.present
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise FilterError(f"{op} on {col.name!r} takes a list of values, e.g. {{'{op}': ['a', 'b']}}")
            hit = np.zeros(self.n, dtype=bool)
            for v in value:
                hit |= self._equal(col, v)
            return hit if op == "$in" else ~hit
        if op == "$eq":
            return self._equal(col, value)
        if op == "$ne":
            return ~self._equal(col, value)
        return self._compare(col, op, value)

    def _equal(self, col: Column, value: Any) -> np.ndarray:
        if col.kind == "list":
            rows = col.members.get(_key(value))
            hit = np.zeros(self.n, dtype=bool)
            if rows is not None:
                hit[rows] = True
            return hit
        if col.kind in ("number", "bool", "date"):
            target = self._scalar(col, value)
            return col.numbers == target
        code = col.vocab.get(_key(value))
        return col.codes == code if code is not None else np.zeros(self.n, dtype=bool)

    def _compare(self, col: Column, op: str, value: Any) -> np.ndarray:
        if col.kind not in ("number", "date"):
            raise FilterError(f"{op} does not fit field {col.describe()}: comparisons take numbers or dates; "
                              f"use equality, $in or $ne on it")
        target = self._scalar(col, value)
        values = col.numbers
        with np.errstate(invalid="ignore"):
            result = {"$gt": values > target, "$gte": values >= target, "$lt": values < target, "$lte": values <= target}[op]
        return result & col.present

    @staticmethod
    def _scalar(col: Column, value: Any) -> float:
        if col.kind == "date":
            days = _as_date(value)
            if days is None and _is_number(value):
                days = None
            if days is None:
                raise FilterError(f"field {col.name!r} holds dates: compare it with an ISO date such as '2024-01-31', not {value!r}")
            return days
        if col.kind == "bool":
            if isinstance(value, bool):
                return float(value)
            raise FilterError(f"field {col.name!r} holds true/false, not {value!r}")
        if _is_number(value):
            return float(value)
        raise FilterError(f"field {col.name!r} holds numbers: give a number, not {value!r}")


def filter_key(expression: Mapping[str, Any] | None) -> str:
    """A stable identity of a filter (for cache keys)."""
    return stable_hash(expression or {})


def combine(*expressions: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The and of several filters (None where none is given)."""
    given = [dict(e) for e in expressions if e]
    if not given:
        return None
    return given[0] if len(given) == 1 else {"$and": given}


_CLI = re.compile(r"^\s*([\w.\-]+)\s*(>=|<=|!=|=|>|<|\s+in\s+|\s+notin\s+)\s*(.*?)\s*$")
_CLI_OPS = {">=": "$gte", "<=": "$lte", "!=": "$ne", ">": "$gt", "<": "$lt", "in": "$in", "notin": "$nin"}


def _cli_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_cli(items: Iterable[str]) -> dict[str, Any] | None:
    """`["ext=md", "year>=2024", "tags in gpu,cuda"]` (or JSON objects) as one and-ed filter."""
    parts: list[dict[str, Any]] = []
    for item in items:
        text = item.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise FilterError(f"--filter {item!r} is not valid JSON ({exc.msg})") from None
            if not isinstance(parsed, dict):
                raise FilterError(f"--filter {item!r}: a JSON filter is an object, such as {{\"ext\": \"md\"}}")
            parts.append(parsed)
            continue
        match = _CLI.match(text)
        if not match:
            raise FilterError(
                f"cannot read --filter {item!r}; write FIELD=VALUE, FIELD!=VALUE, FIELD>=N (or > < <=), "
                "'FIELD in A,B', 'FIELD notin A,B', or a JSON object"
            )
        name, op, raw = match.group(1), match.group(2).strip(), match.group(3)
        if op in ("in", "notin"):
            parts.append({name: {_CLI_OPS[op]: [_cli_value(v.strip()) for v in raw.split(",") if v.strip()]}})
        elif op == "=":
            parts.append({name: _cli_value(raw)})
        else:
            parts.append({name: {_CLI_OPS[op]: _cli_value(raw)}})
    return combine(*parts)
