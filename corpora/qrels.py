"""Qrels files in, `Qrels` out: BEIR TSV (`query-id corpus-id score`) and TREC (`qid 0 docid grade`).

Readers return raw `{qid: {docid: grade}}` and check every row: a malformed row, a non-integer
grade or the same (query, document) pair judged twice raises `DataError` naming the file and line.
Grades <= 0 are left out, as trec_eval treats them as non-relevant; a query left with no positive
judgment is therefore not evaluated (the BEIR convention). `resolve_qrels` then checks the judgments
against a corpus and queries: judgments naming a document absent from the corpus are *kept* (as
BEIR and trec_eval keep them, relevant but unretrievable) and counted in `Qrels.missing_docs`, with
a warning; judgments for a query that is not in the queries file are dropped, with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from stagegraph.corpora.types import Corpus, DataError, Qrels, Queries

PathLike = str | os.PathLike
RawQrels = dict[str, dict[str, int]]

BEIR_HEADER = ("query-id", "corpus-id", "score")


class DataWarning(UserWarning):
    """A dataset loaded, but something in it deserves attention (missing documents, unknown queries)."""


def _grade(value: str, path: Path, line_no: int) -> int:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number != int(number):
        raise DataError(f"{path}:{line_no}: relevance grade {value!r} is not an integer.")
    return int(number)


def _add(raw: RawQrels, lines: dict[tuple[str, str], int], qid: str, docid: str, grade: int, path: Path, line_no: int) -> None:
    key = (qid, docid)
    if key in lines:
        raise DataError(
            f"{path}:{line_no}: query {qid!r} judges document {docid!r} twice (first on line {lines[key]}); keep one row."
        )
    lines[key] = line_no
    if grade > 0:
        raw.setdefault(qid, {})[docid] = grade


def _lines(path: PathLike) -> tuple[Path, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: qrels file not found.")
    try:
        return path, path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}).") from None


def read_beir_qrels(path: PathLike) -> RawQrels:
    """A BEIR qrels TSV: optional header `query-id<TAB>corpus-id<TAB>score`, then one row per pair."""
    path, lines = _lines(path)
    raw: RawQrels = {}
    seen: dict[tuple[str, str], int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        if line_no == 1 and tuple(c.strip().lower() for c in cols) == BEIR_HEADER:
            continue
        if len(cols) != 3 or not cols[0].strip() or not cols[1].strip():
            raise DataError(
                f"{path}:{line_no}: expected 3 tab-separated columns 'query-id corpus-id score', got {line!r}."
            )
        _add(raw, seen, cols[0].strip(), cols[1].strip(), _grade(cols[2].strip(), path, line_no), path, line_no)
    return raw


def read_trec_qrels(path: PathLike) -> RawQrels:
    """TREC qrels: whitespace-separated `qid iteration docid grade` (the iteration column is ignored)."""
    path, lines = _lines(path)
    raw: RawQrels = {}
    seen: dict[tuple[str, str], int] = {}
    for line_no, line in enumerate(lines, start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 4:
            raise DataError(f"{path}:{line_no}: expected 4 columns 'qid iteration docid grade', got {line!r}.")
        _add(raw, seen, cols[0], cols[2], _grade(cols[3], path, line_no), path, line_no)
    return raw


def read_qrels(path: PathLike) -> RawQrels:
    """Either format, told apart by the first non-blank line: tabs and 3 columns -> BEIR, else TREC."""
    path, lines = _lines(path)
    first = next((line for line in lines if line.strip()), "")
    if "\t" in first and len(first.rstrip("\r\n").split("\t")) == 3:
        return read_beir_qrels(path)
    return read_trec_qrels(path)


def resolve_qrels(raw: RawQrels, corpus: Corpus, queries: Queries | None = None, *, source: PathLike = "qrels") -> Qrels:
    """`Qrels` checked against `corpus` (missing documents counted) and `queries` (unknown queries dropped)."""
    judgments = raw
    if queries is not None:
        known = set(queries.ids)
        unknown = [q for q in raw if q not in known]
        if unknown:
            warnings.warn(
                f"{source}: {len(unknown)} judged queries are not in the queries file and are left out "
                f"(e.g. {', '.join(map(repr, unknown[:3]))}).",
                DataWarning,
                stacklevel=2,
            )
            judgments = {q: d for q, d in raw.items() if q in known}
    missing = sum(1 for docs in judgments.values() for d in docs if not corpus.has(d))
    if missing:
        total = sum(len(docs) for docs in judgments.values())
        warnings.warn(
            f"{source}: {missing} of {total} relevant judgments name documents missing from the corpus; "
            "they are kept (relevant but unretrievable, as trec_eval counts them) and reported as missing_docs.",
            DataWarning,
            stacklevel=2,
        )
    return Qrels(judgments, missing_docs=missing)
