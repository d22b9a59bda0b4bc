"""Setting torch's and FAISS's intra-op thread counts: the one place that calls their setters.

Both counts belong to the calling thread (OpenMP keeps them per thread; torch initialises a thread's
count lazily from the last one set anywhere, so it is read first to settle that). Only libraries
already imported are touched, so a BM25-only process never imports torch. `limited(n)` sets both
for a block and puts back what was there; `stagegraph.pipeline.threads` decides the counts a
pipeline's stages run with, and index builds and benchmarks use `limited`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

LIBRARIES = (("torch", "get_num_threads", "set_num_threads"), ("faiss", "omp_get_max_threads", "omp_set_num_threads"))


def current() -> dict[str, int]:
    """The calling thread's count in each imported library."""
    return {name: getattr(module, get)() for name, get, _ in LIBRARIES if (module := sys.modules.get(name)) is not None}


def set_counts(n: int, only: dict[str, int] | None = None) -> None:
    """Set every imported library's count to `n` for the calling thread (`only`: per-library counts)."""
    for name, get, put in LIBRARIES:
        module = sys.modules.get(name)
        if module is None:
            continue
        want = n if only is None else only.get(name)
        if want is not None and getattr(module, get)() != want:
            getattr(module, put)(want)


@contextlib.contextmanager
def limited(n: int | None) -> Iterator[None]:
    """Both counts set to `n` for the block, then put back (`None`: left as they are)."""
    if not n:
        yield
        return
    before = current()
    set_counts(n)
    try:
        yield
    finally:
        set_counts(0, only=before)
