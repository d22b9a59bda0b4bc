"""TREC files: topics (SGML `<top>` or `qid<TAB>text`), qrels (`qid 0 docid grade`) and run files.

A run file has the six standard columns `qid Q0 docid rank score tag`; `write_run` numbers ranks
from 1 in the ranking's own order (score desc, ties by row asc, see `stagegraph.pipeline.ranking.Ranking`) and
writes atomically (a temp file in the same folder, then a rename), so a crash never leaves half a
run behind. Scores are written with 9 significant digits, enough to round-trip a float32.
"""

from __future__ import annotations

import os
import re

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from stagegraph.atomic import atomic_file
from stagegraph.corpora.qrels import read_text_lines, read_trec_qrels, shown
from stagegraph.corpora.types import Corpus, DataError, Queries

__all__ = ["read_topics", "read_trec_qrels", "write_run", "read_run"]

PathLike = str | os.PathLike

TOPIC_FIELDS = ("title", "desc", "narr")
_TAG = re.compile(r"<(/?)(top|num|title|desc|narr)>", re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(number|topic|description|narrative)\s*:\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    return " ".join(_PREFIX.sub("", text, count=1).split())


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _read_sgml_topics(path: Path, text: str, fields: list[str]) -> Queries:
    ids: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    tags = list(_TAG.finditer(text))
    current: dict[str, str] | None = None
    top_line = 0
    for i, tag in enumerate(tags):
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if name == "top":
            if not closing:
                if current is not None:
                    raise DataError(f"{path}:{top_line}: <top> is never closed with </top>.")
                current, top_line = {}, _line_at(text, tag.start())
                continue
            if current is None:
                raise DataError(f"{path}:{_line_at(text, tag.start())}: </top> without a matching <top>.")
            qid = current.get("num", "")
            if not qid:
                raise DataError(f"{path}:{top_line}: topic has no <num>.")
            parts = [current.get(f, "") for f in fields]
            if not any(parts):
                raise DataError(f"{path}:{top_line}: topic {qid} has no {' or '.join(f'<{f}>' for f in fields)} text.")
            if qid in line_of:
                raise DataError(f"{path}:{top_line}: duplicate topic number {qid} (first on line {line_of[qid]}).")
            line_of[qid] = top_line
            ids.append(qid)
            texts.append(" ".join(p for p in parts if p))
            current = None
        elif not closing:
            if current is None:
                raise DataError(f"{path}:{_line_at(text, tag.start())}: <{name}> outside a <top> ... </top> block.")
            end = tags[i + 1].start() if i + 1 < len(tags) else len(text)
            current[name] = _clean(text[tag.end() : end])
    if current is not None:
        raise DataError(f"{path}:{top_line}: <top> is never closed with </top>.")
    return Queries(ids, texts)


def _read_tab_topics(path: Path, text: str) -> Queries:
    ids: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        qid, sep, query = line.partition("\t")
        qid, query = qid.strip(), " ".join(query.split())
        if not sep or not qid or not query:
            raise DataError(f"{path}:{line_no}: expected 'query-id<TAB>text', got {line!r}.")
        if qid in line_of:
            raise DataError(f"{path}:{line_no}: duplicate query id {qid!r} (first on line {line_of[qid]}).")
        line_of[qid] = line_no
        ids.append(qid)
        texts.append(query)
    return Queries(ids, texts)


def read_topics(path: PathLike, field: str = "title") -> Queries:
    """Queries from a TREC topics file, SGML (`<top><num>..<title>..`) or `qid<TAB>text` (detected).

    For SGML topics, `field` picks the text: "title", "desc", "narr" or a "+"-joined mix such as
    "title+desc"; it is ignored for the tab-separated format.
    """
    path, lines = read_text_lines(path, "topics")
    text = "\n".join(lines)
    if re.search(r"<top>", text, re.IGNORECASE):
        fields = [f.strip().lower() for f in field.split("+")]
        bad = [f for f in fields if f not in TOPIC_FIELDS]
        if bad:
            raise DataError(f"unknown topic field(s) {bad}; choose from {', '.join(TOPIC_FIELDS)} joined by '+'.")
        return _read_sgml_topics(path, text, fields)
    return _read_tab_topics(path, text)


class RankedRows(Protocol):
    """What `write_run` needs of a ranking (`stagegraph.pipeline.ranking.Ranking` has it)."""

    doc_rows: np.ndarray
    scores: np.ndarray


def write_run(
    path: PathLike,
    run_name: str,
    query_ids: Sequence[str],
    rankings: Sequence[RankedRows],
    corpus: Corpus,
    *,
    k: int | None = None,
) -> Path:
    """Write `rankings` (aligned with `query_ids`) as a TREC run file; returns the path written.

    Each ranking's order is kept (ranks 1..n); `k` keeps only the first k per query. An empty
    ranking writes no line for its query (trec_eval then scores it 0). A query or document id that
    is empty or holds whitespace cannot be a column of the file: `DataError` naming it.

    Scores are written **strictly decreasing in rank order** (`strictly_decreasing`): trec_eval,
    ir_measures and ranx ignore the rank column and re-sort by score, breaking ties their own way
    (trec_eval: document id, descending), so a file with tied scores (RRF makes many) would be scored
    in another order than the ranking's. A tied score is written as the largest float32 below the one
    above it (trec_eval reads scores as float32), so every tool reads our order and the scores stay
    what they were to ~7 digits.
    """
    if not run_name or any(ch.isspace() for ch in run_name):
        raise DataError(f"run name {run_name!r} must be non-empty with no whitespace (it is the 6th column).")
    if len(query_ids) != len(rankings):
        raise ValueError(f"{len(query_ids)} query ids but {len(rankings)} rankings; they must be aligned.")
    used = [np.asarray(r.doc_rows)[:k] for r in rankings]
    for row in np.unique(np.concatenate(used)).astype(np.int64).tolist() if used else []:
        doc_id = corpus.ids[row]
        if not doc_id or any(ch.isspace() for ch in doc_id):
            raise DataError(
                f"document id {doc_id!r} is empty or contains whitespace and cannot be written to a TREC run; "
                "rename it (in the corpus and the qrels)."
            )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for qid, ranking in zip(query_ids, rankings):
        if not qid or any(ch.isspace() for ch in qid):
            raise DataError(
                f"query id {qid!r} is empty or contains whitespace and cannot be written to a TREC run; "
                "rename it (in the queries and the qrels)."
            )
        rows = np.asarray(ranking.doc_rows)[:k]
        scores = strictly_decreasing(np.asarray(ranking.scores)[:k])
        for rank, (row, score) in enumerate(zip(rows.tolist(), scores), start=1):
            lines.append(f"{qid} Q0 {corpus.ids[row]} {rank} {score} {run_name}\n")
    with atomic_file(target, durable=True) as handle:
        handle.writelines(lines)
    return target


def strictly_decreasing(scores: np.ndarray) -> list[str]:
    """Each score as text (nine significant digits: a float32 read back exactly), every one read back
    strictly below the one before it, as trec_eval reads them: as float32 (`float sim`). A score
    that is not below its predecessor there is written as the float32 just below it (see `write_run`)."""
    values = np.asarray(scores, np.float64)
    top, lowest = np.finfo(np.float32).max, np.finfo(np.float32).min
    values = np.where(np.isnan(values) | np.isneginf(values), lowest, np.where(np.isposinf(values), top, values))
    with np.errstate(over="ignore"):
        s = values.astype(np.float32)  # a finite double beyond float32's range becomes inf, then max below
    if len(s) and not (np.all(s[1:] < s[:-1]) and s[0] < np.inf):  # a tie (or an inf): fix it in order
        previous = np.float32(np.inf)
        for i in range(len(s)):
            if not s[i] < previous:
                s[i] = np.nextafter(previous, np.float32(-np.inf), dtype=np.float32)
            previous = s[i]
    return [f"{v:.9g}" for v in s.tolist()]  # nine digits: each float32 reads back exactly


def read_run(path: PathLike) -> dict[str, dict[str, float]]:
    """A TREC run file as `{qid: {docid: score}}`, each query's documents in rank order.

    Queries keep their order of first appearance. A malformed line, a non-numeric rank or score,
    or a document listed twice for one query raises `DataError` with the file and line.
    """
    path, lines = read_text_lines(path, "run")
    entries: dict[str, list[tuple[int, str, float]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for line_no, line in enumerate(lines, start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 6:
            raise DataError(
                f"{path}:{line_no}: expected 6 columns 'qid Q0 docid rank score tag', got {shown(line.rstrip())}."
            )
        qid, _, docid, rank_s, score_s, _ = cols
        try:
            rank, score = int(rank_s), float(score_s)
        except ValueError:
            raise DataError(f"{path}:{line_no}: rank {rank_s!r} must be an integer and score {score_s!r} a number.") from None
        if (qid, docid) in seen:
            raise DataError(
                f"{path}:{line_no}: document {docid!r} listed twice for query {qid!r} (first on line {seen[qid, docid]})."
            )
        seen[qid, docid] = line_no
        entries.setdefault(qid, []).append((rank, docid, score))
    return {qid: {d: s for _, d, s in sorted(rows, key=lambda r: r[0])} for qid, rows in entries.items()}
