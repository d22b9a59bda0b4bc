"""`stagegraph.open(CONFIG, collection=DIR)`: the retrieval stack an application holds.

    with stagegraph.open("hybrid-rerank", collection="notes.sg") as stack:
        result = stack.search("how do I quantise a 7B model?", k=5)
        for hit in result.hits:
            prompt_context.append(hit.as_candidate())      # the chapter's dict form
        stack.upsert([{"id": "new.md", "text": "..."}])       # durable when it returns
        stack.refresh()                                       # (upsert already refreshed this stack)

The stack is one `Pipeline` warmed up on one generation of a `Collection`. `search` is safe from
any number of threads. `refresh()` builds a second pipeline on the new generation beside the one
in use (models are shared, so only the indexes load), then swaps it in; searches in flight finish
on the generation they started on, and the old pipeline is closed when the last of them is done.
A search therefore always sees one generation's chunks and indexes, never a mix, and its
`SearchResult.generation` says which. `prepare` (optional) is called with each newly warmed pipeline
before it is swapped in (a server wraps its reranker's scorer there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stagegraph.collection.collection import Collection
from stagegraph.collection.generation import Generation
from stagegraph.corpora.ingest import Document
from stagegraph.errors import InputError
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.hits import SearchResult


class _Live:
    """A warmed pipeline, its generation, and how many searches are using it."""

    def __init__(self, pipeline: Pipeline, generation: Generation):
        self.pipeline = pipeline
        self.generation = generation
        self.users = 0
        self.retired = False


class Stack:
    """A pipeline over a collection: search, write, refresh (see the module docstring)."""

    def __init__(self, config: Any, collection: Collection, *, prepare: Callable[[Pipeline], None] | None = None):
        self.collection = collection
        self._config = config
        self._prepare = prepare
        self._lock = threading.Lock()
        self._live = self._warm()

    def _warm(self) -> _Live:
        generation = self.collection.generation
        pipeline = _pipeline_of(self._config, self.collection)
        if len(generation.corpus):
            pipeline.warm_up(self.collection.environment())
        if self._prepare is not None:
            self._prepare(pipeline)
        return _Live(pipeline, generation)

    @property
    def pipeline(self) -> Pipeline:
        return self._live.pipeline

    @property
    def generation(self) -> int:
        return self._live.generation.number

    # -- searching ------------------------------------------------------------------------------
    def _acquire(self) -> _Live:
        with self._lock:
            live = self._live
            live.users += 1
            return live

    def _release(self, live: _Live) -> None:
        with self._lock:
            live.users -= 1
            done = live.retired and live.users == 0
        if done:
            live.pipeline.close()

    def search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> SearchResult:
        """The top `k` hits for `query` in the current generation, among the chunks `filter` allows
        (`stagegraph.corpora.filters`; checked against the collection's metadata); an empty
        collection has no hits."""
        live = self._acquire()
        try:
            if not len(live.generation.corpus):
                if not isinstance(query, str) or not query.strip():
                    raise InputError("the query is empty; give a question or keywords")
                return SearchResult(query=query, hits=[], generation=live.generation.number)
            result = live.pipeline.search(query, k=k, filter=filter)
            result.generation = live.generation.number
            return result
        finally:
            self._release(live)

    def search_batch(self, queries: Iterable[str], k: int = 10, filter: dict[str, Any] | None = None) -> list[SearchResult]:
        live = self._acquire()
        try:
            texts = list(queries)
            if not len(live.generation.corpus):
                return [SearchResult(query=q, hits=[], generation=live.generation.number) for q in texts]
            results = live.pipeline.search_batch(texts, k=k, filter=filter)
            for result in results:
                result.generation = live.generation.number
            return results
        finally:
            self._release(live)

    # -- writing --------------------------------------------------------------------------------
    def add(self, documents: Iterable[Document | dict[str, Any]]) -> int:
        """Add documents, publish them and move this stack to the new generation; returns it."""
        self.collection.add(documents)
        self.refresh()
        return self.generation

    def update(self, documents: Iterable[Document | dict[str, Any]]) -> int:
        self.collection.update(documents)
        self.refresh()
        return self.generation

    def upsert(self, documents: Iterable[Document | dict[str, Any]]) -> int:
        self.collection.upsert(documents)
        self.refresh()
        return self.generation

    def delete(self, doc_ids: Iterable[str]) -> int:
        self.collection.delete(doc_ids)
        self.refresh()
        return self.generation

    def refresh(self) -> bool:
        """Move to the newest published generation (True when it changed)."""
        self.collection.refresh()
        if self.collection.generation.number == self._live.generation.number:
            return False
        fresh = self._warm()
        with self._lock:
            old, self._live = self._live, fresh
            old.retired = True
            idle = old.users == 0
        if idle:
            old.pipeline.close()
        return True

    def close(self) -> None:
        with self._lock:
            live = self._live
            live.retired = True
            idle = live.users == 0
        if idle:
            live.pipeline.close()
        self.collection.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pipeline_of(config: Any, collection: Collection) -> Pipeline:
    if config is None:
        return Pipeline.from_config(collection.settings.pipeline, source=str(collection.layout.settings))
    if isinstance(config, Pipeline):
        return Pipeline.from_config(config.to_config())  # a fresh copy: each generation gets its own stages
    if isinstance(config, dict):
        return Pipeline.from_config(config)
    return Pipeline.from_yaml(config)


def open_stack(config: Any = None, *, collection: str | Path, progress: bool = False) -> Stack:
    """The stack of `config` (a YAML path or bundled name, a dict, a Pipeline; None: the collection's
    own pipeline) over the collection at `collection`."""
    return Stack(config, Collection.open(collection, progress=progress))
