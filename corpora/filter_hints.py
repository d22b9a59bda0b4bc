"""Why a filtered search found nothing, in one line: `explain_empty`.

For each condition of the filter that matches no chunk it names the values the field holds (at most
`HINT_VALUES`, most frequent first, counted among the chunks the rest of the filter and the pipeline's
own filter allow; for a range, the smallest and largest) and the nearest to the value given; when
chunks do pass the filter, it says how many. It reads the columns of `stagegraph.corpora.filters`'
`MetadataIndex`, and only for fields the filter names.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from stagegraph.corpora.filters import COMPARISONS, MAX_SAFE_INTEGER, Column, MetadataIndex, _is_number

# -- explaining an empty result ------------------------------------------------------------------
_SYMBOLS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<=", "$in": "in", "$nin": "notin",
            "$exists": "$exists"}
#: values shown per field, most frequent first
HINT_VALUES = 5
#: the most frequent values a "did you mean" is looked for among (difflib is linear in them)
HINT_CANDIDATES = 1000


def explain_empty(expression: Mapping[str, Any] | None, corpus: Any, *,
                  scope: Mapping[str, Any] | None = None) -> str | None:
    """One line saying why a search filtered by `expression` found nothing (None without a filter).

    When chunks pass the filter: how many, and that the query matches none of them. When none does:
    for each condition that matches no chunk, the values its field does hold (`HINT_VALUES` at most,
    most frequent first, with their counts; a number's or date's smallest and largest for a range),
    counted among the chunks the rest of the filter allows, and for equality and `$in` on text the
    nearest existing value (`difflib`, also with leading dots and spaces stripped and case folded):

        the filter matches no chunk: ext = ".html" matches nothing; ext has md (12), html (3), txt (2); did you mean "html"?

    Only chunks `scope` (a pipeline's own filter) allows are counted or named, and only fields
    `expression` names. `expression` must have passed `MetadataIndex.mask` already (`Runner.check_filter`).
    Meant for empty results only: it costs a few masks and counts over the rows (numpy), and
    `difflib` over at most `HINT_CANDIDATES` values for each of at most `HINT_VALUES` values given."""
    if not expression:
        return None
    index = MetadataIndex.of(corpus)
    allowed = index.mask(scope)
    if not allowed.any():
        return "the pipeline's own filter allows no chunk"
    passing = int(np.count_nonzero(index.mask(expression) & allowed))
    if passing:
        return f"{passing} chunk{'s pass' if passing > 1 else ' passes'} the filter; none matches the query"
    notes = _notes(index, expression, allowed, allowed)
    if notes:
        return "the filter matches no chunk: " + " ".join(n if n.endswith("?") or i == len(notes) - 1 else n + "."
                                                          for i, n in enumerate(notes))
    parts = _conjuncts(expression)
    counts = [f"{_condition_text(c)} ({_chunks(int(np.count_nonzero(index._mask(c) & allowed)))})" for c in parts[:HINT_VALUES]]
    more = f" and {len(parts) - HINT_VALUES} more" if len(parts) > HINT_VALUES else ""
    return f"the filter matches no chunk, though each of its conditions matches some: {', '.join(counts)}{more}; no chunk meets them all"


def _chunks(n: int) -> str:
    return f"{n} chunk{'s' if n != 1 else ''}"


def _conjuncts(expression: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The and-ed parts of a (checked) filter, each one field's condition or one `$or`."""
    out: list[dict[str, Any]] = []
    for name, condition in expression.items():
        if name == "$and":
            for part in condition:
                out.extend(_conjuncts(part))
        else:
            out.append({name: condition})
    return out


def _notes(index: MetadataIndex, expression: Mapping[str, Any], scope: np.ndarray, allowed: np.ndarray) -> list[str]:
    """A note for each condition of `expression` that no row of `scope` meets; its field's values are
    counted among the rows the other conditions (those that match some) allow."""
    parts = _conjuncts(expression)
    masks = [index._mask(part) & scope for part in parts]
    failing = [j for j, m in enumerate(masks) if not m.any()]
    notes: list[str] = []
    for j in failing:
        context = scope.copy()
        for i, m in enumerate(masks):
            if i != j and i not in failing:
                context &= m
        rest = np.count_nonzero(context) != np.count_nonzero(allowed)  # narrowed by other conditions (context <= allowed)
        (name, condition), = parts[j].items()
        if name == "$or":
            for part in condition:
                notes.extend(_notes(index, part, context, allowed))
        else:
            notes.append(_field_note(index, name, condition, context, rest))
    return notes


def _text(value: Any, limit: int = 60) -> str:
    """`value` as JSON, cut to about `limit` characters (a cut string keeps its closing quote, a list its bracket)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    end = text[-1] if text[-1] in '"]}' else ""
    return text[: limit - 3 - len(end)] + "..." + end


def _condition_text(part: Mapping[str, Any]) -> str:
    (name, condition), = part.items()
    if name == "$or":
        return f"$or of {len(condition)}"
    if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
        return f"{name} " + " and ".join(f"{_SYMBOLS.get(op, op)} {_text(v)}" for op, v in condition.items())
    return f"{name} = {_text(condition)}"


_PLAIN = re.compile(r"^[\w.\-/:@+]+$")


def _shown_value(value: Any) -> str:
    """A stored value as the hint lists it: plain text bare (md), anything else as JSON ("a b", 2024, true)."""
    if isinstance(value, str) and _PLAIN.match(value):
        try:
            json.loads(value)
        except ValueError:
            return value
    if _is_number(value) and float(value).is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return str(int(value))
    return _text(value, 40)


def _field_note(index: MetadataIndex, name: str, condition: Any, context: np.ndarray, rest: bool) -> str:
    """Why `name`'s `condition` matches no row of `context`, and what the field holds there."""
    operators = condition if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition) else {"$eq": condition}
    head = f"{_condition_text({name: condition})} matches nothing"
    where = " the rest of the filter allows" if rest else ""
    col = index.column(name)
    present = col.present & context
    if not present.any():
        return f"{head}; no chunk{where} has {name}"
    if operators == {"$exists": False}:
        return f"{head}; every chunk{where} has {name}"
    lead = f"where the rest of the filter holds, {name}" if rest else name
    if col.kind in ("number", "date") and set(operators) <= set(COMPARISONS):
        rows = np.flatnonzero(present)
        values = col.numbers[rows]
        low, high = rows[int(np.argmin(values))], rows[int(np.argmax(values))]
        return f"{head}; {lead} runs from {_shown_value(_raw(index, low, name))} to {_shown_value(_raw(index, high, name))}"
    values, counts = _value_counts(index, col, present)
    order = np.argsort(-counts, kind="stable")
    listed = ", ".join(f"{_shown_value(values[i])} ({int(counts[i])})" for i in order[:HINT_VALUES])
    more = f" and {len(values) - HINT_VALUES} more" if len(values) > HINT_VALUES else ""
    note = f"{head}; {lead} has {listed}{more}"
    if col.kind in ("number", "date"):
        rows = np.flatnonzero(present)
        low, high = rows[int(np.argmin(col.numbers[rows]))], rows[int(np.argmax(col.numbers[rows]))]
        note += f"; {name} runs from {_shown_value(_raw(index, low, name))} to {_shown_value(_raw(index, high, name))}"
    if "$eq" in operators:
        given = [operators["$eq"]]
    else:
        given = operators["$in"] if isinstance(operators.get("$in"), list) else []
    if col.kind in ("text", "mixed", "list") and given:
        nearest = _Nearest([values[i] for i in order[:HINT_CANDIDATES]])
        found = list({_text(s, 10**6): s for s in map(nearest, given[:HINT_VALUES]) if s is not None}.values())
        if found:
            note += f"; did you mean {_text(found[0]) if '$eq' in operators else _text(found)}?"
    return note


