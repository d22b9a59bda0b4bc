"""Plain JSONL corpora and queries: the record reader every JSONL-based loader (BEIR too) uses.

A corpus line is `{"id" | "_id": str, "title"?: str, "text": str}`; a query line is
`{"id" | "_id": str, "text": str}`. Other keys (BEIR's `metadata`) are ignored. An id may also be a
JSON integer (read as its decimal string) but never empty or holding whitespace (TREC run and qrels
files could not name it); `title` may be absent or null; `text` must be a string ("" is allowed).
Files are UTF-8, with or without a byte-order mark, `\n` or `\r\n` line ends. Every problem
(a missing or unreadable file, bytes that are not UTF-8, invalid JSON, a missing or mistyped field,
a duplicate id, a file with no record) raises `DataError` naming the file and the 1-based line and
saying how to fix it, so a broken dataset is fixed in one edit. `load_jsonl` assembles a `Dataset`
from such files plus qrels in TREC or BEIR TSV format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from stagegraph.progress import progress_bar

from stagegraph.corpora.qrels import check_file, decode_line, read_qrels, resolve_qrels, shown, unreadable
from stagegraph.corpora.types import Corpus, DataError, Dataset, Qrels, Queries

PathLike = str | os.PathLike

# Files at least this big get a progress bar (when progress is on): ~5k short passages.
PROGRESS_MIN_BYTES = 2_000_000

ID_KEYS = ("_id", "id")


def iter_jsonl(path: PathLike, *, progress: bool = False, desc: str | None = None, what: str = "JSONL") -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line; `DataError` on invalid JSON or a non-object.

    Lines are UTF-8 (a leading byte-order mark is skipped) and may end in `\\n` or `\\r\\n`. A
    missing, unreadable or directory-shaped file, bytes that are not UTF-8, invalid JSON and a line
    that is not an object each raise `DataError` naming the file, the line and the fix.
    """
    path = Path(path)
    check_file(path, what)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
    except OSError as err:
        raise unreadable(path, err, what) from None
    show = progress and size >= PROGRESS_MIN_BYTES
    with handle, progress_bar(
        total=size, unit="B", unit_scale=True, desc=desc or f"reading {path.name}", disable=not show, leave=False
    ) as bar:
        for line_no, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            text = decode_line(raw, path, line_no)
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                where = f"column {err.colno}"
                detail = f"{err.msg} {where}" if err.msg.endswith(" at") else f"{err.msg} at {where}"
                raise DataError(
                    f"{path}:{line_no}: invalid JSON ({detail}). Each line must be one "
                    f"JSON object, such as {EXAMPLES.get(what, EXAMPLES['JSONL'])}."
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}:{line_no}: expected a JSON object, got {_json_value(obj)}; "
                    f"each line must be one object, such as {EXAMPLES.get(what, EXAMPLES['JSONL'])}."
                )
            yield line_no, obj


EXAMPLES = {
    "corpus": '{"_id": "d1", "title": "...", "text": "..."}',
    "queries": '{"_id": "q1", "text": "..."}',
    "JSONL": '{"_id": "d1", "text": "..."}',
}


def _json_value(value: object) -> str:
    """What a JSON value is, with a short excerpt: `null`, `a number (42)`, `an array (["a", "b"])`."""
    kind = _json_kind(value)
    if value is None:
        return kind
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return f"{kind} ({text if len(text) <= 40 else text[:40] + ' ...'})"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _id_field(obj: dict, keys: tuple[str, ...], path: Path, line_no: int) -> str:
    """The record's id: a string or an integer (written as a string), non-empty and without whitespace.

    Whitespace is refused because TREC run and qrels files split their columns on it, so such an id
    could not be judged or written to a run."""
    for key in keys:
        if key in obj:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(
                    f"{path}:{line_no}: field {key!r} must be a string, got {_json_value(value)}; "
                    "write the id as a JSON string."
                )
            text = str(value)
            if not text.strip():
                raise DataError(f"{path}:{line_no}: field {key!r} is empty; every record needs a non-empty id.")
            if any(ch.isspace() for ch in text):
                raise DataError(
                    f"{path}:{line_no}: id {shown(text, 40)} contains whitespace, which TREC run and qrels files "
                    "cannot hold; remove the spaces from the id (and from the qrels that name it)."
                )
            return text
    names = " or ".join(repr(k) for k in keys)
    present = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise DataError(f"{path}:{line_no}: missing field {names} (keys present: {present}); give every record an id.")


def _text_field(obj: dict, key: str, path: Path, line_no: int, *, required: bool = True) -> str:
    """A text field: a JSON string; an optional one may be absent or null (read as "")."""
    if key not in obj:
        if not required:
            return ""
        present = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise DataError(
            f"{path}:{line_no}: missing field {key!r} (keys present: {present}); add it (\"{key}\": \"\" for no text)."
        )
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{line_no}: field {key!r} must be a string, got {_json_value(value)}; "
            f"write it as a JSON string (\"{key}\": \"\" for no text)."
        )
    return value


