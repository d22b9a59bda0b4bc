"""The data types every other package speaks: `Corpus`, `Queries`, `Qrels` and `Dataset`.

At the edges (loaders, reports) documents and queries are named by string ids; inside the engine a
document is a *row*: its position in the `Corpus`. These classes own that mapping, the content
fingerprint that indexes and caches record, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stagegraph.errors import InputError
from stagegraph.hashing import hash_strings as _hash_strings


class DataError(InputError):
    """A dataset, corpus or qrels file is malformed; the message names the file, line and fix."""


class Corpus:
    """Documents as parallel lists of ids, titles and texts, with an id <-> row map.

    `fingerprint` is a SHA-256 of every id, title and text in order: two corpora with the same
    fingerprint are the same documents in the same rows, so indexes and cached rankings built for
    one are valid for the other. A chunked collection also gives, per row, the id of the document the
    chunk comes from (`doc_ids`) and that document's metadata (`metadata`); a plain corpus has
    neither (each row is its own document, with no metadata).
    """

    __slots__ = ("ids", "titles", "texts", "doc_ids", "metadata", "_row_of", "_fingerprint", "_metadata_index")

    def __init__(
        self,
        ids: list[str],
        titles: list[str],
        texts: list[str],
        *,
        doc_ids: list[str] | None = None,
        metadata: list[dict[str, Any]] | None = None,
    ):
        if not (len(ids) == len(titles) == len(texts)):
            raise DataError(
                f"Corpus needs as many titles ({len(titles)}) and texts ({len(texts)}) as ids ({len(ids)})."
            )
        for label, column in (("doc_ids", doc_ids), ("metadata", metadata)):
            if column is not None and len(column) != len(ids):
                raise DataError(f"Corpus has {len(ids)} rows but {len(column)} {label}; give one per row.")
        row_of: dict[str, int] = {}
        for row, doc_id in enumerate(ids):
            if doc_id in row_of:
                raise DataError(f"Corpus has the document id {doc_id!r} twice (rows {row_of[doc_id]} and {row}).")
            row_of[doc_id] = row
        self.ids = list(ids)
        self.titles = list(titles)
        self.texts = list(texts)
        self.doc_ids = list(doc_ids) if doc_ids is not None else None
        self.metadata = list(metadata) if metadata is not None else None
        self._row_of = row_of
        self._fingerprint: str | None = None
        self._metadata_index = None  # stagegraph.corpora.filters.MetadataIndex, built on first use

    def __getstate__(self) -> dict:
        """What travels (to a Ray worker, a pickle): the documents, not this process's caches (the
        metadata index holds a lock; a receiver builds its own on first use)."""
        names = [n for cls in type(self).__mro__ for n in getattr(cls, "__slots__", ())]
        state = {name: getattr(self, name) for name in names if hasattr(self, name)}
        state["_metadata_index"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} documents, fingerprint={self.fingerprint[:12]})"

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _hash_strings(
                s for triple in zip(self.ids, self.titles, self.texts) for s in triple
            )
        return self._fingerprint

    def _rows(self) -> dict[str, int]:
        """The id -> row map (a stored corpus builds it when first asked)."""
        return self._row_of

    def row_of(self, doc_id: str) -> int:
        """The row of `doc_id`; a `KeyError` that names the id when it is not in the corpus."""
        try:
            return self._rows()[doc_id]
        except KeyError:
            raise KeyError(f"document id {doc_id!r} is not in the corpus ({len(self)} documents)") from None

    def has(self, doc_id: str) -> bool:
        return doc_id in self._rows()

    def rows_of(self, doc_ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.row_of(d) for d in doc_ids), dtype=np.int64)

    def doc_id(self, row: int) -> str:
        """The id of the document row `row` belongs to (its own id in a plain corpus)."""
        return self.doc_ids[row] if self.doc_ids is not None else self.ids[row]

    def metadata_of(self, row: int) -> dict[str, Any]:
        return dict(self.metadata[row]) if self.metadata is not None else {}

    def doc_text(self, row: int, separator: str = " ") -> str:
        """Title and text joined, the string that retrievers and rerankers score."""
        return joined_text(self.titles[row], self.texts[row], separator)

    def doc_texts(self, rows: Iterable[int] | None = None) -> list[str]:
        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        return [joined_text(t, x) for t, x in zip(take(self.titles, rows), take(self.texts, rows))]

    def records(self, rows: Sequence[int]) -> tuple[list[str], list[str], list[str], list[str], list[dict[str, Any]]]:
        """(ids, document ids, titles, texts, metadata) of `rows`, in order: one read per column, which
        a corpus whose columns are stored (a collection's segments) answers without a Python loop."""
        rows = [int(r) for r in rows]
        ids = take(self.ids, rows)
        doc_ids = take(self.doc_ids, rows) if self.doc_ids is not None else ids
        metadata = take(self.metadata, rows) if self.metadata is not None else [{} for _ in rows]
        return ids, doc_ids, take(self.titles, rows), take(self.texts, rows), metadata


def take(column: Sequence[Any], rows: list[int]) -> list[Any]:
    """`[column[r] for r in rows]`, by the column's own `take` where it has one (stored columns)."""
    taker = getattr(column, "take", None)
    return taker(rows) if taker is not None else [column[r] for r in rows]


def joined_text(title: str, text: str, separator: str = " ") -> str:
    """A row's title and text as one string (`Corpus.doc_text`): what retrievers and rerankers score."""
    if title and text:
        return f"{title}{separator}{text}"
    return title or text


class Queries:
    """An ordered batch of queries: parallel lists of ids and texts, and optionally a metadata
    filter per query (`stagegraph.corpora.filters`; None: no filter), which every retriever applies."""

    __slots__ = ("ids", "texts", "filters")

    def __init__(self, ids: list[str], texts: list[str], filters: list[dict[str, Any] | None] | None = None):
        if len(ids) != len(texts):
            raise DataError(f"Queries need one text per id ({len(ids)} ids, {len(texts)} texts).")
        if filters is not None and len(filters) != len(ids):
            raise DataError(f"Queries need one filter (or None) per id ({len(ids)} ids, {len(filters)} filters).")
        seen: set[str] = set()
        for qid in ids:
            if qid in seen:
                raise DataError(f"Query id {qid!r} appears twice.")
            seen.add(qid)
        self.ids = list(ids)
        self.texts = list(texts)
        self.filters = list(filters) if filters is not None and any(filters) else None

    @classmethod
    def single(cls, text: str, qid: str = "q", filter: dict[str, Any] | None = None) -> Queries:
        return cls([qid], [text], [filter] if filter else None)

    def filter_of(self, position: int) -> dict[str, Any] | None:
        return self.filters[position] if self.filters is not None else None

    def with_filter(self, filter: dict[str, Any] | None) -> Queries:
        """These queries, each with `filter` (None: without filters)."""
        return Queries(self.ids, self.texts, [filter] * len(self) if filter else None)

    @classmethod
    def from_mapping(cls, queries: Mapping[str, str]) -> Queries:
        return cls(list(queries), list(queries.values()))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(zip(self.ids, self.texts))

    def __repr__(self) -> str:
        return f"Queries({len(self)})"

    def select(self, positions: Iterable[int]) -> Queries:
        positions = list(positions)
        filters = [self.filters[i] for i in positions] if self.filters is not None else None
        return Queries([self.ids[i] for i in positions], [self.texts[i] for i in positions], filters)

    def restrict_to(self, qids: Iterable[str]) -> Queries:
        """The queries whose id is in `qids`, in this batch's order."""
        wanted = set(qids)
        return self.select(i for i, qid in enumerate(self.ids) if qid in wanted)

    def fingerprint(self) -> str:
        parts = [s for pair in zip(self.ids, self.texts) for s in pair]
        if self.filters is not None:  # a filtered query is another query: never the unfiltered ranking
            parts += [json.dumps(f, sort_keys=True, default=str) for f in self.filters]
        return _hash_strings(parts)


@dataclass(frozen=True)
class QueryJudgments:
    """One query's judged documents as arrays: corpus rows and integer grades."""

    doc_rows: np.ndarray
    grades: np.ndarray


class Qrels:
    """Graded relevance judgments, `{query_id: {doc_id: grade}}` at the edges.

    Grades are integers; a grade >= `relevance_threshold` (default 1) counts as relevant for binary
    metrics, while nDCG uses the grades themselves as gains. `missing_docs` counts judgments that
    name a document absent from the corpus: loaders keep that number so reports can show it.
    """

    __slots__ = ("judgments", "missing_docs")

    def __init__(self, judgments: Mapping[str, Mapping[str, int]], missing_docs: int = 0):
        self.judgments: dict[str, dict[str, int]] = {q: dict(d) for q, d in judgments.items()}
        self.missing_docs = missing_docs

    def __len__(self) -> int:
        return len(self.judgments)

    def __contains__(self, qid: object) -> bool:
        return qid in self.judgments

    def __repr__(self) -> str:
        pairs = sum(len(d) for d in self.judgments.values())
        return f"Qrels({len(self)} queries, {pairs} judgments)"

    @property
    def query_ids(self) -> list[str]:
        return list(self.judgments)

    def for_query(self, qid: str) -> dict[str, int]:
        return self.judgments.get(qid, {})

    def as_rows(self, qid: str, corpus: Corpus) -> QueryJudgments:
        """Judgments of `qid` as row/grade arrays; documents absent from the corpus are skipped."""
        judged = self.for_query(qid)
        pairs = [(corpus.row_of(d), g) for d, g in judged.items() if corpus.has(d)]
        rows = np.array([p[0] for p in pairs], dtype=np.int64)
        grades = np.array([p[1] for p in pairs], dtype=np.int64)
        return QueryJudgments(rows, grades)

    def fingerprint(self) -> str:
        return _hash_strings(
            f"{q}\t{d}\t{g}" for q in sorted(self.judgments) for d, g in sorted(self.judgments[q].items())
        )


@dataclass
class Dataset:
    """A corpus, its queries and qrels per split (`"test"`, `"train"`, ...), under one name; `vectors`,
    when given, are precomputed vectors of the corpus rows (`stagegraph.corpora.vectors.CorpusVectors`)
    that a dense stage bound to the dataset indexes instead of encoding the documents."""

    name: str
    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels] = field(default_factory=dict)
    vectors: Any = None

    @property
    def splits(self) -> list[str]:
        return sorted(self.qrels)

    def split(self, split: str) -> tuple[Queries, Qrels]:
        """The judged queries of `split` (the queries evaluated, as BEIR does) and their qrels."""
        if split not in self.qrels:
            if self.splits:
                raise DataError(
                    f"Dataset {self.name!r} has no split {split!r}; available: {', '.join(self.splits)}. Evaluate "
                    f"one of those (--split {self.splits[0]}), or add the judgments as qrels/{split}.tsv in its folder."
                )
            raise DataError(
                f"Dataset {self.name!r} has no qrels, so no split {split!r} to evaluate; put the judgments in its "
                f"folder as qrels/{split}.tsv (header query-id<TAB>corpus-id<TAB>score, one row per judged pair)."
            )
        qrels = self.qrels[split]
        return self.queries.restrict_to(qrels.query_ids), qrels
