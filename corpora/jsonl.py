"""Plain JSONL corpora and queries: the record reader every JSONL-based loader (BEIR too) uses.

A corpus line is `{"id" | "_id": str, "title"?: str, "text": str}`; a query line is
`{"id" | "_id": str, "text": str}`. Other keys (BEIR's `metadata`) are ignored. Every problem
(invalid JSON, a missing or mistyped field, a duplicate id) raises `DataError` naming the file and
the 1-based line, so a broken dataset is fixed in one edit. `load_jsonl` assembles a `Dataset`
from such files plus qrels in TREC or BEIR TSV format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from tqdm.auto import tqdm

from stagegraph.corpora.qrels import read_qrels, resolve_qrels
from stagegraph.corpora.types import Corpus, DataError, Dataset, Qrels, Queries

PathLike = str | os.PathLike

# Files at least this big get a progress bar (when progress is on): ~5k short passages.
PROGRESS_MIN_BYTES = 2_000_000

ID_KEYS = ("_id", "id")


def iter_jsonl(path: PathLike, *, progress: bool = False, desc: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line; `DataError` on invalid JSON or a non-object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    size = path.stat().st_size
    show = progress and size >= PROGRESS_MIN_BYTES
    with open(path, "rb") as handle, tqdm(
        total=size, unit="B", unit_scale=True, desc=desc or f"reading {path.name}", disable=not show, leave=False
    ) as bar:
        for line_no, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{path}:{line_no}: invalid JSON ({err}). Each line must be one JSON object.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}.")
            yield line_no, obj


def _field(obj: dict, keys: tuple[str, ...], path: Path, line_no: int, *, required: bool = True) -> str:
    for key in keys:
        if key in obj:
            value = obj[key]
            if value is None and not required:
                return ""
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise DataError(
                    f"{path}:{line_no}: field {key!r} must be a string, got {type(value).__name__} ({value!r})."
                )
            return str(value)
    if not required:
        return ""
    names = " or ".join(repr(k) for k in keys)
    raise DataError(f"{path}:{line_no}: missing field {names} (keys present: {', '.join(map(repr, obj)) or 'none'}).")


def read_corpus(
    path: PathLike, *, id_keys: tuple[str, ...] = ID_KEYS, progress: bool = False
) -> Corpus:
    """A `Corpus` from a JSONL file; `title` is optional, `text` and an id are required."""
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path, progress=progress, desc=f"reading {path.name}"):
        doc_id = _field(obj, id_keys, path, line_no)
        if doc_id in line_of:
            raise DataError(f"{path}:{line_no}: duplicate document id {doc_id!r} (first seen on line {line_of[doc_id]}).")
        line_of[doc_id] = line_no
        ids.append(doc_id)
        titles.append(_field(obj, ("title",), path, line_no, required=False))
        texts.append(_field(obj, ("text",), path, line_no))
    return Corpus(ids, titles, texts)


def read_queries(path: PathLike, *, id_keys: tuple[str, ...] = ID_KEYS) -> Queries:
    """`Queries` from a JSONL file of `{id|_id, text}` records, in file order."""
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path):
        qid = _field(obj, id_keys, path, line_no)
        if qid in line_of:
            raise DataError(f"{path}:{line_no}: duplicate query id {qid!r} (first seen on line {line_of[qid]}).")
        line_of[qid] = line_no
        ids.append(qid)
        texts.append(_field(obj, ("text",), path, line_no))
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
        splits[split] = resolve_qrels(read_qrels(file), corpus_obj, queries_obj, source=Path(file))
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
