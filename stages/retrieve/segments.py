"""What both retrievers share over a segmented corpus (a collection: `stagegraph.corpora.segmented`).

* `segment_mask`: the rows of one segment a query may get: its filter mask (compiled per segment by
  `RowFilter`, cached by the segment's fingerprint; a segment never changes, so a new generation
  recompiles nothing for old segments) and-ed with the segment's live rows;
* `LoadedCache`: per-segment artefacts (BM25 postings, FAISS indexes) loaded in this process, so
  binding a new generation loads only its new segment's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from stagegraph.stages.retrieve.filtering import RowFilter


def segment_mask(row_filter: RowFilter, part: Any, query_filter: dict[str, Any] | None) -> np.ndarray | None:
    """The rows of one segment (`stagegraph.corpora.segmented.Part`) a query may get: live and allowed."""
    # the filter was checked against the whole collection (the runner does, before a search): a field
    # only other segments hold is no error here, this segment's rows just lack it
    allowed = row_filter.allowed(part.corpus, query_filter, part=True)
    if allowed is None:
        return part.live
    return allowed if part.live is None else allowed & part.live


class LoadedCache:
    """Artefacts loaded in this process, by (directory, fingerprint): segments never change, so a new
    generation reuses what the previous one loaded. Bounded (oldest dropped), thread-safe."""

    def __init__(self, size: int = 256):
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
