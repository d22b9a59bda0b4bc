"""Metadata filters: one expression, checked against a corpus' metadata, compiled to a row mask.

    {"ext": "md", "year": {"$gte": 2024}, "tags": {"$in": ["gpu", "cuda"]}}

* a bare value is equality; `$ne`, `$in`, `$nin`, `$gt`, `$gte`, `$lt`, `$lte`, `$exists`;
  `$and` / `$or` take lists of expressions; several fields in one mapping are and-ed;
* on a list-valued field (`tags: [gpu, llama]`) equality means "contains", `$in` "shares one",
  `$nin` "shares none";
* `$gt/$gte/$lt/$lte` fit numbers and dates (ISO-8601 strings or dates, compared as dates); on
  text they are an error, as are unknown fields and values of the wrong kind;
* a document without the field never matches a comparison, `$in` or equality, and matches `$ne`
  and `$nin` (the Mongo reading); `{"$exists": false}` selects exactly those.

`MetadataIndex.of(corpus)` is the columnar view of one corpus' metadata (a generation's, a
segment's): a column is built only for a field a filter names, on first use, and kept (numbers and
dates as float arrays, text as integer codes, list values as row sets), so compiling a filter is a
few numpy operations over the rows, not a Python loop per query. Nothing is built for fields no
filter names, however many a document carries, and a field whose column cannot be built (a number
the index cannot hold, written before `stagegraph.corpora.validate` refused it) keeps its error,
cached like a column: each later filter naming it fails at once with a `FilterError` (HTTP 422
`invalid_filter`), and filters on other fields are untouched. At most `FilterLimits.max_columns`
columns are kept (least recently used first out), so memory is bounded by what filters use, and
goes with the corpus (a new generation has a new index).

No filter gives anything but a mask or a `FilterError` naming the field the caller used (and
nothing of fields the caller did not name): a filter is first checked against `FilterLimits`
(nesting depth, number of keys and list elements, length of strings; defaults in docs/collections.md,
"Filters"), its numbers against the range the index compares exactly (integers within +-(2**53 - 1),
finite floats). `parse_cli(["ext=md", "year>=2024", "tags in gpu,cuda"])` reads the command line's
short form (`ext==md` is `ext=md`; any other run of `= < > !` is refused); JSON is accepted there too.

A filtered search that finds nothing can say why: `stagegraph.corpora.filter_hints.explain_empty(expression,
corpus)` is one line
naming, for each condition that matches no chunk, the values its field holds (most frequent first,
with counts; a range's field its smallest and largest) and the nearest to the value given, or, when
chunks pass the filter, how many (the query matches none of them). It runs on empty results only
(`Runner.search` puts it in `SearchResult.hint`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stagegraph.corpora.validate import MAX_SAFE_INTEGER, digits
from stagegraph.errors import InputError
from stagegraph.hashing import stable_hash

COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS)


class FilterError(InputError):
    """A filter that does not fit the metadata; the message names the field the caller used, and no other."""


class FilterLimits(BaseModel):
    """How large a filter may be, and how many columns one index keeps (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: levels of nesting of objects and lists ({"a": {"$in": [1]}} is 3; a stage's and a query's filter and-ed add 2)
    max_depth: int = Field(16, ge=1)
    #: keys and list elements in all
    max_nodes: int = Field(1024, ge=1)
    #: characters of one string (a field name or a value)
    max_string_chars: int = Field(8192, ge=1)
    #: columns an index keeps; the least recently used goes first
    max_columns: int = Field(64, ge=1)


DEFAULT_LIMITS = FilterLimits()


def check_shape(expression: Any, limits: FilterLimits = DEFAULT_LIMITS) -> None:
    """A `FilterError` for a filter beyond `limits`, a key that is not a string, or a number the index
    cannot compare; walked without recursion, so no depth can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(expression, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if depth > limits.max_depth:
                raise FilterError(f"the filter is nested more than {limits.max_depth} levels deep; write it flatter")
            items = list(value.items()) if isinstance(value, Mapping) else [(None, v) for v in value]
            nodes += len(items)
            if nodes > limits.max_nodes:
                raise FilterError(f"the filter has more than {limits.max_nodes} keys and values; split the query or "
                                  "use fewer values in $in")
            for key, item in items:
                if isinstance(value, Mapping):
                    if not isinstance(key, str) or not key:
                        raise FilterError(f"a filter's keys are field names or operators (strings), not {_shown(key)}")
                    _check_string(key, limits)
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            _check_string(value, limits)
        elif isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"{value} is not a number a filter can compare; give a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise FilterError(f"an integer of {digits(value)} digits is out of "
                              f"range: filters compare integers within +-{MAX_SAFE_INTEGER} (2**53 - 1)")


def _check_string(text: str, limits: FilterLimits) -> None:
    if len(text) > limits.max_string_chars:
        raise FilterError(f"a string of {len(text)} characters in the filter; the limit is {limits.max_string_chars}")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _as_date(value: Any) -> float | None:
    """Days since the epoch for a date, a datetime or an ISO-8601 string; None otherwise."""
    try:
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.timezone.utc)
            return value.timestamp() / 86400.0
        if isinstance(value, _dt.date):
            return float(value.toordinal() - 719163)
        if isinstance(value, str) and 8 <= len(value) <= 64 and value[:4].isdigit() and "-" in value:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None and len(value) <= 10:
                return float(parsed.date().toordinal() - 719163)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=_dt.timezone.utc)
            return parsed.timestamp() / 86400.0
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Column:
    """One metadata field across the rows: its kind and its values in a form numpy can compare."""

    name: str
    kind: str  # number | date | bool | text | list | mixed | absent (no row has the field)
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
    if isinstance(value, (list, dict, tuple)):
        return ("json", json.dumps(value, sort_keys=True, default=str))
    return (type(value).__name__ if not _is_number(value) else "number", value)


def _float(value: Any) -> float:
    """A number as the index holds it; `OverflowError` for an integer beyond +-(2**53 - 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise OverflowError("integer out of the range a float64 holds exactly")
    return float(value)


class MetadataIndex:
    """The metadata of every row of a corpus, as columns built on demand (see the module docstring)."""

    def __init__(self, metadata: Sequence[Mapping[str, Any]], *, limits: FilterLimits = DEFAULT_LIMITS):
        self.metadata = metadata
        self.n = len(metadata)
        self.limits = limits
        self._columns: OrderedDict[str, Column | FilterError] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0  # columns built (and failed) so far: what tests and operators can watch

    @classmethod
    def of(cls, corpus: Any) -> MetadataIndex:
        """The index of `corpus` (one per corpus object; its columns are built as filters name them)."""
        cached = getattr(corpus, "_metadata_index", None)
        if cached is None:
            cached = cls(corpus.metadata if corpus.metadata is not None else [{}] * len(corpus))
            corpus._metadata_index = cached
        return cached

    def built(self) -> list[str]:
        """The fields whose columns (or build errors) the index holds now."""
        with self._lock:
            return list(self._columns)

    def column(self, name: str) -> Column:
        """The column of `name`, built on first use; the cached `FilterError` when it could not be built."""
        with self._lock:
            found = self._columns.get(name)
            if found is None:
                found = self._build(name)
                self.builds += 1
                self._columns[name] = found
                while len(self._columns) > self.limits.max_columns:
                    self._columns.popitem(last=False)
            else:
                self._columns.move_to_end(name)
        if isinstance(found, FilterError):
            raise FilterError(str(found))  # a new one each time: re-raising one object would grow its traceback
        return found

    def _build(self, name: str) -> Column | FilterError:
        try:
            return self._column(name, self.metadata)
        except (ValueError, TypeError, OverflowError, RecursionError):
            return FilterError(f"field {name!r} holds a value the filter index cannot compare (an integer beyond "
                               f"+-{MAX_SAFE_INTEGER} or an unserialisable value, written before such values were "
                               "refused); no filter can use it until that document is fixed or deleted")

    def _column(self, name: str, metadata: Sequence[Mapping[str, Any]]) -> Column:
        raw = [m.get(name) if isinstance(m, Mapping) else None for m in metadata]
        present = np.array([v is not None for v in raw], dtype=bool)
        seen = [v for v in raw if v is not None]
        kind = _kind(seen) if seen else "absent"
        col = Column(name, kind, present)
        if kind in ("number", "bool"):
            col.numbers = np.array([_float(v) if v is not None else np.nan for v in raw], dtype=np.float64)
        elif kind == "date":
            col.numbers = np.array([_as_date(v) if v is not None else np.nan for v in raw], dtype=np.float64)
        elif kind == "list":
            rows: dict[Any, list[int]] = {}
            for i, v in enumerate(raw):
                for element in v or ():
                    rows.setdefault(_key(element), []).append(i)
            col.members = {k: np.array(r, dtype=np.int64) for k, r in rows.items()}
        elif kind != "absent":
            col.codes = np.full(self.n, -1, dtype=np.int64)
            for i, v in enumerate(raw):
                if v is not None:
                    col.codes[i] = col.vocab.setdefault(_key(v), len(col.vocab))
        return col

    # -- compiling ------------------------------------------------------------------------------
    def mask(self, expression: Mapping[str, Any] | None, *, part: bool = False) -> np.ndarray:
        """The rows `expression` allows (all rows for None or {}); a `FilterError` for any filter that
        does not fit (see the module docstring), never another exception.

        `part=True`: these rows are one part (a segment) of a corpus the filter was checked against as
        a whole, so a field none of *these* rows holds is not an error: its rows lack it, as rows of a
        whole corpus that lack a field do (`$eq`, `$in`, comparisons and `$exists: true` match none;
        `$ne`, `$nin` and `$exists: false` match all)."""
        if expression is None or (isinstance(expression, Mapping) and not expression):
            return np.ones(self.n, dtype=bool)
        if not isinstance(expression, Mapping):
            raise FilterError(f"a filter is a mapping such as {{'ext': 'md'}}, not {type(expression).__name__}")
        check_shape(expression, self.limits)
        return self._mask(expression, part)

    def _mask(self, expression: Mapping[str, Any], part: bool = False) -> np.ndarray:
        out = np.ones(self.n, dtype=bool)
        for name, condition in expression.items():
            if name == "$and":
                for piece in self._parts(name, condition):
                    out &= self._mask(piece, part)
            elif name == "$or":
                any_of = np.zeros(self.n, dtype=bool)
                for piece in self._parts(name, condition):
                    any_of |= self._mask(piece, part)
                out &= any_of
            elif name.startswith("$"):
                raise FilterError(f"unknown operator {name!r} at the top of a filter; use a field name, $and or $or")
            else:
                out &= self._field(name, condition, part)
        return out

    @staticmethod
    def _parts(name: str, condition: Any) -> list[Mapping[str, Any]]:
        if not isinstance(condition, list) or not condition or not all(isinstance(c, Mapping) for c in condition):
            raise FilterError(f"{name} takes a non-empty list of filters, e.g. {{'{name}': [{{'ext': 'md'}}, {{'year': 2024}}]}}")
        return condition

    def _field(self, name: str, condition: Any, part: bool = False) -> np.ndarray:
        operators = condition if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition) else {"$eq": condition}
        col = self.column(name)
        if col.kind == "absent":
            if set(operators) == {"$exists"}:
                return self._apply(col, "$exists", operators["$exists"])
            if part:
                return self._absent_here(col, operators)
            raise FilterError(f"unknown filter field {name!r}: no document has it; check its spelling "
                              "(a field holds a value in at least one document)")
        out = np.ones(self.n, dtype=bool)
        for op, value in operators.items():
            if op not in OPERATORS:
                raise FilterError(f"unknown operator {op!r} on field {name!r}; use one of {', '.join(OPERATORS)}")
            out &= self._apply(col, op, value)
        return out

    def _absent_here(self, col: Column, operators: Mapping[str, Any]) -> np.ndarray:
        """A field none of this part's rows holds: what each operator gives rows that lack it."""
        out = np.ones(self.n, dtype=bool)
        for op, value in operators.items():
            if op not in OPERATORS:
                raise FilterError(f"unknown operator {op!r} on field {col.name!r}; use one of {', '.join(OPERATORS)}")
            if op == "$exists":
                out &= self._apply(col, op, value)
            elif op not in ("$ne", "$nin"):
                out &= False
        return out

    def _apply(self, col: Column, op: str, value: Any) -> np.ndarray:
        if op == "$exists":
            if not isinstance(value, bool):
                raise FilterError(f"$exists on {col.name!r} takes true or false, not {_shown(value)}")
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
                raise FilterError(f"field {col.name!r} holds dates: compare it with an ISO date such as '2024-01-31', not {_shown(value)}")
            return days
        if col.kind == "bool":
            if isinstance(value, bool):
                return float(value)
            raise FilterError(f"field {col.name!r} holds true/false, not {_shown(value)}")
        if _is_number(value):
            return float(value)
        raise FilterError(f"field {col.name!r} holds numbers: give a number, not {_shown(value)}")


def filter_key(expression: Mapping[str, Any] | None) -> str:
    """A stable identity of a filter (for cache keys)."""
    return stable_hash(expression or {})


def combine(*expressions: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The and of several filters (None where none is given)."""
    given = [dict(e) for e in expressions if e]
    if not given:
        return None
    return given[0] if len(given) == 1 else {"$and": given}


_CLI = re.compile(r"^\s*([\w.\-]+)\s*(>=|<=|!=|==|=|>|<|\s+in\s+|\s+notin\s+)\s*(.*?)\s*$")
_CLI_OPS = {">=": "$gte", "<=": "$lte", "!=": "$ne", ">": "$gt", "<": "$lt", "in": "$in", "notin": "$nin"}


def _cli_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


_CLI_FORMS = ("write FIELD=VALUE (or FIELD==VALUE), FIELD!=VALUE, FIELD>=N (or > < <=), 'FIELD in A,B', "
              "'FIELD notin A,B', or a JSON object")


def parse_cli(items: Iterable[str]) -> dict[str, Any] | None:
    """`["ext=md", "year>=2024", "tags in gpu,cuda"]` (or JSON objects) as one and-ed filter.

    `FIELD==VALUE` is `FIELD=VALUE`; a value is read as JSON where it is JSON (`year=2024` is a number,
    `year="2024"` text) and as text otherwise. Any other run of `= < > !` (`ext=>md`, `year=<3`,
    `ext===md`) is refused, naming the forms accepted: a value that starts with one of them goes in
    quotes (`op="=x"`)."""
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
            raise FilterError(f"cannot read --filter {item!r}; {_CLI_FORMS}")
        name, op, raw = match.group(1), match.group(2).strip(), match.group(3)
        if op not in ("in", "notin") and raw[:1] in ("=", "<", ">", "!"):
            bad = re.match(r"[=<>!\s]*", text[match.end(1):]).group().strip()
            raise FilterError(f"cannot read --filter {item!r}: {bad!r} is not an operator; {_CLI_FORMS} "
                              "(quote a value that starts with = < > or !: FIELD=\"=x\")")
        if op in ("in", "notin"):
            parts.append({name: {_CLI_OPS[op]: [_cli_value(v.strip()) for v in raw.split(",") if v.strip()]}})
        elif op in ("=", "=="):
            parts.append({name: _cli_value(raw)})
        else:
            parts.append({name: {_CLI_OPS[op]: _cli_value(raw)}})
    return combine(*parts)
