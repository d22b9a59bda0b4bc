"""ir_datasets ids: `load_dataset("irds:<id>")` (and `--dataset irds:<id>`) for any ir_datasets dataset
with documents, queries and qrels, read through ir_datasets itself (its registry, its download and its
cache under `$IR_DATASETS_HOME`, default `~/.ir_datasets`; `pip install ir_datasets`).

Splits follow the id. The *corpus id* is the shortest registered prefix of the id (cut at `/`) that
has documents; what follows it is the split:

* `irds:beir/scifact/test` -> corpus `beir/scifact`, split `test`;
* `irds:msmarco-passage/dev/small` -> corpus `msmarco-passage`, split `dev/small`;
* an id that is its own corpus with qrels (`irds:vaswani`, `irds:cranfield`) -> split `test`;
* an id with documents but no qrels (`irds:beir/scifact`) -> one split per registered child id with
  qrels over the same documents (`test`, `train`, ...), their queries merged.

The dataset is named `irds:<corpus id>`, so a report reads `irds:beir/scifact · test`. Judgments with a
grade <= 0 are left out (trec_eval's rule, as for BEIR folders); documents are `(doc_id, title, text)`
from the fields of that name, else the document's `default_text()`.
"""

from __future__ import annotations

from typing import Any

from stagegraph.corpora.qrels import resolve_qrels
from stagegraph.corpora.types import Corpus, DataError, Dataset, Qrels, Queries

PREFIX = "irds:"
DEFAULT_SPLIT = "test"
SITE = "https://ir-datasets.com"


def is_irds(name: str) -> bool:
    return name.startswith(PREFIX)


def _library() -> Any:
    try:
        import ir_datasets
    except ImportError:
        raise DataError("irds: ids are read by ir_datasets, which is not installed; pip install ir_datasets "
                        "(or pip install \"stagegraph[irds]\")") from None
    return ir_datasets


def _registered(ir_datasets: Any, dataset_id: str) -> Any | None:
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        return None


def split_of(dataset_id: str) -> tuple[str, str]:
    """(corpus id, split) of an ir_datasets id: the shortest registered prefix with documents, and the
    rest of the id (`test` when the id is the corpus itself)."""
    ir_datasets = _library()
    parts = dataset_id.split("/")
    for cut in range(1, len(parts)):
        root = "/".join(parts[:cut])
        found = _registered(ir_datasets, root)
        if found is not None and found.has_docs():
            return root, "/".join(parts[cut:])
    return dataset_id, DEFAULT_SPLIT


def _unreachable(dataset_id: str, exc: BaseException) -> DataError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return DataError(
        f"irds:{dataset_id}: ir_datasets could not read it ({type(exc).__name__}: {first}); ir_datasets downloads "
        f"it into $IR_DATASETS_HOME (~/.ir_datasets) on first use: connect to the network once and retry, or "
        f"put its files there as {SITE} describes for {dataset_id!r} (some need a manual download)"
    )


def _text(record: Any, field: str = "text") -> str:
    value = getattr(record, field, None)
    if isinstance(value, str):
        return value
    default = getattr(record, "default_text", None)
    return default() if callable(default) else ""


def _corpus(handler: Any) -> Corpus:
    ids, titles, texts = [], [], []
    has_title = "title" in getattr(handler.docs_cls(), "_fields", ())
    for doc in handler.docs_iter():
        ids.append(doc.doc_id)
        titles.append(doc.title or "" if has_title else "")
        texts.append(_text(doc))
    return Corpus(ids, titles, texts)


def _raw_qrels(dataset: Any) -> dict[str, dict[str, int]]:
    raw: dict[str, dict[str, int]] = {}
    for qrel in dataset.qrels_iter():
        if int(qrel.relevance) > 0:
            raw.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
    return raw


def _children(ir_datasets: Any, dataset_id: str, docs: Any) -> dict[str, Any]:
    """Registered ids under `dataset_id` with queries and qrels over the same documents: split -> dataset."""
    out = {}
    for name in sorted(ir_datasets.registry):
        if name.startswith(dataset_id + "/"):
            child = _registered(ir_datasets, name)
            if child is not None and child.has_queries() and child.has_qrels() and child.has_docs() \
                    and child.docs_handler() is docs:
                out[name[len(dataset_id) + 1:]] = child
    return out


def load_irds(name: str, *, progress: bool = True) -> Dataset:
    """The `Dataset` of `irds:<id>` (see the module's docstring for how the id gives the split)."""
    dataset_id = name[len(PREFIX):].strip("/") if is_irds(name) else name
    ir_datasets = _library()
    found = _registered(ir_datasets, dataset_id)
    if found is None:
        raise DataError(f"irds:{dataset_id}: no such ir_datasets id; the ids are listed at {SITE} "
                        "(e.g. irds:beir/scifact/test, irds:msmarco-passage/dev/small)")
    if not found.has_docs():
        raise DataError(f"irds:{dataset_id}: this ir_datasets id has no documents; give one that has documents, "
                        "queries and qrels (see its page on ir-datasets.com)")
    root, split = split_of(dataset_id)
    if found.has_queries() and found.has_qrels():
        parts = {split: found}
    else:
        parts = _children(ir_datasets, dataset_id, found.docs_handler())
        if not parts:
            raise DataError(f"irds:{dataset_id}: this ir_datasets id has no queries and qrels (and no registered "
                            "sub-id with them); give the id of a split, e.g. irds:beir/scifact/test")
    try:
        corpus = _corpus(found.docs_handler())
        texts: dict[str, str] = {}
        raws = {}
        for part, dataset in parts.items():
            for query in dataset.queries_iter():
                texts.setdefault(query.query_id, _text(query))
            raws[part] = _raw_qrels(dataset)
    except DataError:
        raise
    except Exception as exc:  # a failed download, a missing manual file, an unreadable cache
        raise _unreachable(dataset_id, exc) from exc
    queries = Queries(list(texts), list(texts.values()))
    qrels: dict[str, Qrels] = {
        part: resolve_qrels(raw, corpus, queries, source=f"irds:{root}/{part} qrels" if part != DEFAULT_SPLIT or
                            root != dataset_id else f"irds:{root} qrels", queries_source=f"irds:{dataset_id} queries")
        for part, raw in raws.items()
    }
    return Dataset(f"{PREFIX}{root}", corpus, queries, qrels)
