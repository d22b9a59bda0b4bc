"""`stagegraph.open(CONFIG, collection=DIR)`: the retrieval stack an application holds.

    with stagegraph.open("hybrid-rerank", collection="notes.sg") as stack:
        result = stack.search("how do I quantise a 7B model?", k=5)
        for hit in result.hits:
            prompt_context.append(hit.as_candidate())      # the chapter's dict form
        stack.upsert([{"id": "new.md", "text": "..."}])       # durable when it returns
        stack.refresh()                                       # (upsert already refreshed this stack)

The stack is one `Pipeline` value bound to one generation of a `Collection` (a `Runner`).
`search` is safe from any number of threads. `refresh()` binds the same pipeline value to the new
generation beside the runner in use (`Runner.rebind`: loaded models are shared, so only the
indexes load), then swaps it in; searches in flight finish on the generation they started on, and
the old runner is closed when the last of them is done. A search therefore always sees one
generation's chunks and indexes, never a mix, and its `SearchResult.generation` says which.
`prepare` (optional) is called with each new runner before it is swapped in (a server wraps its
reranker's scorer there), `on_refresh` with each generation number once searches see it, and
`guard` (a context manager factory) around each binding of a new generation (a server passes its
compute slots, so a refresh never runs beside more searches than the cores allow).

Near real time: a stack watches the collection's `CURRENT` file (a few bytes, read every `watch`
seconds, 0.25 by default, in a background thread) and refreshes by itself when another process (a
cron `stagegraph ingest`, another writer, a server) publishes a generation, so what it searches is
at most `watch` seconds plus the binding behind. Polling was chosen over inotify: it needs no
platform library, works on network file systems where inotify does not see another machine's
writes, and costs one small read per interval. A refresh that fails (a damaged generation) is
logged once and the stack keeps searching the generation it has. `watch=None` turns it off
(`refresh()` is then the only way to move).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from stagegraph.collection.collection import Collection
from stagegraph.collection.context import ContextResult, GenerationChunks, assembler_for, context_config
from stagegraph.collection.generation import Generation, read_current
from stagegraph.collection.sharded import ShardedCollection, open_collection
from stagegraph.corpora.ingest import Document
from stagegraph.collection.layout import CollectionError
from stagegraph.errors import InputError
from stagegraph.pipeline.compose import Pipeline
from stagegraph.collection.reranker_record import with_installed
from stagegraph.pipeline.hits import SearchResult
from stagegraph.pipeline.loss import LossTrace
from stagegraph.pipeline.runner import Runner
from stagegraph.pipeline.stage import ReadOnlyRefusal

log = logging.getLogger("stagegraph.collection")

#: seconds between two looks at `CURRENT` for a generation published by another process
WATCH_INTERVAL_S = 0.1


class _Live:
    """A generation, the pipeline bound to it (None while it has no chunks), and its searches."""

    def __init__(self, runner: Runner | None, generation: Generation):
        self.runner = runner
        self.generation = generation
        self.users = 0
        self.retired = False

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


class Stack:
    """A pipeline over a collection: search, write, refresh (see the module docstring)."""

    def __init__(self, config: Any, collection: Collection | ShardedCollection, *, prepare: Callable[[Runner], None] | None = None,
                 on_refresh: Callable[[int], None] | None = None, watch: float | None = WATCH_INTERVAL_S,
                 guard: Callable[[], ContextManager[Any]] | None = None,
                 bind: Callable[[Pipeline, Any, Runner | None], Runner] | None = None):
        self.collection = collection
        #: how each generation is bound: `bind(pipeline, collection, previous runner)` (None: in this
        #: process; a sharded collection on Ray binds its retrievers to the shards' actors)
        self._binder = bind
        #: the pipeline value every generation is bound to
        self.pipeline: Pipeline = _pipeline_of(config, collection)
        self._prepare = prepare
        self._on_refresh = on_refresh
        self._guard = guard or contextlib.nullcontext
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time: the watcher's or a writer's
        self._closed = False
        self._failed: str | None = None  # the last refresh failure logged (logged once)
        self._live = self._bind(None)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, args=(float(watch),), daemon=True,
                                             name=f"stagegraph-watch-{collection.layout.root.name}")
            self._watcher.start()

    def _watch(self, interval: float) -> None:
        """Refresh whenever `CURRENT` names another generation than the one searched (background)."""
        while not self._stop.wait(interval):
            try:
                if read_current(self.collection.layout) != self._live.generation.number:
                    self.refresh()
                self._failed = None
            except Exception as exc:  # noqa: BLE001 - keep serving what we have; say why once
                line = f"{type(exc).__name__}: {exc}"
                if line != self._failed:
                    log.warning("stack of %s: cannot move to the newest generation, still searching generation %d: %s",
                                self.collection.layout.root, self._live.generation.number, line)
                    self._failed = line

    def _bind(self, previous: Runner | None) -> _Live:
        generation = self.collection.generation
        runner = None
        if generation.live_chunks:
            try:
                if self._binder is not None:
                    runner = self._binder(self.pipeline, self.collection, previous)
                else:
                    env = self.collection.environment()
                    runner = previous.rebind(env) if previous is not None else self.pipeline.bind(env)
            except ReadOnlyRefusal as exc:
                raise CollectionError(_not_built_for(self.collection, exc.stage, self.pipeline)) from None
            if self._prepare is not None:
                self._prepare(runner)
        return _Live(runner, generation)

    @property
    def runner(self) -> Runner | None:
        """The pipeline bound to the current generation (None while the collection has no chunks)."""
        return self._live.runner

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
            live.close()

    def search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> SearchResult:
        """The top `k` hits for `query` in the current generation, among the chunks `filter` allows
        (`stagegraph.corpora.filters`; checked against the collection's metadata); an empty
        collection has no hits. A filtered search that finds nothing says why in `hint`."""
        live = self._acquire()
        try:
            if live.runner is None:
                if not isinstance(query, str) or not query.strip():
                    raise InputError("the query is empty; give a question or keywords")
                return SearchResult(query=query, hits=[], generation=live.generation.number, hint=_empty_hint(filter))
            result = live.runner.search(query, k=k, filter=filter)
            result.generation = live.generation.number
            return result
        finally:
            self._release(live)

    def explain(self, query: str, doc_id: str, k: int = 10, filter: dict[str, Any] | None = None) -> LossTrace:
        """Why `doc_id` is not (or is) in `query`'s top `k` in the current generation: every stage's rank
        of it and the step that lost it (`stagegraph.pipeline.runner.Runner.explain`)."""
        live = self._acquire()
        try:
            if live.runner is None:
                raise InputError("the collection is empty: nothing to explain; ingest documents first")
            return live.runner.explain(query, doc_id, k=k, filter=filter)
        finally:
            self._release(live)

    def context(self, query: str, budget_tokens: int, *, filter: dict[str, Any] | None = None,
                **options: Any) -> ContextResult:
        """The chunks to put in an LLM prompt for `query`, at most `budget_tokens` tokens in all, each with
        its source (`stagegraph.collection.context`; `options` are `ContextConfig`'s: tokenizer,
        mmr_lambda, candidates, dedup_threshold, expand, neighbours, separator, template)."""
        options.setdefault("tokenizer", _dense_model(self.pipeline))
        config = context_config(budget_tokens=budget_tokens, **options)
        assembler = assembler_for(config.tokenizer)  # the tokenizer loads once per process, not per call
        live = self._acquire()
        try:
            if live.runner is None:
                result = self.search(query, k=1, filter=filter)  # the empty query's error, or no hits
                return assembler.assemble(result, config, None)
            result = live.runner.search(query, k=config.candidates, filter=filter)
            result.generation = live.generation.number
            return assembler.assemble(result, config, GenerationChunks(live.runner, live.generation, assembler.encoder))
        finally:
            self._release(live)

    def chunk_vectors(self, ids: list[str]) -> np.ndarray:
        """Unit vectors of the current generation's chunks `ids` (read from the dense stage's index; encoded
        by the dense model where the pipeline has no dense stage here): what context assembly compares."""
        live = self._acquire()
        try:
            if live.runner is None or not ids:
                return np.empty((0, 0), dtype=np.float32)
            encoder = assembler_for(_dense_model(self.pipeline)).encoder
            return GenerationChunks(live.runner, live.generation, encoder).vectors(list(ids))
        finally:
            self._release(live)

    def search_batch(self, queries: Iterable[str], k: int = 10, filter: dict[str, Any] | None = None) -> list[SearchResult]:
        live = self._acquire()
        try:
            texts = list(queries)
            if live.runner is None:
                return [SearchResult(query=q, hits=[], generation=live.generation.number, hint=_empty_hint(filter))
                        for q in texts]
            results = live.runner.search_batch(texts, k=k, filter=filter)
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

    @property
    def current(self) -> Generation:
        """The generation searches see now (its chunks, documents and manifest)."""
        return self._live.generation

    def refresh(self) -> bool:
        """Move to the newest published generation (True when it changed)."""
        # the guard (a compute slot) first, then the refresh lock: the order every caller takes them in,
        # so a writer holding a slot and the watcher waiting for one never wait on each other
        with self._guard(), self._refreshing:
            if self._closed:
                return False
            self.collection.refresh()
            if self.collection.generation.number == self._live.generation.number:
                return False
            fresh = self._bind(self._live.runner)
            with self._lock:
                old, self._live = self._live, fresh
                old.retired = True
                idle = old.users == 0
            if idle:
                old.close()
        log.info("stack of %s: searching generation %d", self.collection.layout.root, fresh.generation.number)
        if self._on_refresh is not None:
            self._on_refresh(fresh.generation.number)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)
        with self._refreshing:
            self._closed = True
        with self._lock:
            live = self._live
            live.retired = True
            idle = live.users == 0
        if idle:
            live.close()
        self.collection.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dense_model(pipeline: Pipeline) -> str:
    """The model of the pipeline's first dense stage (the tokenizer a context is measured in by default)."""
    from stagegraph.indexes.encoder import DEFAULT_MODEL

    for step in pipeline.steps:
        if getattr(step.stage, "type_name", None) == "dense":
            return str(getattr(step.stage.config, "model", None) or DEFAULT_MODEL)
    return DEFAULT_MODEL