def _raw(index: MetadataIndex, row: Any, name: str) -> Any:
    found = index.metadata[int(row)]
    return found.get(name) if isinstance(found, Mapping) else None


def _value_counts(index: MetadataIndex, col: Column, rows: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """The distinct values of `col` among `rows` (a mask) and how many rows hold each (list fields:
    how many rows hold each element)."""
    if col.kind == "list":
        keys = list(col.members)
        if not keys:
            return [], np.zeros(0, dtype=np.int64)
        members = list(col.members.values())
        where = np.concatenate(members)
        owner = np.repeat(np.arange(len(keys)), [len(m) for m in members])
        counts = np.bincount(owner[rows[where]], minlength=len(keys))
    elif col.codes is not None:
        keys = list(col.vocab)
        counts = np.bincount(col.codes[rows], minlength=len(keys))
    else:  # number, date, bool: one representative row per distinct value shows it as stored
        unique, first, counts = np.unique(col.numbers[rows], return_index=True, return_counts=True)
        held = np.flatnonzero(rows)
        return [_raw(index, held[i], col.name) for i in first], counts
    kept = np.flatnonzero(counts)
    return [_unkey(keys[i]) for i in kept], counts[kept]


def _unkey(key: Any) -> Any:
    kind, value = key
    return json.loads(value) if kind == "json" else value


class _Nearest:
    """The existing value closest to one given: the same text once leading dots and spaces are
    stripped and case folded, else `difflib`'s nearest to the text as given, then so normalised
    (texts of at most `MAX_CHARS` characters: difflib's cost grows with their product)."""

    MAX_CHARS = 256

    def __init__(self, candidates: list[Any]):
        self.texts: dict[str, Any] = {}
        for candidate in candidates:
            self.texts.setdefault(candidate if isinstance(candidate, str) else _text(candidate, 10**6), candidate)
        self.folded: dict[str, Any] = {}
        for shown, candidate in self.texts.items():
            self.folded.setdefault(shown.strip().casefold(), candidate)

    def __call__(self, value: Any) -> Any:
        text = value if isinstance(value, str) else _text(value, 10**6)
        folded = text.strip().lstrip(". ").casefold()
        if folded in self.folded:
            return self.folded[folded]
        if len(text) > self.MAX_CHARS:
            return None
        for probe, among in ((text, self.texts), (folded, self.folded)):
            close = difflib.get_close_matches(probe, [t for t in among if len(t) <= self.MAX_CHARS], n=1)
            if close:
                return among[close[0]]
        return None
