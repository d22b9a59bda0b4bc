"""Cancelling a run between its steps: the hook a long-lived caller (the HTTP server) uses to drop work.

A caller that may give up on a run (its deadline passed, its client left) runs it inside
`cancellable(is_cancelled)`; the executor calls `checkpoint()` before each level of a pipeline
(and before each step in batch mode), which raises `Cancelled` once `is_cancelled()` is true, so the
rest of the run (a reranker after the first stages, say) is never computed. A step already running
finishes: stages are not interrupted inside. Without `cancellable` the checkpoints cost one
context-variable read each and never raise.

The check is a context variable, so it holds in the thread that entered `cancellable`, in what that
thread calls, and in the pipeline's branch threads (the executor runs each branch in a copy of the
caller's context); checkpoints run in the calling thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from stagegraph.errors import StagegraphError

_check: ContextVar[Callable[[], bool] | None] = ContextVar("stagegraph_cancel_check", default=None)


class Cancelled(StagegraphError):
    """The run was cancelled by its caller (a deadline or a departed client); nothing to fix."""


@contextlib.contextmanager
def cancellable(is_cancelled: Callable[[], bool]) -> Iterator[None]:
    """Within the block, `checkpoint()` raises `Cancelled` as soon as `is_cancelled()` is true."""
    token = _check.set(is_cancelled)
    try:
        yield
    finally:
        _check.reset(token)


def cancelled() -> bool:
    """True when the run this thread is doing has been cancelled."""
    check = _check.get()
    return bool(check is not None and check())


def checkpoint() -> None:
    """Raise `Cancelled` if the run this thread is doing has been cancelled."""
    if cancelled():
        raise Cancelled("the run was cancelled by its caller (deadline passed or client gone)")
