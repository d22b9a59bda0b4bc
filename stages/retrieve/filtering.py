"""The rows a retriever may return for one query: its own `filter` setting and the query's, and-ed.

Both retrievers apply the mask inside their search, before their top k (BM25 in its scoring
kernel, dense through FAISS's selector or an exact search over the allowed rows), so each returns
its best k *among allowed documents* and nothing downstream (the pool, the reranker) ever sees a
disallowed one. Masks are compiled once per (corpus, filter) and kept for the next queries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from stagegraph.corpora.filters import MetadataIndex, combine
from stagegraph.corpora.types import Corpus

_CACHE_SIZE = 256


class RowFilter:
    """Compiles and caches the masks of one stage (thread-safe)."""

    def __init__(self, stage_filter: dict[str, Any] | None = None):
        self.stage_filter = stage_filter
        self._masks: OrderedDict[tuple[str, str, bool], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def allowed(self, corpus: Corpus, query_filter: dict[str, Any] | None, *, part: bool = False) -> np.ndarray | None:
        """A bool per corpus row (None: no filter applies). `part`: `corpus` is one segment of a
        collection the filter was checked against as a whole (`MetadataIndex.mask(part=True)`)."""
        expression = combine(self.stage_filter, query_filter)
        if expression is None:
            return None
        key = (corpus.fingerprint, repr(expression), part)  # cheap; an equal filter written in another order only misses
        with self._lock:
            mask = self._masks.get(key)
            if mask is not None:
                self._masks.move_to_end(key)
                return mask
        mask = MetadataIndex.of(corpus).mask(expression, part=part)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > _CACHE_SIZE:
                self._masks.popitem(last=False)
        return mask

