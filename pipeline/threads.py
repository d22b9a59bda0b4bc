"""The one thread policy: how many intra-op threads torch and FAISS use, decided in one place.

Stages never touch thread counts; the executor asks this policy right before it calls a stage, in
the thread that makes the call, and the policy sets both counts **for that thread only**: torch's
and FAISS's OpenMP thread counts are per calling thread (an OpenMP ICV; `tests/test_runner.py`
checks it on this build), so two searches running side by side in two threads, or two branches of
one query, can never see each other's counts. The rule:

    threads = the stage's own `intra_op_threads`, if it declares one (dense query encoding: 1, since
              a one-row matmul splits differently by thread count and a query's score must not
              depend on the machine), else
              the pinned count, if the process owner pinned one (the HTTP server, Ray workers), else
              max(1, cores // stages running side by side in this query)

Parallel branches of one query share the cores (two branches on two cores: one thread each); a
stage alone at its level (a reranker) gets every core. The count does not depend on how many other
searches are in flight, so a ranking never depends on the load: concurrent searches give exactly
the scores of one search at a time (they oversubscribe the cores instead; a server sized to its
cores `pin`s the count). Binding (index builds, corpus encoding) runs with every core. ONNX
Runtime sessions have their own pool, sized at creation.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from stagegraph.thread_counts import set_counts

_lock = threading.Lock()
_state = {"pinned": 0}
_local = threading.local()  # per thread: the count this policy last set there, and for which libraries


def usable_cores() -> int:
    """CPUs this process may run on (its affinity), not the machine's count; read once per process
    (a system call per stage call would be the policy's largest cost)."""
    if not _state.get("cores"):
        if hasattr(os, "sched_getaffinity"):
            _state["cores"] = max(1, len(os.sched_getaffinity(0)))
        else:
            _state["cores"] = max(1, os.cpu_count() or 1)
    return _state["cores"]


def threads_for(width: int, stage: Any = None, cores: int | None = None) -> int:
    """Intra-op threads for `stage` when `width` stage calls of one query run side by side."""
    own = getattr(stage, "intra_op_threads", None)
    if own:
        return int(own)
    if _state["pinned"]:
        return _state["pinned"]
    cores = cores or usable_cores()
    return max(1, cores // max(1, width))


def apply(n: int) -> int:
    """Set torch's and FAISS's thread counts to `n` for the calling thread; returns `n`.

    Only libraries already imported are touched, so a BM25-only process never imports torch."""
    state = (n, "torch" in sys.modules, "faiss" in sys.modules)  # a library imported since is set too
    if getattr(_local, "applied", None) != state:
        set_counts(n)
        _local.applied = state
    return n


def pin(n: int | None) -> None:
    """Fix the thread count of every stage without its own (a server sized to its workers); None unpins."""
    with _lock:
        _state["pinned"] = int(n or 0)
    if n:
        apply(int(n))


def pinned() -> int:
    """The pinned count (0: none)."""
    return _state["pinned"]