def _empty_hint(filter: dict[str, Any] | None) -> str | None:
    """The hint of a filtered search of a collection with no chunks."""
    return "the collection holds no chunks yet" if filter else None


def _not_built_for(collection: Collection | ShardedCollection, stage: str, pipeline: Pipeline) -> str:
    """What to do when a pipeline needs an index the collection was not built with: the exact rebuild."""
    from stagegraph.pipeline.config import ConfigError, resolve_path

    try:
        resolve_path(pipeline.name)  # a bundled config (or a file here) of that name: the command can name it
        config = pipeline.name
    except (ConfigError, OSError, ValueError):
        config = "CONFIG"
    own = [step.name for step in Pipeline.from_config(collection.settings.pipeline).steps]
    paths = [row["label"] for row in collection.sources() if row["source"].startswith("path:")]
    others = [row["label"] for row in collection.sources() if not row["source"].startswith("path:")]
    command = (f"stagegraph ingest {' '.join(paths) or 'PATH'} --collection NEW_DIR --config {config}"
               + (f" --shards {collection.shard_count}" if isinstance(collection, ShardedCollection) else ""))
    again = f" (documents written from {', '.join(others)} must be written there again)" if others else ""
    return (f"stage {stage!r} needs an index the collection {collection.layout.root} was not built with (its pipeline "
            f"has the stages {', '.join(own)}); search with a config of those stages, or rebuild into a new directory "
            f"with this one: `{command}`{again}")


