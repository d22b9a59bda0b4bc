"""`LoadedOnce`: what a module loads once per process (a model, a tokenizer), by key, and keeps.

Loading a model costs seconds and its memory; a pipeline rebound to a collection's next generation, a
second stage of the same model and every thread then share the one loaded object (inference only, so
sharing is safe). Thread-safe; the lock is re-entrant, so a loader may load another object through
the same registry (an assembler its tokenizer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class LoadedOnce:
    """Objects made once per process by `get(key, make)`, kept for the life of the process."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        self._lock = threading.RLock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The object kept under `key`, made by `make()` the first time (one maker at a time)."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                found = self._items[key] = make()
            return found