def read_corpus(
    path: PathLike, *, id_keys: tuple[str, ...] = ID_KEYS, progress: bool = False
) -> Corpus:
    """A `Corpus` from a JSONL file; `title` is optional, `text` and an id are required.

    `DataError` for a file without any document or whose every document is empty (title and text),
    and for any malformed line (see `iter_jsonl`).
    """
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path, progress=progress, desc=f"reading {path.name}", what="corpus"):
        doc_id = _id_field(obj, id_keys, path, line_no)
        if doc_id in line_of:
            raise DataError(
                f"{path}:{line_no}: duplicate document id {doc_id!r} (first seen on line {line_of[doc_id]}); "
                "ids must be unique: remove or rename one."
            )
        line_of[doc_id] = line_no
        ids.append(doc_id)
        titles.append(_text_field(obj, "title", path, line_no, required=False))
        texts.append(_text_field(obj, "text", path, line_no))
    if not ids:
        raise DataError(
            f"{path}: no documents (the file is empty or only blank lines); write one JSON object per line, "
            f"such as {EXAMPLES['corpus']}."
        )
    if not any(t.strip() for t in titles) and not any(t.strip() for t in texts):
        raise DataError(
            f"{path}: all {len(ids)} documents have an empty 'title' and 'text', so no retriever can find any; "
            "give the documents their text."
        )
    return Corpus(ids, titles, texts)


def read_queries(path: PathLike, *, id_keys: tuple[str, ...] = ID_KEYS) -> Queries:
    """`Queries` from a JSONL file of `{id|_id, text}` records, in file order.

    `DataError` for a file without any query, or whose every query text is empty (some empty texts
    are allowed: a retriever returns nothing for them and warns).
    """
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path, what="queries"):
        qid = _id_field(obj, id_keys, path, line_no)
        if qid in line_of:
            raise DataError(
                f"{path}:{line_no}: duplicate query id {qid!r} (first seen on line {line_of[qid]}); "
                "ids must be unique: remove or rename one."
            )
        line_of[qid] = line_no
        ids.append(qid)
        texts.append(_text_field(obj, "text", path, line_no))
    if not ids:
        raise DataError(
            f"{path}: no queries (the file is empty or only blank lines); write one JSON object per line, "
            f"such as {EXAMPLES['queries']}."
        )
    if not any(t.strip() for t in texts):
        raise DataError(f"{path}: all {len(ids)} queries have an empty 'text'; give the queries their text.")
    return Queries(ids, texts)


def load_jsonl(
    corpus: PathLike,
    queries: PathLike,
    qrels: PathLike | Mapping[str, PathLike] | None = None,
    *,
    name: str | None = None,
    progress: bool = True,
) -> Dataset:
    """A `Dataset` from a JSONL corpus, JSONL queries and qrels files (TREC or BEIR TSV, detected).

    `qrels` is one file (the split is named after its stem, e.g. `test.tsv` -> "test") or a mapping
    `{split: file}`. Judgments naming documents absent from the corpus are kept and counted in
    `Qrels.missing_docs` (a warning says how many); judgments for unknown queries are dropped with
    a warning.
    """
    corpus_obj = read_corpus(corpus, progress=progress)
    queries_obj = read_queries(queries)
    if qrels is None:
        files: dict[str, PathLike] = {}
    elif isinstance(qrels, Mapping):
        files = dict(qrels)
    else:
        files = {Path(qrels).stem: qrels}
    splits: dict[str, Qrels] = {}
    for split, file in files.items():
        splits[split] = resolve_qrels(
            read_qrels(file), corpus_obj, queries_obj, source=Path(file), queries_source=Path(queries)
        )
    return Dataset(name or Path(corpus).parent.name or "jsonl", corpus_obj, queries_obj, splits)


CORPUS_NAMES = ("corpus.jsonl", "docs.jsonl", "documents.jsonl")
QUERY_NAMES = ("queries.jsonl", "topics.jsonl")
QRELS_SUFFIXES = (".tsv", ".txt", ".trec", ".qrels")


def find_jsonl_files(directory: PathLike) -> tuple[Path, Path, dict[str, Path]] | None:
    """The corpus, queries and `{split: qrels}` files of a JSONL dataset directory, or None.

    Qrels are `qrels/<split>.{tsv,txt,trec,qrels}`, or a single `qrels.{tsv,txt,trec,qrels}` beside
    the JSONL files (split "test").
    """
    directory = Path(directory)
    corpus = next((directory / n for n in CORPUS_NAMES if (directory / n).is_file()), None)
    queries = next((directory / n for n in QUERY_NAMES if (directory / n).is_file()), None)
    if corpus is None or queries is None:
        return None
    qrels: dict[str, Path] = {}
    qrels_dir = directory / "qrels"
    if qrels_dir.is_dir():
        for file in sorted(qrels_dir.iterdir()):
            if file.is_file() and file.suffix in QRELS_SUFFIXES:
                qrels.setdefault(file.stem, file)
    for suffix in QRELS_SUFFIXES:
        single = directory / f"qrels{suffix}"
        if single.is_file():
            qrels.setdefault("test", single)
    return corpus, queries, qrels


def load_jsonl_dir(directory: PathLike, *, name: str | None = None, progress: bool = True) -> Dataset:
    """`load_jsonl` over the files `find_jsonl_files` finds in `directory`."""
    found = find_jsonl_files(directory)
    if found is None:
        raise DataError(
            f"{directory}: not a JSONL dataset directory; expected one of {', '.join(CORPUS_NAMES)} "
            f"and one of {', '.join(QUERY_NAMES)} (plus qrels/<split>.tsv or qrels.txt)."
        )
    corpus, queries, qrels = found
    return load_jsonl(corpus, queries, qrels, name=name or Path(directory).resolve().name, progress=progress)
