"""Running a pipeline's steps over queries: online (one query at a time, timed per stage) or batch.

* **online**: each query goes through the whole pipeline on its own, as a RAG stack serves it. Every
  stage is timed per query with `perf_counter_ns`; stages at the same depth (parallel branches) run
  concurrently on a thread pool; end-to-end time covers the whole query. The first `warmup`
  queries are run once beforehand and kept out of every figure. A stage's time is *as run*: a
  branch shares the cores with its neighbour, and its time says so. With `timing="isolated"` each
  query also runs once more with every stage alone, one after another, and those per-stage times
  are kept beside the concurrent ones (`StageRun.isolated_ns`); end to end stays the concurrent run.
* **batch**: each stage runs once over all queries, for throughput.

Thread counts are the policy's (`stagegraph.pipeline.threads`): set right before each stage call,
in the thread that makes it, never inside a stage. Before each level (each step in batch mode) a
`stagegraph.pipeline.cancel.checkpoint` lets a caller that gave up drop the rest of the run.

The executor runs *bound* stages (`bind(step)`, the `stagegraph.pipeline.runner.Runner`'s): it
never loads a model or an index itself, and it computes cache keys only when it has a cache (from
fingerprints the runner computed once). A step whose filter scope (a nested pipeline's `filter`)
is set gets its queries with that filter and-ed in.

After every step the executor gives each ranking its provenance (`stagegraph.pipeline.ranking.with_provenance`):
the score and rank every earlier step gave its documents. With a `StageCache`, a step whose key is
already stored is read back instead of run, reported as a cache hit and never timed: a hit is not a
latency. Every stage that runs is bound (models and indexes loaded) before any timed work.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from stagegraph.progress import progress_bar

from stagegraph.corpora.filters import combine
from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError, StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.cache import StageCache, step_key
from stagegraph.pipeline.graph import Step, levels
from stagegraph.pipeline.ranking import Ranking, with_provenance
from stagegraph.pipeline.stage import Environment, Inputs, bind_stage, release_stage
from stagegraph.pipeline import threads as thread_policy
from stagegraph.pipeline.cancel import checkpoint
from stagegraph.pipeline.timing import LatencySummary

Mode = Literal["online", "batch"]
Timing = Literal["concurrent", "isolated"]


class ExecutorConfig(BaseModel):
    """Where a batch run and an index build run: `local` (this process, the default) or `ray`
    (sharded over a Ray cluster by `stagegraph.scale`). `address`: an existing cluster's HOST:PORT
    (else `$RAY_ADDRESS`, else a local cluster started and stopped by this process); `workers`:
    how many actors (default one per CPU of the cluster). Written `executor: ray` or
    `executor: {type: ray, address: ..., workers: N}` in YAML, `executor="ray"` in Python."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = Field(default=None, ge=1)

    @classmethod
    def of(cls, value: Any) -> ExecutorConfig:
        """`value` (None, "local", "ray", a mapping or an `ExecutorConfig`) as a checked config."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        try:
            if isinstance(value, str):
                return cls(type=value)
            if isinstance(value, Mapping):
                return cls.model_validate(dict(value))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'executor'}: {e['msg']}" for e in exc.errors())
            raise InputError(f"executor is invalid ({problems}); write `executor: ray` or "
                             "`executor: {type: ray, address: HOST:PORT, workers: N}`") from None
        raise InputError(f"executor must be 'local', 'ray' or a mapping, not {type(value).__name__}")

    @property
    def distributed(self) -> bool:
        return self.type != "local"


#: the default executor (a frozen value, shared rather than built per run)
LOCAL = ExecutorConfig()


class WorkerShare(BaseModel):
    """What one worker of a distributed run did: its queries, shards and time."""

    worker: int
    pid: int
    node: str = ""
    queries: int
    shards: int
    seconds: float


@dataclass
class StageRun:
    """What one step produced: rankings aligned with the queries, and how long it took."""

    name: str
    rankings: list[Ranking]
    cache_key: str
    cache_hit: bool = False
    latencies_ns: np.ndarray | None = None  # per measured query, as run (online, not cached)
    wall_ns: int = 0  # total time spent in the stage (0 on a cache hit)
    isolated_ns: np.ndarray | None = None  # per measured query, the stage alone (timing="isolated")

    @property
    def latency(self) -> LatencySummary | None:
        return None if self.latencies_ns is None else LatencySummary.from_ns(self.latencies_ns)

    @property
    def latency_isolated(self) -> LatencySummary | None:
        return None if self.isolated_ns is None else LatencySummary.from_ns(self.isolated_ns)

    @property
    def throughput_qps(self) -> float | None:
        if self.cache_hit or self.wall_ns <= 0:
            return None
        return len(self.rankings) / (self.wall_ns / 1e9)


@dataclass
class RunResult:
    queries: Queries
    mode: Mode
    output: str
    stages: dict[str, StageRun] = field(default_factory=dict)  # in pipeline order
    end_to_end_ns: np.ndarray | None = None
    warmup_queries: int = 0
    wall_ns: int = 0
    executor: ExecutorConfig = field(default_factory=lambda: LOCAL)
    workers: list[WorkerShare] = field(default_factory=list)  # a distributed run's split, by worker

    @property
    def final(self) -> list[Ranking]:
        return self.stages[self.output].rankings

    @property
    def end_to_end(self) -> LatencySummary | None:
        return None if self.end_to_end_ns is None else LatencySummary.from_ns(self.end_to_end_ns)


def execute(
    steps: Sequence[Step],
    queries: Queries,
    env: Environment,
    *,
    bind: Callable[[Step], Any] | None = None,
    fingerprints: Mapping[str, str] | None = None,
    mode: Mode = "online",
    cache: StageCache | None = None,
    warmup: int = 3,
    timing: Timing = "concurrent",
    progress: bool | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> RunResult:
    """Run `steps` (checked, in order, the output last) over `queries`: every step's rankings and timings.

    `bind(step)` gives a step's bound stage (default: `bind_stage(step.stage, env)`, once per call, and
    released after it); `fingerprints` the stages' fingerprints by step name (default: computed when a
    cache needs them)."""
    if mode not in ("online", "batch"):
        raise InputError(f"mode must be 'online' or 'batch', not {mode!r}")
    if timing not in ("concurrent", "isolated"):
        raise InputError(f"timing must be 'concurrent' or 'isolated', not {timing!r}")
    if bind is None:
        bound_here: dict[str, Any] = {}

        def bind(step: Step) -> Any:
            if step.name not in bound_here:
                thread_policy.apply(thread_policy.threads_for(1))  # builds and encoding: every core
                bound_here[step.name] = bind_stage(step.stage, env)
            return bound_here[step.name]

        try:
            return _execute(list(steps), queries, env, bind, fingerprints, mode, cache, warmup, timing, progress, pool)
        finally:
            for bound in bound_here.values():
                release_stage(bound)
    return _execute(list(steps), queries, env, bind, fingerprints, mode, cache, warmup, timing, progress, pool)


def _execute(steps, queries, env, bind, fingerprints, mode, cache, warmup, timing, progress, pool) -> RunResult:
    show = env.progress if progress is None else progress
    result = RunResult(queries=queries, mode=mode, output=steps[-1].name)
    keys = step_keys(steps, queries, env, fingerprints) if cache is not None else dict.fromkeys((s.name for s in steps), "")
    outputs: dict[str, list[Ranking]] = {}
    for step in steps:
        cached = cache.load(keys[step.name]) if cache is not None else None
        if cached is not None and len(cached) == len(queries):
            outputs[step.name] = cached
            result.stages[step.name] = StageRun(step.name, cached, keys[step.name], cache_hit=True)
    todo = [s for s in steps if s.name not in outputs]
    bound = {step.name: bind(step) for step in todo}  # bind applies the policy's threads for builds

    started = time.perf_counter_ns()
    if todo and len(queries):
        if mode == "online":
            _run_online(steps, todo, bound, queries, outputs, result, keys, show, warmup, timing, pool)
        else:
            _run_batch(todo, bound, queries, outputs, result, keys, show)
    for step in todo:
        if step.name not in result.stages:  # no queries: nothing to run
            outputs[step.name] = []
            result.stages[step.name] = StageRun(step.name, [], keys[step.name], latencies_ns=np.empty(0, np.int64))
    result.wall_ns = time.perf_counter_ns() - started
    result.stages = {s.name: result.stages[s.name] for s in steps}
    if cache is not None:
        for step in todo:
            cache.save(keys[step.name], outputs[step.name])
    return result


def step_keys(steps: Sequence[Step], queries: Queries, env: Environment,
              fingerprints: Mapping[str, str] | None = None) -> dict[str, str]:
    """The cache key of every step: its fingerprint, its upstream keys, cut-off, filter scope, queries
    and corpus (`fingerprints`: the stages' fingerprints by step name, computed here when not given)."""
    keys: dict[str, str] = {}
    qfp, cfp = queries.fingerprint(), env.corpus.fingerprint
    for step in steps:
        upstream = [keys[i] for i in step.inputs]
        fingerprint = fingerprints[step.name] if fingerprints is not None else step.stage.fingerprint()
        if step.filter:
            fingerprint = stable_hash({"stage": fingerprint, "filter": step.filter})
        keys[step.name] = step_key(fingerprint, upstream, step.cutoff, qfp, cfp)
    return keys


def progress_over(items: Any, show: bool, **bar: Any) -> Any:
    """`items` behind a progress bar when `show`, else as they are (no bar object on a search's path)."""
    return progress_bar(items, **bar) if show else items


def scoped(queries: Queries, filter: dict[str, Any] | None) -> Queries:
    """`queries` with `filter` and-ed into each query's own (the same object when `filter` is None)."""
    if not filter:
        return queries
    return Queries(queries.ids, queries.texts, [combine(filter, queries.filter_of(i)) for i in range(len(queries))])


def _call(step: Step, bound: Any, queries: Queries, inputs: Inputs, width: int) -> list[Ranking]:
    """Run one bound stage with the policy's threads (`width` calls side by side), check what it
    returned, apply the cut-off and attach provenance."""
    thread_policy.apply(thread_policy.threads_for(width, step.stage))
    try:
        out = bound.run(scoped(queries, step.filter), inputs)
    except (StageError, InputError):
        raise
    except Exception as exc:  # a bug or an unexpected failure inside a stage: name the stage
        raise StageError(f"stage {step.name!r} ({type(step.stage).__name__}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, list) or len(out) != len(queries):
        got = len(out) if hasattr(out, "__len__") else type(out).__name__
        raise StageError(f"stage {step.name!r} returned {got} rankings for {len(queries)} queries; it must return one per query")
    if step.cutoff is not None:
        out = [r.top(step.cutoff) for r in out]
    return [with_provenance(step.name, r, [branch[i] for branch in inputs]) for i, r in enumerate(out)]


def _run_batch(todo, bound, queries, outputs, result, keys, show) -> None:
    for step in progress_over(todo, show and len(todo) >= 2, desc="stages", unit="stage"):
        checkpoint()
        inputs = Inputs([outputs[i] for i in step.inputs], step.inputs)
        t0 = time.perf_counter_ns()
        outputs[step.name] = _call(step, bound[step.name], queries, inputs, 1)
        wall = time.perf_counter_ns() - t0
        result.stages[step.name] = StageRun(step.name, outputs[step.name], keys[step.name], wall_ns=wall)


@functools.lru_cache(maxsize=256)
def _groups(steps: tuple[Step, ...], todo: frozenset[str]) -> tuple[tuple[Step, ...], ...]:
    """The levels of `steps` that hold steps to run, each cut to those steps (computed once per shape)."""
    groups = (tuple(s for s in level if s.name in todo) for level in levels(list(steps)))
    return tuple(g for g in groups if g)


def _run_online(steps, todo, bound, queries, outputs, result, keys, show, warmup, timing, pool) -> None:
    groups = _groups(tuple(steps), frozenset(s.name for s in todo))
    width = max(len(g) for g in groups)
    n = len(queries)
    per_step: dict[str, list[int]] = {s.name: [] for s in todo}
    alone: dict[str, list[int]] = {s.name: [] for s in todo}
    per_query: dict[str, list[Ranking]] = {s.name: [] for s in todo}
    e2e = np.zeros(n, dtype=np.int64)
    own_pool = pool is None and width > 1
    if own_pool:
        pool = ThreadPoolExecutor(max_workers=width)

    def timed(step: Step, one: Queries, i: int, results: dict[str, Ranking], side: int) -> tuple[Ranking, int]:
        inputs = Inputs(
            ([[results[u]] if u in results else [outputs[u][i]] for u in step.inputs]), step.inputs
        )
        t0 = time.perf_counter_ns()
        ranking = _call(step, bound[step.name], one, inputs, side)[0]
        return ranking, time.perf_counter_ns() - t0

    def one_query(i: int, concurrent: bool = True) -> tuple[dict[str, Ranking], dict[str, int]]:
        one = queries if n == 1 else queries.select([i])
        results: dict[str, Ranking] = {}
        times: dict[str, int] = {}
        for group in groups:
            checkpoint()
            side_by_side = concurrent and pool is not None and len(group) > 1
            side = len(group) if side_by_side else 1
            if side_by_side:
                # each branch runs in the caller's context (its cancel check, its search report)
                futures = {s.name: pool.submit(contextvars.copy_context().run, timed, s, one, i, results, side)
                           for s in group}
                done = {name: f.result() for name, f in futures.items()}
            else:
                done = {s.name: timed(s, one, i, results, side) for s in group}
            for name, (ranking, ns) in done.items():
                results[name], times[name] = ranking, ns
        return results, times

    try:
        n_warm = min(warmup, n)
        for i in range(n_warm):
            one_query(i)
        result.warmup_queries = n_warm
        for i in progress_over(range(n), show and n >= 2, desc="queries (online)", unit="q"):
            t0 = time.perf_counter_ns()
            results, times = one_query(i)
            e2e[i] = time.perf_counter_ns() - t0
            for name in per_step:
                per_query[name].append(results[name])
                per_step[name].append(times[name])
            if timing == "isolated":
                _, isolated = one_query(i, concurrent=False)
                for name in alone:
                    alone[name].append(isolated[name])
    finally:
        if own_pool:
            pool.shutdown()
    for step in todo:
        outputs[step.name] = per_query[step.name]
        lat = np.array(per_step[step.name], dtype=np.int64)
        isolated = np.array(alone[step.name], dtype=np.int64) if timing == "isolated" else None
        result.stages[step.name] = StageRun(
            step.name, per_query[step.name], keys[step.name], latencies_ns=lat, wall_ns=int(lat.sum()),
            isolated_ns=isolated,
        )
    result.end_to_end_ns = e2e
