"""From chunk rankings to document rankings, so a chunked collection is judged by document qrels.

A user who chunks a collection still judges relevance per document (BEIR's qrels are per document
too). Each stage's ranking of chunks becomes a ranking of the documents those chunks come from, by
a stated rule:

* `maxp` (default): a document scores its best chunk (Dai & Callan, SIGIR 2019);
* `firstp`: a document scores its first chunk among those retrieved (the lowest chunk index);
* `sum`: a document scores the sum of its retrieved chunks' scores.

Documents are ordered by that score, ties by document row (the `Ranking` contract; a collection's
documents are in id order). The rows of the document rankings index `documents`, a corpus of the
collection's document ids, which the qrels are matched against. `chunks_per_document` says how many chunks of each retrieved
document the stage returned, on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stagegraph.corpora.types import Corpus
from stagegraph.errors import InputError
from stagegraph.pipeline.ranking import Ranking

Aggregation = Literal["maxp", "firstp", "sum"]
AGGREGATIONS = ("maxp", "firstp", "sum")


@dataclass
class DocumentRuns:
    documents: Corpus
    rankings: list[Ranking]
    chunks_per_document: float


def document_corpus(chunks: Corpus) -> tuple[Corpus, np.ndarray]:
    """A corpus of the documents the chunks come from (in id order, so that documents of equal score
    rank by id whatever order the chunks are stored in), and each chunk's document row."""
    if chunks.doc_ids is None:
        raise InputError("document aggregation needs a chunked corpus (a collection): this corpus has no document ids")
    doc_ids = list(chunks.doc_ids)
    ids = sorted(set(doc_ids))
    order = {d: i for i, d in enumerate(ids)}
    doc_of_row = np.fromiter((order[d] for d in doc_ids), dtype=np.int64, count=len(chunks))
    return Corpus(ids, [""] * len(ids), [""] * len(ids)), doc_of_row


def chunk_index(chunk_id: str) -> int:
    tail = chunk_id.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def to_documents(rankings: Sequence[Ranking], chunks: Corpus, how: Aggregation = "maxp",
                 documents: tuple[Corpus, np.ndarray] | None = None) -> DocumentRuns:
    """Every chunk ranking as a document ranking (see the module docstring)."""
    if how not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    doc_corpus, doc_of_row = documents or document_corpus(chunks)
    index_of_row = np.fromiter((chunk_index(i) for i in chunks.ids), dtype=np.int64, count=len(chunks))
    out, counts = [], []
    for ranking in rankings:
        if not len(ranking):
            out.append(Ranking.empty())
            continue
        docs = doc_of_row[ranking.doc_rows]
        unique, inverse, count = np.unique(docs, return_inverse=True, return_counts=True)
        scores = ranking.scores.astype(np.float64)
        if how == "maxp":
            agg = np.full(len(unique), -np.inf)
            np.maximum.at(agg, inverse, scores)
        elif how == "sum":
            agg = np.zeros(len(unique))
            np.add.at(agg, inverse, scores)
        else:  # firstp: the retrieved chunk with the lowest chunk index
            chunk_no = index_of_row[ranking.doc_rows]
            best = np.full(len(unique), np.iinfo(np.int64).max)
            np.minimum.at(best, inverse, chunk_no)
            agg = np.empty(len(unique))
            pick = chunk_no == best[inverse]
            agg[inverse[pick]] = scores[pick]
        out.append(Ranking.from_scores(unique, agg.astype(np.float32)))
        counts.append(count)
    per_doc = float(np.concatenate(counts).mean()) if counts else 0.0
    return DocumentRuns(doc_corpus, out, per_doc)
