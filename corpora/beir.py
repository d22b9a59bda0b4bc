"""BEIR directories: `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`, into one `Dataset`.

Follows BEIR's `GenericDataLoader` layout: corpus lines `{"_id", "title", "text"}`, query lines
`{"_id", "text"}`, qrels TSVs with the header `query-id corpus-id score`. Every split found under
`qrels/` is loaded. Errors name the file and line (see `stagegraph.corpora.jsonl` and `stagegraph.corpora.qrels`).
"""

from __future__ import annotations

import os
from pathlib import Path

from stagegraph.corpora.jsonl import read_corpus, read_queries
from stagegraph.corpora.qrels import BEIR_HEADER_TEXT, read_beir_qrels, resolve_qrels
from stagegraph.corpora.types import DataError, Dataset, Qrels

PathLike = str | os.PathLike


def beir_files(path: PathLike) -> tuple[Path, Path, dict[str, Path]]:
    """The corpus, queries and `{split: qrels}` paths of a BEIR directory; `DataError` if one is missing."""
    root = Path(path)
    layout = "the folder that holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
    if not root.is_dir():
        if root.exists():
            raise DataError(f"{root}: is a file, not a directory. Pass {layout}.")
        raise DataError(f"{root}: not a directory (no such folder). Pass {layout}.")
    corpus, queries, qrels_dir = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels"
    for entry in (corpus, queries):
        if entry.is_dir():
            raise DataError(f"{entry}: is a directory, not a file; {entry.name} must be a JSONL file (one JSON object per line).")
    if qrels_dir.exists() and not qrels_dir.is_dir():
        raise DataError(f"{qrels_dir}: is a file, not a folder; BEIR keeps judgments in qrels/<split>.tsv (e.g. qrels/test.tsv).")
    missing = [p.name for p in (corpus, queries) if not p.is_file()]
    if not qrels_dir.is_dir():
        missing.append("qrels/")
    if missing:
        raise DataError(
            f"{root}: not a BEIR directory, missing {', '.join(missing)} "
            "(expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv); add them, or pass the folder that holds them."
        )
    splits = {p.stem: p for p in sorted(qrels_dir.glob("*.tsv")) if p.is_file()}
    if not splits:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in qrels_dir.iterdir())
        found = f"it holds {', '.join(present[:5])}" if present else "it is empty"
        raise DataError(
            f"{qrels_dir}: no <split>.tsv qrels files ({found}); put the judgments in qrels/test.tsv "
            f"(header {BEIR_HEADER_TEXT}, one row per judged pair)."
        )
    return corpus, queries, splits


def is_beir_dir(path: PathLike) -> bool:
    try:
        beir_files(path)
    except DataError:
        return False
    return True


def load_beir(path: PathLike, name: str | None = None, *, progress: bool = True) -> Dataset:
    """Load a BEIR directory; `name` defaults to the directory's name.

    Judgments with grade <= 0 are kept as judged non-relevant (as trec_eval keeps them); judgments naming documents absent
    from the corpus are kept, counted in each split's `Qrels.missing_docs` and warned about.
    """
    corpus_path, queries_path, split_paths = beir_files(path)
    corpus = read_corpus(corpus_path, id_keys=("_id",), progress=progress)
    queries = read_queries(queries_path, id_keys=("_id",))
    qrels: dict[str, Qrels] = {
        split: resolve_qrels(read_beir_qrels(file), corpus, queries, source=file, queries_source=queries_path)
        for split, file in split_paths.items()
    }
    return Dataset(name or Path(path).resolve().name, corpus, queries, qrels)
