"""What one search may accept and what it says back when part of the documents could not be reached.

A stage that searches documents held elsewhere (a sharded collection's shards on Ray:
`stagegraph.scale.shards`) may find a part unreachable. By default the search then fails with one
clear error. A caller that prefers an answer from the rest runs the search inside
`search_report(allow_partial=True)`; the stage records which parts it left out (`missing`) and how
often it retried on another replica (`retries`), and the caller marks its response as partial:

    with search_report(allow_partial=True) as report:
        result = stack.search("query")
    if report.missing: ...            # e.g. ["shard 2"]: these documents were not searched

The report is a context variable, so it follows the search into the pipeline's branch threads (the
executor runs each branch in a copy of the caller's context, and the report object is shared).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from stagegraph.errors import StageError


class PartUnavailable(StageError):
    """Part of the documents (a shard) could not be reached and partial results were not allowed;
    the message names the part and the fixes. A server answers it with 503 (retry later)."""


@dataclass
class SearchReport:
    """One search's partial-result permission and what its stages recorded."""

    allow_partial: bool = False
    missing: list[str] = field(default_factory=list)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def left_out(self, part: str) -> None:
        with self._lock:
            if part not in self.missing:
                self.missing.append(part)

    def retried(self, n: int = 1) -> None:
        with self._lock:
            self.retries += n


_report: ContextVar[SearchReport | None] = ContextVar("stagegraph_search_report", default=None)


@contextlib.contextmanager
def search_report(allow_partial: bool = False) -> Iterator[SearchReport]:
    """Searches in this block may return partial results when `allow_partial`; the report says."""
    report = SearchReport(allow_partial=allow_partial)
    token = _report.set(report)
    try:
        yield report
    finally:
        _report.reset(token)


def current_report() -> SearchReport:
    """The report of the search this thread runs (a fresh one, partial results refused, outside any)."""
    return _report.get() or SearchReport()
