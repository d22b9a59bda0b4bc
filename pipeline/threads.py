"""The one thread policy: how many intra-op threads torch and FAISS use, decided in one place.

torch's and FAISS's (OpenMP's) thread counts are process-wide: a stage that set them around its own
call, inside the executor's thread pool, raced with its neighbour branch and could leave the wrong
count behind. So stages never touch them; the executor asks this policy before each level of a
pipeline, while nothing of its own is running, and the policy sets both counts for the process:

    threads = max(1, cores // (branches running side by side x runs in flight in this process))

Parallel branches of one query share the cores (two branches on two cores: one thread each, which
is also what one-query encoding and FAISS search are fastest with: see `benchmarks/dense.py`); a
stage alone at its level (a reranker) gets every core; two searches in flight from two threads
halve everything again. A long-lived owner of the process (the HTTP server) can `pin` the count
once instead, sized to its worker count; the executor then leaves it alone. Warm-up (index builds,
corpus encoding) runs with every core. ONNX Runtime sessions have their own pool, sized at creation.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_state = {"active": 0, "pinned": 0}
_applied: dict[str, int] = {}  # library -> the count last set in it


def usable_cores() -> int:
    """CPUs this process may run on (its affinity), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_for(width: int, cores: int | None = None) -> int:
    """Intra-op threads for a level of `width` concurrent stage calls, given the runs in flight."""
    if _state["pinned"]:
        return _state["pinned"]
    cores = cores or usable_cores()
    return max(1, cores // (max(1, width) * max(1, _state["active"])))


def apply(n: int) -> int:
    """Set torch's and FAISS's thread counts to `n` (unless pinned); returns the count in force.

    Only libraries already imported are touched, so a BM25-only process never imports torch.
    """
    with _lock:
        if _state["pinned"]:
            n = _state["pinned"]
        for library, setter in (("torch", "set_num_threads"), ("faiss", "omp_set_num_threads")):
            module = sys.modules.get(library)
            if module is not None and _applied.get(library) != n:
                getattr(module, setter)(n)
                _applied[library] = n
        return n


def pin(n: int | None) -> None:
    """Fix the thread count for the whole process (a server sized to its workers); None unpins."""
    with _lock:
        _state["pinned"] = int(n or 0)
    if n:
        apply(int(n))


@contextlib.contextmanager
def run_in_flight() -> Iterator[None]:
    """Count one pipeline run as in flight for as long as the block lasts."""
    with _lock:
        _state["active"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["active"] -= 1


def in_flight() -> int:
    return _state["active"]
