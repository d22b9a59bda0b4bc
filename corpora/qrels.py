"""Qrels files in, `Qrels` out: BEIR TSV (`query-id corpus-id score`) and TREC (`qid 0 docid grade`).

Readers return raw `{qid: {docid: grade}}` and check every row: a malformed row, a non-integer
grade or the same (query, document) pair judged twice raises `DataError` naming the file and line;
so does a file with no judgment at all, or a first line that is neither BEIR's header nor a row.
Grades <= 0 are kept as judged non-relevant, as trec_eval and ir_measures keep them: no measure
counts them as relevant, but Judged@k and Bpref count them as judged, and a query judged only
non-relevant is evaluated (and scores 0), as trec_eval evaluates it. `resolve_qrels` then checks the judgments
against a corpus and queries: judgments naming a document absent from the corpus are *kept* (as
BEIR and trec_eval keep them, relevant but unretrievable) and counted in `Qrels.missing_docs`, with
a warning; judgments for a query that is not in the queries file are dropped, with a warning. When
nothing is left to evaluate (no positive grade, or no judged query in the queries file) it is a
`DataError`, since every metric would be computed over no query.

The text-file helpers here (`read_text_lines`, `check_file`, `not_utf8`, `unreadable`, `shown`) are
shared by every loader of this package, so a missing, unreadable, non-UTF-8 or directory-shaped file
gets the same one-line message whichever reader meets it. A UTF-8 byte-order mark is skipped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from stagegraph.corpora.types import Corpus, DataError, Qrels, Queries

PathLike = str | os.PathLike
RawQrels = dict[str, dict[str, int]]

BEIR_HEADER = ("query-id", "corpus-id", "score")
BEIR_HEADER_TEXT = "query-id<TAB>corpus-id<TAB>score"
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DataWarning(UserWarning):
    """A dataset loaded, but something in it deserves attention (missing documents, unknown queries)."""


# -- text files: shared by every loader --------------------------------------------------------------
def shown(text: object, limit: int = 80) -> str:
    """`repr` of `text`, cut after `limit` characters, so a huge line still makes a one-line message."""
    value = str(text)
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f" ... ({len(value):,} characters)"


def check_file(path: Path, what: str) -> None:
    """`DataError` unless `path` is an existing regular file (a directory is named as such)."""
    if path.is_file():
        return
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a {what} file; pass (or put there) the {what} file itself.")
    if path.exists():
        raise DataError(f"{path}: not a regular file; the {what} file must be a plain text file.")
    raise DataError(f"{path}: {what} file not found.")


def unreadable(path: Path, err: OSError, what: str) -> DataError:
    reason = err.strerror or str(err)
    return DataError(f"{path}: cannot read the {what} file ({reason}); make it readable (check its permissions).")


def not_utf8(path: Path, line_no: int, raw: bytes, err: UnicodeDecodeError) -> DataError:
    hint = " (it looks like UTF-16)" if line_no == 1 and raw.startswith(_UTF16_BOMS) else ""
    return DataError(
        f"{path}:{line_no}: not UTF-8 text{hint}: byte 0x{raw[err.start]:02x} at column {err.start + 1} "
        "cannot be decoded; save the file as UTF-8."
    )


def decode_line(raw: bytes, path: Path, line_no: int) -> str:
    """One line of a text file as `str` (UTF-8, a leading byte-order mark dropped on line 1)."""
    if line_no == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise not_utf8(path, line_no, raw, err) from None


def read_text_lines(path: PathLike, what: str) -> tuple[Path, list[str]]:
    """A whole UTF-8 text file as lines (`\\n`, `\\r\\n` or `\\r` endings); `DataError` naming the problem."""
    path = Path(path)
    check_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise unreadable(path, err, what) from None
    return path, [decode_line(raw, path, n) for n, raw in enumerate(data.splitlines(), start=1)]


# -- qrels -------------------------------------------------------------------------------------------
def _parse_grade(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        return None
    return int(number)


def _grade(value: str, path: Path, line_no: int, column: str) -> int:
    grade = _parse_grade(value)
    if grade is None:
        raise DataError(
            f"{path}:{line_no}: relevance grade {shown(value)} is not an integer; the {column} column must be a "
            "whole number (0 or less: not relevant, 1 or more: relevant)."
        )
    return grade


def _add(raw: RawQrels, lines: dict[tuple[str, str], int], qid: str, docid: str, grade: int, path: Path, line_no: int) -> None:
    key = (qid, docid)
    if key in lines:
        raise DataError(
            f"{path}:{line_no}: query {qid!r} judges document {docid!r} twice (first on line {lines[key]}); keep one row."
        )
    lines[key] = line_no
    raw.setdefault(qid, {})[docid] = grade


def _no_rows(path: Path, row: str) -> DataError:
    return DataError(f"{path}: no judgments (the file is empty or holds only a header); add one row per judged pair: {row}.")


def _parse_beir(path: Path, lines: list[str]) -> RawQrels:
    raw: RawQrels = {}
    seen: dict[tuple[str, str], int] = {}
    first = True
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split("\t")]
        if first:
            first = False
            if tuple(c.lower() for c in cols) == BEIR_HEADER:
                continue
            if len(cols) != 3 or not cols[0] or not cols[1] or _parse_grade(cols[2]) is None:
                raise DataError(
                    f"{path}:{line_no}: the first line {shown(line)} is neither the header '{BEIR_HEADER_TEXT}' "
                    "nor a judgment row; spell the header exactly so (tab-separated) or remove it."
                )
        if len(cols) != 3 or not cols[0] or not cols[1]:
            raise DataError(
                f"{path}:{line_no}: expected 3 tab-separated columns 'query-id corpus-id score', got {shown(line)}; "
                "separate the three columns with single tabs."
            )
        _add(raw, seen, cols[0], cols[1], _grade(cols[2], path, line_no, "third"), path, line_no)
    if not seen:
        raise _no_rows(path, BEIR_HEADER_TEXT)
    return raw


def _parse_trec(path: Path, lines: list[str]) -> RawQrels:
    raw: RawQrels = {}
    seen: dict[tuple[str, str], int] = {}
    for line_no, line in enumerate(lines, start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 4:
            raise DataError(
                f"{path}:{line_no}: expected 4 columns 'qid iteration docid grade', got {shown(line)}; "
                "separate the four columns with spaces or tabs."
            )
        _add(raw, seen, cols[0], cols[2], _grade(cols[3], path, line_no, "fourth"), path, line_no)
    if not seen:
        raise _no_rows(path, "qid 0 docid grade")
    return raw


def read_beir_qrels(path: PathLike) -> RawQrels:
    """A BEIR qrels TSV: optional header `query-id<TAB>corpus-id<TAB>score`, then one row per pair."""
    return _parse_beir(*read_text_lines(path, "qrels"))


def read_trec_qrels(path: PathLike) -> RawQrels:
    """TREC qrels: whitespace-separated `qid iteration docid grade` (the iteration column is ignored)."""
    return _parse_trec(*read_text_lines(path, "qrels"))


def read_qrels(path: PathLike) -> RawQrels:
    """Either format, told apart by the first non-blank line: tabs and 3 columns -> BEIR, else TREC."""
    path, lines = read_text_lines(path, "qrels")
    first = next((line for line in lines if line.strip()), "")
    if "\t" in first and len(first.split("\t")) == 3:
        return _parse_beir(path, lines)
    return _parse_trec(path, lines)


def resolve_qrels(
    raw: RawQrels,
    corpus: Corpus,
    queries: Queries | None = None,
    *,
    source: PathLike = "qrels",
    queries_source: PathLike | None = None,
) -> Qrels:
    """`Qrels` checked against `corpus` (missing documents counted) and `queries` (unknown queries dropped).

    `DataError` when no judgment is left to evaluate: none with a grade >= 1, or (given `queries`)
    none of the judged queries in the queries file (`queries_source` names it in the message).
    """
    if not any(g >= 1 for docs in raw.values() for g in docs.values()):
        raise DataError(
            f"{source}: no judgment has a grade of 1 or more (grades <= 0 mean not relevant, as in trec_eval), "
            "so no query can be evaluated; give each judged query at least one relevant document."
        )
    judgments = raw
    if queries is not None:
        known = set(queries.ids)
        unknown = [q for q in raw if q not in known]
        examples = ", ".join(map(repr, unknown[:3]))
        if len(unknown) == len(raw):
            raise DataError(
                f"{source}: none of its {len(raw)} judged queries is in {queries_source or 'the queries'} (e.g. "
                f"{examples}); the first column must hold the query ids ('_id') of the queries file."
            )
        if unknown:
            warnings.warn(
                f"{source}: {len(unknown)} judged queries are not in the queries file and are left out "
                f"(e.g. {examples}).",
                DataWarning,
                stacklevel=2,
            )
            judgments = {q: d for q, d in raw.items() if q in known}
    missing = sum(1 for docs in judgments.values() for d, g in docs.items() if g >= 1 and not corpus.has(d))
    if missing:
        total = sum(1 for docs in judgments.values() for g in docs.values() if g >= 1)
        warnings.warn(
            f"{source}: {missing} of {total} relevant judgments name documents missing from the corpus; "
            "they are kept (relevant but unretrievable, as trec_eval counts them) and reported as missing_docs.",
            DataWarning,
            stacklevel=2,
        )
    return Qrels(judgments, missing_docs=missing)