def _pipeline_of(config: Any, collection: Collection | ShardedCollection) -> Pipeline:
    if config is None:
        return Pipeline.from_config(collection.settings.pipeline, source=str(collection.layout.settings))
    if isinstance(config, Pipeline):
        return config  # a value: every generation binds it, none changes it
    if isinstance(config, dict):
        return Pipeline.from_config(config)
    return Pipeline.from_yaml(config)


def open_stack(config: Any = None, *, collection: str | Path, progress: bool = False,
               watch: float | None = WATCH_INTERVAL_S, reranker: str | None = None) -> Stack:
    """The stack of `config` (a YAML path or bundled name, a dict, a Pipeline; None: the collection's
    own pipeline) over the collection at `collection`; it picks up generations other processes publish
    within `watch` seconds (None: only on `refresh()`). `reranker` (a model id or local path) is the
    model of every cross-encoder stage; without it `$STAGEGRAPH_RERANKER`, when set, is, else the
    reranker `stagegraph train-reranker --collection` installed in the collection, as for the command
    line's `--reranker` (`stagegraph.pipeline.config.with_reranker` holds that rule). With no config, an
    installed reranker is appended to the collection's own pipeline when that has no cross-encoder."""
    store = open_collection(collection, progress=progress)
    try:
        pipeline = _pipeline_of(config, store)
        own = pipeline.to_config()
        chosen = with_installed(own, store.layout.root, reranker, append=config is None)
        if chosen != own:
            pipeline = Pipeline.from_config(chosen)
        return Stack(pipeline, store, watch=watch)
    except BaseException:
        store.close()
        raise
