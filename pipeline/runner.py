"""`Runner`: a pipeline bound to one environment, the object that searches, runs and evaluates.

A `Pipeline` is a value (what the steps are); `pipe.bind(env)` gives a `Runner`, which holds
everything that belongs to one environment and nothing else does:

* each step's bound stage (`stage.bind(env)`: the index loaded or built, the model loaded), made
  once: eagerly for `bind` (an application, a server), lazily for an evaluation, where a stage
  whose rankings come from the cache is never loaded at all;
* the stages' fingerprints, computed once, on the first run that needs cache keys;
* the thread pool that runs parallel branches side by side;
* the environment's corpus, read by hits and filter checks.

`search`, `search_batch`, `run` and `execute` then do no preparation: no warm-up, no model lookup,
no fingerprint (tests/test_runner.py counts them over 100 searches). A pipeline value can be bound
any number of times, to different environments, at once, from several threads; each runner is
safe to search from any number of threads. `rebind(env)` binds the same value to another
environment (a collection's next generation) and shares what does not depend on the corpus (a
loaded model) with this one. Close a runner (or use it as a context manager) to release its
threads and files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stagegraph.corpora.filter_hints import explain_empty
from stagegraph.corpora.filters import MetadataIndex, combine
from stagegraph.corpora.types import Corpus, Queries
from stagegraph.corpora.validate import check_query
from stagegraph.errors import InputError
from stagegraph.pipeline import threads as thread_policy
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.executor import Mode, RunResult, Timing, execute
from stagegraph.pipeline.graph import Step, levels
from stagegraph.pipeline.hits import SearchResult, search_results
from stagegraph.pipeline.loss import LossTrace, trace_loss
from stagegraph.pipeline.stage import Environment, bind_stage, environment_for, release_stage

__all__ = ["Runner", "as_queries", "build_indexes"]


class Runner:
    """A `Pipeline` bound to one `Environment` (see the module docstring). `pipeline` is the
    `stagegraph.pipeline.compose.Pipeline` value (not imported here: compose imports this module)."""

    def __init__(self, pipeline: Any, env: Environment, *, eager: bool = True,
                 shared: dict[str, Any] | None = None, bind_step: Callable[[Step, Environment], Any] | None = None):
        pipeline.require_complete()
        self.pipeline = pipeline
        #: how a step is bound when not by `bind_stage` (returns None for the steps it leaves to it):
        #: a sharded collection on Ray binds its retrievers to remote shards this way
        self._bind_step = bind_step
        self.env = env
        self.steps: list[Step] = list(pipeline.steps)
        self._width = max(len(level) for level in levels(self.steps))
        self._bound: dict[str, Any] = {}
        self._binding = threading.Lock()
        self._fingerprints: dict[str, str] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        for scope_filter in {repr(s.filter): s.filter for s in self.steps if s.filter}.values():
            MetadataIndex.of(env.corpus).mask(scope_filter)  # a nested pipeline's filter that cannot apply: now
        if eager:
            try:
                for step in self.steps:
                    self._bind(step, shared)
            except BaseException:  # one stage could not bind: release what the others loaded
                self.close()
                raise

    # -- what it holds --------------------------------------------------------------------------
    @property
    def corpus(self) -> Corpus:
        return self.env.corpus

    def bound(self, step: Step | str) -> Any:
        """The bound stage of `step` (a step or its name), bound now if it was not yet."""
        if isinstance(step, str):
            step = self.pipeline.step(step)
        found = self._bound.get(step.name)
        return found if found is not None else self._bind(step, None)

    def _bind(self, step: Step, shared: dict[str, Any] | None) -> Any:
        with self._binding:
            found = self._bound.get(step.name)
            if found is not None:
                return found
            thread_policy.apply(thread_policy.threads_for(1))  # builds and loads: every core
            bound = self._bind_step(step, self.env) if self._bind_step is not None else None
            if bound is None:
                donor = (shared or {}).get(step.name)
                rebind = getattr(donor, "rebind", None) if donor is not step.stage else None
                bound = rebind(self.env) if callable(rebind) else bind_stage(step.stage, self.env)
            self._bound[step.name] = bound
            return bound

    @property
    def fingerprints(self) -> dict[str, str]:
        """Every stage's fingerprint by step name, computed once."""
        if self._fingerprints is None:
            self._fingerprints = {s.name: s.stage.fingerprint() for s in self.steps}
        return self._fingerprints

    def _branch_pool(self) -> ThreadPoolExecutor | None:
        if self._width < 2:
            return None
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._width, thread_name_prefix="stagegraph-branch")
            return self._pool

    # -- running --------------------------------------------------------------------------------
    def execute(
        self,
        queries: Queries | Iterable[str] | str,
        *,
        mode: Mode = "online",
        cache: StageCache | None = None,
        warmup: int = 0,
        timing: Timing = "concurrent",
        progress: bool | None = None,
        executor: Any = None,
    ) -> RunResult:
        """Run every step over `queries`: each step's rankings and timings (`stagegraph.pipeline.executor`).

        `executor`: a distributed executor object (`stagegraph.scale.RayExecutor`) that runs the batch
        instead of this process; configs name one (`executor: ray`), `evaluate` opens it."""
        queries = as_queries(queries)
        if self.pipeline.filter:
            queries = Queries(queries.ids, queries.texts,
                              [combine(self.pipeline.filter, queries.filter_of(i)) for i in range(len(queries))])
        if executor is not None:
            if not hasattr(executor, "execute"):
                raise InputError(f"executor must be an executor object such as stagegraph.scale.RayExecutor, not {executor!r}; "
                                 "to name one (`ray`), give it to evaluate() or the pipeline's `executor:`")
            return executor.execute(self.pipeline, queries, self.env, mode=mode, cache=cache, progress=progress)
        return execute(
            self.steps, queries, self.env, bind=self.bound,
            fingerprints=self.fingerprints if cache is not None else None, mode=mode, cache=cache,
            warmup=warmup, timing=timing, progress=progress, pool=self._branch_pool(),
        )

    def run(self, queries: Queries | Iterable[str] | str) -> list:
        """One ranking per query from the output step, all queries at once (batch mode)."""
        return self.execute(as_queries(queries), mode="batch", progress=False).final

    def search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> SearchResult:
        """The top `k` hits for one query, each with its rank and score at every step, and the timings.

        `filter` (`stagegraph.corpora.filters`) is checked against the corpus' metadata now (an
        unknown field or an operator that does not fit is an `InputError` naming the fields that
        exist) and applied inside every retriever before its top k. A filtered search that finds
        nothing says why in `hint` (`stagegraph.corpora.filter_hints.explain_empty`: the values the filter's
        fields hold, counted among the chunks the pipeline's own filter allows)."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; give a question or keywords")
        check_query(query)  # a lone surrogate or a control character: an InputError, not a crash in a stage
        if k < 1:
            raise InputError(f"k must be a positive number of hits, got {k}")
        self.check_filter(filter)
        result = self.execute(Queries.single(query, filter=filter), mode="online", progress=False)
        return self._hinted(search_results(result, self.steps, self.env.corpus, k), filter)[0]

    def search_batch(self, queries: Iterable[str], k: int = 10, filter: dict[str, Any] | None = None) -> list[SearchResult]:
        """`search` for many queries at once (batch mode: stage times are shared by the batch)."""
        texts = list(queries)
        empty = [i for i, q in enumerate(texts) if not isinstance(q, str) or not q.strip()]
        if empty:
            raise InputError(f"queries {empty[:5]} are empty; give a question or keywords for each")
        for query in texts:
            check_query(query)
        if k < 1:
            raise InputError(f"k must be a positive number of hits, got {k}")
        self.check_filter(filter)
        result = self.execute(as_queries(texts).with_filter(filter), mode="batch", progress=False)
        return self._hinted(search_results(result, self.steps, self.env.corpus, k), filter)

    def explain(self, query: str, doc_id: str, k: int = 10, filter: dict[str, Any] | None = None) -> LossTrace:
        """Why `doc_id` is (or is not) in this query's top `k`: every step's rank of it and the step
        that lost it (`stagegraph.pipeline.loss.trace_loss`: `never_retrieved`, `filtered`,
        `cut_by:<step>`, `beyond_depth:<reranker>`, `demoted_by:<step>`, or `in_top_k`).

        `doc_id` is a row's id (a chunk's `doc#n`) or a document's: then each step's rank is that of
        the document's best chunk in its output."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; give a question or keywords")
        check_query(query)
        if k < 1:
            raise InputError(f"k must be a positive number of hits, got {k}")
        self.check_filter(filter)
        corpus = self.env.corpus
        rows = self._rows_of_document(doc_id)
        result = self.execute(Queries.single(query, filter=filter), mode="online", progress=False)
        ranks: dict[str, int | None] = {}
        for step in self.steps:
            ranking = result.stages[step.name].rankings[0]
            found = [rank for rank, row in enumerate(ranking.doc_rows.tolist(), start=1) if row in rows]
            ranks[step.name] = min(found) if found else None
        index = MetadataIndex.of(corpus)
        excluded = False
        for step in self.steps:
            if step.inputs:
                continue
            expression = combine(self.pipeline.filter, step.filter, getattr(step.stage.config, "filter", None), filter)
            if expression and not index.mask(expression)[sorted(rows)].any():
                excluded = True
        return trace_loss(self.steps, ranks, k, self.pipeline.output, excluded)

    def _rows_of_document(self, doc_id: str) -> set[int]:
        corpus = self.env.corpus
        if corpus.has(doc_id):
            return {corpus.row_of(doc_id)}
        if corpus.doc_ids is not None:
            rows = {r for r, d in enumerate(corpus.doc_ids) if d == doc_id}
            if rows:
                return rows
        raise InputError(f"no document or chunk {doc_id!r} in the corpus ({len(corpus)} rows); give an id a hit "
                         "carries (`hit.id` or `hit.doc_id`)")

    def _hinted(self, results: list[SearchResult], filter: dict[str, Any] | None) -> list[SearchResult]:
        """`results` with the filter's `hint` on each empty one (worked out once, for a filter given)."""
        empty = [r for r in results if not r.hits]
        if filter and empty:
            hint = explain_empty(filter, self.env.corpus, scope=self.pipeline.filter)
            for r in empty:
                r.hint = hint
        return results

    def check_filter(self, filter: dict[str, Any] | None) -> None:
        """Raise the `FilterError` of a filter that does not fit this corpus (and-ed with the pipeline's
        own; nested pipelines' filters were checked when the runner was made)."""
        expression = combine(self.pipeline.filter, filter)
        if expression:
            MetadataIndex.of(self.env.corpus).mask(expression)

    # -- another environment, and the end ------------------------------------------------------
    def rebind(self, target: Any, *, work_dir: Any = None, progress: bool | None = None,
               bind_step: Callable[[Step, Environment], Any] | None = None) -> Runner:
        """The same pipeline bound to `target` (a corpus, dataset, environment or collection), sharing
        with this runner what does not depend on the corpus (loaded models); `bind_step` as in `Runner`."""
        env = environment_for(target, work_dir=work_dir, progress=progress)
        return Runner(self.pipeline, env, shared=dict(self._bound), bind_step=bind_step)

    def close(self) -> None:
        """Stop the branch threads and let bound stages release what they hold (score caches, files)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        with self._binding:
            bound = list(self._bound.values())
        for stage in bound:
            release_stage(stage)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runner({self.pipeline!r}, corpus of {len(self.env.corpus)})"


def build_indexes(pipeline: Any, env: Environment) -> None:
    """Build (or find) the artefacts of every stage of `pipeline` that indexes the corpus, with every
    core, and release them: what a collection's writer and `stagegraph index` do ahead of readers."""
    thread_policy.apply(thread_policy.threads_for(1))
    for step in pipeline.steps:
        if getattr(step.stage, "indexes_corpus", False):
            release_stage(bind_stage(step.stage, env))


def as_queries(queries: Queries | Iterable[str] | str) -> Queries:
    """`Queries` as they are; a string is one query; other iterables of strings get ids q0, q1, ..."""
    if isinstance(queries, Queries):
        return queries
    if isinstance(queries, str):
        return Queries.single(queries)
    texts = list(queries)
    if not all(isinstance(t, str) for t in texts):
        raise InputError("queries must be strings (or a Queries object with ids)")
    return Queries([f"q{i}" for i in range(len(texts))], texts)
