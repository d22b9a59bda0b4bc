"""Datasets in, one `Dataset` type out: BEIR directories, TREC files, JSONL and the bundled sample."""

from stagegraph.corpora.types import Corpus, DataError, Dataset, Qrels, Queries

__all__ = ["Corpus", "DataError", "Dataset", "Qrels", "Queries"]
