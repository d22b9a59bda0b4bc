"""`RayExecutor`: a pipeline's batch run sharded by query over Ray actors, assembled in query order.

    with RayCluster(address) as cluster:
        executor = RayExecutor(cluster, workers=4)
        result = pipeline.execute(queries, env=env, mode="batch", executor=executor)   # a RunResult

The driver first warms the stages that index the corpus, so every index is built (or found) once
under the work directory or collection, with the dense encoding itself sharded over the cluster
(`stagegraph.scale.encode`). Then each worker, an actor holding one CPU, warms the same pipeline
read-only from that shared storage: models load once per worker, indexes are opened from disk,
never pickled (only the corpus' texts travel, once, through the object store). The queries are cut
into contiguous shards, several per worker so a slow worker holds up little and results stream back
as shards finish; the driver puts them in query order. Every stage ranks each query on its own
(dense encodes each query alone in batch mode too), so run files, metrics and the funnel equal a
local batch run's, ties included.

Faults: an actor that dies is restarted by Ray (it warms again) and its unfinished shards are
retried, with the same result; a shard that keeps failing raises the worker's error. Ctrl-C cancels
the outstanding shards and stops the actors; the driver wrote nothing but the indexes, which are
published atomically. Stage times: a stage's time on a worker is the sum over its shards, and the
cluster's stage throughput is the queries over the busiest worker's time; `RunResult.workers` is
the per-worker split.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

import numpy as np
from stagegraph.progress import progress_bar

from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError
from stagegraph.pipeline.executor import ExecutorConfig, RunResult, StageRun, WorkerShare, step_keys
from stagegraph.pipeline.runner import build_indexes
from stagegraph.pipeline.stage import Environment
from stagegraph.scale.cluster import RayCluster, worker_failure

#: query shards per worker: enough to balance and stream, few enough that each is worth a task
SHARDS_PER_WORKER = 4
#: times Ray restarts a dead actor, and retries a task whose actor died
RESTARTS = 3


class PipelineWorker:
    """One Ray actor: the pipeline bound once, read-only, from the shared work directory."""

    def __init__(self, config: dict[str, Any], corpus_box: list[Any], work_dir: str):
        import ray

        from stagegraph.pipeline import threads
        from stagegraph.pipeline.compose import Pipeline

        threads.pin(1)  # one actor per CPU: its torch and FAISS use that CPU, no more
        # The corpus comes boxed (a reference inside a list), so a restarted actor fetches it again
        # from the driver's copy instead of depending on a consumed constructor argument.
        self.env = Environment(ray.get(corpus_box[0]), work_dir=work_dir, progress=False, read_only=True)
        self.runner = Pipeline.from_config(config).bind(self.env)

    def pid(self) -> int:
        return os.getpid()

    def run(self, ids: list[str], texts: list[str], filters: list | None) -> dict[str, Any]:
        started = time.perf_counter_ns()
        result = self.runner.execute(Queries(ids, texts, filters), mode="batch", progress=False)
        return {
            "stages": {name: (run.rankings, run.wall_ns) for name, run in result.stages.items()},
            "wall_ns": time.perf_counter_ns() - started,
            "pid": os.getpid(),
            "node": socket.gethostname(),
        }


class RayExecutor:
    """Runs a pipeline's batch mode sharded by query over a Ray cluster (see the module docstring)."""

    def __init__(self, cluster: RayCluster, *, workers: int | None = None, progress: bool = True):
        self.cluster = cluster
        self.workers = workers
        self.progress = progress
        self._actors: list[Any] = []
        self._actor_key: tuple[str, str, str] | None = None
        self._corpus_ref: Any = None  # held while the actors live: a restarted actor reads it

    @property
    def config(self) -> ExecutorConfig:
        return ExecutorConfig(type="ray", address=self.cluster.address, workers=self.workers)

    def encoder(self, progress: bool | None = None):
        """The `Environment.encode` hook that encodes on this cluster."""
        from stagegraph.scale.encode import ray_encoder

        return ray_encoder(self.cluster, self.workers, progress=self.progress if progress is None else progress)

    def build(self, pipeline: Any, env: Environment) -> None:
        """Build (or find) every index of `pipeline` once on the driver, encoding on the cluster."""
        build_env = dataclasses.replace(env, encode=env.encode or self.encoder(env.progress))  # shares env.artefacts
        build_indexes(pipeline, build_env)

    def actors(self, pipeline: Any, env: Environment) -> list[Any]:
        """The workers, started (and warmed) on first use and kept for the next run of the same pipeline."""
        key = (pipeline.fingerprint(), env.corpus.fingerprint, str(env.work_dir))
        if self._actors and self._actor_key != key:
            self.close()
        if not self._actors:
            ray = self.cluster.ray
            n = self.workers or self.cluster.worker_count()
            remote = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS, num_cpus=1)(PipelineWorker)
            self._corpus_ref = ray.put(env.corpus)
            # the driver and-ed the pipeline's filter into the queries already
            config = {k: v for k, v in pipeline.to_config().items() if k not in ("executor", "filter")}
            self._actors = [remote.remote(config, [self._corpus_ref], str(env.work_dir)) for _ in range(n)]
            self._actor_key = key
        return self._actors

    def execute(self, pipeline: Any, queries: Queries, env: Environment, *, mode: str = "batch",
                cache: Any = None, progress: bool | None = None, **_: Any) -> RunResult:
        if mode != "batch":
            raise InputError("the Ray executor runs batch mode (--mode batch): per-query latencies would mix machines and queues")
        if cache is not None:
            raise InputError("the Ray executor does not read or write the stage cache; run without it (--no-cache)")
        pipeline.require_complete()
        ray = self.cluster.ray
        show = self.progress if progress is None else progress
        started = time.perf_counter_ns()
        self.build(pipeline, env)
        actors = self.actors(pipeline, env)
        shards = [rows for rows in np.array_split(np.arange(len(queries)), len(actors) * SHARDS_PER_WORKER) if len(rows)]
        refs: dict[Any, tuple[int, np.ndarray]] = {}
        for number, rows in enumerate(shards):
            part = queries.select(rows.tolist())
            worker = number % len(actors)
            refs[actors[worker].run.remote(part.ids, part.texts, part.filters)] = (worker, rows)
        done: dict[int, tuple[int, dict[str, Any]]] = {}
        pending = list(refs)
        try:
            with progress_bar(total=len(queries), desc=f"Queries (ray, {len(actors)} workers)", unit="query", disable=not show) as bar:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for ref in ready:
                        worker, rows = refs[ref]
                        done[int(rows[0])] = (worker, ray.get(ref))
                        bar.update(len(rows))
        except KeyboardInterrupt:
            self._cancel(pending)
            raise
        except ray.exceptions.RayError as exc:
            self._cancel(pending)
            raise worker_failure(exc, "the evaluation") from None
        return self._assemble(pipeline, queries, env, [done[k] for k in sorted(done)], started)

    def _assemble(self, pipeline: Any, queries: Queries, env: Environment,
                  parts: list[tuple[int, dict[str, Any]]], started: int) -> RunResult:
        keys = step_keys(pipeline.steps, queries, env)
        result = RunResult(queries=queries, mode="batch", output=pipeline.steps[-1].name, executor=self.config)
        for step in pipeline.steps:
            rankings = [r for _, part in parts for r in part["stages"][step.name][0]]
            per_worker: dict[int, int] = {}
            for worker, part in parts:
                per_worker[worker] = per_worker.get(worker, 0) + part["stages"][step.name][1]
            wall = max(per_worker.values(), default=0)  # workers run side by side: the busiest one's time
            result.stages[step.name] = StageRun(step.name, rankings, keys[step.name], wall_ns=int(wall))
        result.wall_ns = time.perf_counter_ns() - started
        shares: dict[int, WorkerShare] = {}
        for worker, part in parts:
            share = shares.setdefault(worker, WorkerShare(worker=worker, pid=part["pid"], node=part["node"], queries=0,
                                                          shards=0, seconds=0.0))
            share.queries += len(next(iter(part["stages"].values()))[0])
            share.shards += 1
            share.seconds += part["wall_ns"] / 1e9
            share.pid = part["pid"]  # the last process that served it (a restarted actor has a new one)
        result.workers = [shares[w] for w in sorted(shares)]
        return result

    def _cancel(self, pending: list[Any]) -> None:
        for ref in pending:
            try:
                self.cluster.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - an actor task Ray cannot force-cancel: the actor is killed below
                pass
        self.close()

    def close(self) -> None:
        """Stop the worker actors (the cluster stays; `RayCluster` stops only what it started)."""
        for actor in self._actors:
            try:
                self.cluster.ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor that is already gone
                pass
        self._actors = []
        self._actor_key = None
        self._corpus_ref = None
