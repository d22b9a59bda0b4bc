"""Searching a sharded collection on Ray: shard actors with replicas, scatter, gather, one result.

    with RayCluster(address) as cluster:
        search = ShardedSearch(cluster, "docs.sg", pipeline, replicas=2)
        stack = Stack(pipeline, ShardedCollection("docs.sg"), bind=search.bind)   # what `serve --executor ray` does
        stack.search("query")                                                       # = one collection's result

**Where each part runs.** Every shard has `replicas` actors (`ShardWorker`), each holding that
shard's retrieval stages (BM25, dense, learned sparse) bound to the shard's generation, read from the shared
storage the collection lives on. The coordinator (the process that serves) binds the pipeline to
the sharded generation read as one corpus (`ShardedCollection.environment`, memory-mapped, never
copied), with its retrievers replaced by `RemoteLeg`s: a query's retriever step scatters to one
replica of every shard, gathers each shard's top k and merges them by (score desc, chunk key asc),
exactly as segments merge within one collection. Fusion, rerank, hits and provenance then run on the
coordinator, unchanged, over rows of that corpus; only row numbers, scores and keys travel.

**Equal to one collection.** BM25 scores need the collection's N, average length and document
frequencies, not a shard's (per-shard IDF ranks the same query differently as shards fill unevenly).
N and the length total are gathered from every shard when a generation is bound; the document
frequencies of a query's terms are gathered per query, as Elasticsearch's `dfs_query_then_fetch`
does, and cached per generation, so a term costs that extra round trip once. The dense leg's query
vector is encoded once, here, and sent; exact (Flat) indexes then give every shard's true top k.
The learned-sparse leg's query weights are likewise computed once, here, and sent; impact scores
need no collection statistics, so every shard's top k by them merges into the collection's. A BM25
leg with RM3/Rocchio (`expand`) takes two round trips: the first pass, merged here, gives the
feedback documents, whose terms are read here (the coordinator holds the whole corpus) with their
collection-wide document frequencies; the weighted second pass is then scattered like any query.

**Faults.** Actors are restarted by Ray when they die (`max_restarts=-1`) and bind the current
generation as they start, so a restarted replica is ready when its first call arrives. A call that
fails because its actor died is retried here on another replica of the shard, within the search's
deadline; a shard silent for `hedge_after_s` (a replica killed mid-call is only noticed when Ray
notices, a second or more) also gets a second call on another replica, and the first answer wins.
The log says when a replica dies and when it answers again. A shard with no replica left fails the
search with one clear error, unless the caller asked for partial results
(`stagegraph.pipeline.partial.search_report(allow_partial=True)`), which then lists the shard as
missing. An error inside a stage (bad input) is raised as it is, never retried.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from stagegraph.collection.generation import read_current
from stagegraph.collection.sharded import ShardedCollection
from stagegraph.collection.sharded_layout import ShardedLayout, read_sharded_manifest
from stagegraph.corpora.segmented import merge_top
from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError
from stagegraph.pipeline.partial import PartUnavailable, current_report
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.runner import Runner
from stagegraph.scale.cluster import RayCluster, worker_failure
from stagegraph.stages.base import EmptyQueryWarning

log = logging.getLogger("stagegraph.shards")

DEFAULT_DEADLINE_S = 10.0
#: seconds before a replica that failed is tried again (Ray restarts it meanwhile)
RETRY_DOWN_AFTER_S = 1.0
#: seconds a shard may stay silent before a second replica is asked too (first answer wins)
HEDGE_AFTER_S = 0.25
LEG_TYPES = ("bm25", "dense", "sparse")


class ShardUnavailable(PartUnavailable):
    """A shard could not be reached on any replica; the message names the shard and the fixes."""


class ShardWorker:
    """One Ray actor: one shard's retrieval stages bound to the shard generation a sharded
    generation names (moved lazily: every call says which sharded generation it is for)."""

    def __init__(self, root: str, index: int, config: dict[str, Any]):
        from stagegraph.pipeline import threads
        from stagegraph.pipeline.compose import Pipeline

        threads.pin(1)  # one actor per CPU share: its FAISS and torch use one thread
        self.layout = ShardedLayout(root)
        self.index = index
        self.pipeline = Pipeline.from_config(config)
        self.legs = {s.name: s for s in self.pipeline.steps if not s.inputs}
        self.number = -1
        self._wanted = 0
        self.collection: Any = None
        self.bound: dict[str, Any] = {}
        self._lock = threading.Lock()
        # bind the current generation now: a replica Ray restarts is ready when its first call arrives
        self._move(read_current(self.layout))  # type: ignore[arg-type]

    def ping(self) -> int:
        return os.getpid()

    def _move(self, number: int) -> None:
        if number == self.number:
            return
        with self._lock:
            if number != self.number:
                self._bind(number)

    def _bind(self, number: int) -> None:
        from stagegraph.collection.collection import Collection
        from stagegraph.pipeline.stage import bind_stage

        self._wanted = read_sharded_manifest(self.layout, number).shards[self.index] if number else 0
        if self.collection is None:
            self.collection = Collection(self.layout.shard(self.index), pin=lambda: self._wanted)
        else:
            self.collection.refresh()
        env = self.collection.environment()
        bound = {}
        for name, step in self.legs.items():
            donor = self.bound.get(name)
            rebind = getattr(donor, "rebind", None)
            bound[name] = rebind(env) if callable(rebind) else bind_stage(step.stage, env)
        if self.collection.generation.live_chunks:  # one search per leg: compiled kernels, touched pages
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyQueryWarning)
                for leg in bound.values():
                    leg.run(Queries(["warm"], ["warm up"]))
        self.bound, self.number = bound, number

    def move(self, number: int) -> dict[str, tuple[int, int]]:
        """Bind generation `number`; (live chunks, length total) of each BM25 leg."""
        self._move(number)
        return {name: bound.totals() for name, bound in self.bound.items() if hasattr(bound, "totals")}

    def frequencies(self, number: int, leg: str, terms: list[str]) -> list[int]:
        self._move(number)
        return self.bound[leg].frequencies(terms)

    def search(self, number: int, leg: str, ids: list[str], texts: list[str], filters: list | None,
               given: list | None, vectors: list | None, depth: int | None = None, weights: list | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
        """This shard's top k of each query (rows of the shard, scores, tie keys), and the time it took.
        An expanding BM25 leg runs one pass a call: the first (`depth`), then the weighted (`weights`)."""
        started = time.perf_counter_ns()
        self._move(number)
        bound = self.bound[leg]
        if vectors is not None:
            rankings = [bound.search_vector(v, filters[i] if filters else None) if v is not None else Ranking.empty()
                        for i, v in enumerate(vectors)]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyQueryWarning)  # the coordinator warns, once
                passes = {"depth": depth} if depth is not None else {"weights": weights} if weights is not None else {}
                rankings = bound.run(Queries(ids, texts, filters), given=given, **passes)
        corpus = self.collection.corpus
        out = [(r.doc_rows, r.scores, corpus.tie_keys(r.doc_rows)) for r in rankings]
        return out, time.perf_counter_ns() - started


class _Replicas:
    """One shard's actors, picked in turn; a replica that failed is skipped for a while."""

    def __init__(self, index: int, actors: list[Any]):
        self.index = index
        self.actors = actors
        self.down: dict[int, float] = {}  # replica -> when it failed
        self._turns: dict[str, int] = {}  # per kind of call, so that one kind does not always land on one replica
        self._lock = threading.Lock()

    def pick(self, tried: set[int], kind: str = "search") -> int | None:
        with self._lock:
            now = time.monotonic()
            turn = self._turns.get(kind, 0)
            order = [(turn + i) % len(self.actors) for i in range(len(self.actors))]
            self._turns[kind] = turn + 1
            fresh = [r for r in order if r not in tried and now - self.down.get(r, -1e9) > RETRY_DOWN_AFTER_S]
            if fresh:
                return fresh[0]
            rest = [r for r in order if r not in tried]  # every one failed lately: try the oldest failure
            return min(rest, key=lambda r: self.down.get(r, 0.0)) if rest else None

    def failed(self, replica: int, exc: BaseException) -> None:
        with self._lock:
            first = replica not in self.down
            self.down[replica] = time.monotonic()
        if first:
            log.warning("shard %d replica %d died or cannot be reached (%s); Ray restarts it, its searches go to the "
                        "other replicas", self.index, replica, type(exc).__name__)

    def answered(self, replica: int) -> None:
        if replica in self.down:
            with self._lock:
                back = self.down.pop(replica, None) is not None
            if back:
                log.warning("shard %d replica %d answers again", self.index, replica)


class ShardedSearch:
    """The coordinator of a sharded collection's searches on Ray (see the module docstring)."""

    def __init__(self, cluster: RayCluster, root: str, pipeline: Any, *, replicas: int = 1,
                 deadline_s: float = DEFAULT_DEADLINE_S, hedge_after_s: float | None = HEDGE_AFTER_S,
                 cpus_per_actor: float | None = None, measure: bool = False):
        if replicas < 1:
            raise InputError(f"--replicas {replicas}: every shard needs at least one replica")
        self.cluster = cluster
        self.root = str(root)
        self.layout = ShardedLayout(root)
        self.replicas = replicas
        self.deadline_s = deadline_s
        #: seconds before a silent shard gets a second call on another replica (None: never)
        self.hedge_after_s = hedge_after_s
        self.measure = measure
        with ShardedCollection(root) as collection:
            shards = collection.shard_count
        self._check(pipeline)
        config = {k: v for k, v in pipeline.to_config().items() if k not in ("executor", "filter")}
        ray = cluster.ray
        actors = shards * replicas
        cpus = cpus_per_actor if cpus_per_actor is not None else min(1.0, cluster.worker_count() / actors)
        remote = ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=cpus)(ShardWorker)
        self.groups = [_Replicas(i, [remote.options(scheduling_strategy="SPREAD").remote(self.root, i, config)
                                     for _ in range(replicas)]) for i in range(shards)]
        self._errors = self._ray_errors(ray)
        self._metrics: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self.stats: list[dict[str, float]] = []  # with `measure`: per scatter, wall, slowest shard, bytes

    @staticmethod
    def _check(pipeline: Any) -> None:
        for step in pipeline.steps:
            kind = getattr(step.stage, "type_name", type(step.stage).__name__)
            if not step.inputs and kind not in LEG_TYPES:
                raise InputError(f"stage {step.name!r} ({kind}) cannot search a sharded collection on Ray (only "
                                 f"{', '.join(LEG_TYPES)} retrievers can); serve without --executor ray to read the "
                                 "shards as one collection in this process")

    @staticmethod
    def _ray_errors(ray: Any) -> tuple[type[BaseException], ...]:
        names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError",
                 "ObjectLostError", "OwnerDiedError", "GetTimeoutError")
        return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))

    @property
    def shards(self) -> int:
        return len(self.groups)

    # -- binding a generation -------------------------------------------------------------------
    def bind(self, pipeline: Any, collection: ShardedCollection, previous: Runner | None) -> Runner:
        """`Stack`'s binder: the pipeline over `collection`'s current generation, retrievers remote."""
        generation = collection.generation
        number, offsets = generation.number, generation.offsets
        moved = self._everywhere("move", number)  # every replica binds now, not on its first search
        totals: dict[str, tuple[int, int]] = {}
        for answer in moved:
            for leg, (n, length) in answer.items():
                have = totals.get(leg, (0, 0))
                totals[leg] = (have[0] + n, have[1] + length)
        env = collection.environment()
        legs = {step.name: RemoteLeg(self, step, number, offsets, totals.get(step.name), env.corpus)
                for step in pipeline.steps if not step.inputs}
        for name, leg in legs.items():
            donor = previous.bound(name) if previous is not None else None
            leg.encoder = donor.encoder if isinstance(donor, RemoteLeg) and donor.encoder is not None else leg.load_encoder()
        if previous is not None:
            return previous.rebind(env, bind_step=lambda step, _env: legs.get(step.name))
        return Runner(pipeline, env, bind_step=lambda step, _env: legs.get(step.name))

    def _everywhere(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every replica of every shard: one answer per shard (from any replica)."""
        ray = self.cluster.ray
        refs = {(s, r): getattr(actor, method).remote(*args) for s, g in enumerate(self.groups)
                for r, actor in enumerate(g.actors)}
        answers: dict[int, Any] = {}
        errors: dict[int, BaseException] = {}
        for (s, r), ref in refs.items():
            try:
                answers.setdefault(s, ray.get(ref, timeout=max(60.0, self.deadline_s)))
                self.groups[s].answered(r)
            except self._errors as exc:
                self.groups[s].failed(r, exc)
                errors[s] = exc
            except Exception as exc:  # noqa: BLE001 - a stage error: the same on every replica
                raise worker_failure(exc, f"shard {s}") from None
        missing = [s for s in range(self.shards) if s not in answers]
        if missing:  # no replica of a shard could bind it: say why (a damaged shard, a missing model...)
            cause = worker_failure(errors[missing[0]], f"binding shard {missing[0]}") if missing[0] in errors else None
            raise ShardUnavailable(f"{self._unavailable(missing[0], errors.get(missing[0]))}"
                                   + (f" ({cause})" if cause is not None else ""))
        return [answers[s] for s in range(self.shards)]

    # -- one round trip to every shard ----------------------------------------------------------
    def scatter(self, method: str, *args: Any) -> list[Any | None]:
        """`method(*args)` on one replica of each shard; one answer per shard (None for a shard left out
        of a partial result). A call whose actor died is retried on another replica; a shard still
        silent after `hedge_after_s` gets a second call on another replica, and the first answer wins
        (a replica that dies mid-call is only noticed when Ray notices, a second or more)."""
        ray = self.cluster.ray
        report = current_report()
        started = time.perf_counter_ns()
        deadline = time.monotonic() + self.deadline_s
        hedge_at = time.monotonic() + self.hedge_after_s if self.hedge_after_s and self.replicas > 1 else deadline
        tried: list[set[int]] = [set() for _ in self.groups]
        pending: dict[Any, tuple[int, int, int]] = {}  # ref -> (shard, replica, submitted ns)
        answers: list[Any] = [None] * self.shards
        done = [False] * self.shards
        failed: dict[int, BaseException | None] = {}

        def submit(shard: int) -> bool:
            replica = self.groups[shard].pick(tried[shard], method)
            if replica is None:
                return False
            tried[shard].add(replica)
            ref = getattr(self.groups[shard].actors[replica], method).remote(*args)
            pending[ref] = (shard, replica, time.perf_counter_ns())
            return True

        def open_shards() -> list[int]:
            return [s for s in range(self.shards) if not done[s] and s not in failed]

        for shard in range(self.shards):
            submit(shard)
        while pending and open_shards():
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(deadline, hedge_at) - time.monotonic()))
            if not ready:
                if time.monotonic() >= deadline:
                    failed.update({s: None for s in open_shards()})
                    break
                hedge_at = deadline  # once per scatter
                for shard in open_shards():
                    if submit(shard):
                        self._count("hedged")
                continue
            ref = ready[0]
            shard, replica, submitted = pending.pop(ref)
            if done[shard]:
                continue  # the slower of a hedged pair
            try:
                answer = ray.get(ref)
            except self._errors as exc:
                self.groups[shard].failed(replica, exc)
                if any(s == shard for s, _, _ in pending.values()):
                    continue  # its hedged twin may still answer
                if time.monotonic() < deadline and submit(shard):
                    report.retried()
                    self._count("retried")
                else:
                    failed[shard] = exc
                continue
            except Exception as exc:  # noqa: BLE001 - raised by a stage: the same on any replica, not retried
                raise worker_failure(exc, f"shard {shard}") from None
            answers[shard], done[shard] = answer, True
            self.groups[shard].answered(replica)
            self._observe(shard, (time.perf_counter_ns() - submitted) / 1e9)
        for ref, (shard, replica, _) in pending.items():  # calls nobody waits for now: a death still gets logged
            ref.future().add_done_callback(lambda f, g=self.groups[shard], r=replica: self._late(g, r, f))
        if failed:
            if not report.allow_partial:
                shard = min(failed)
                raise self._unavailable(shard, failed[shard])
            if not report.missing:  # once per search, whatever its scatters
                self._count("partial")
            for shard in sorted(failed):
                report.left_out(f"shard {shard}")
        if self.measure:
            self._record(method, started, answers, args)
        return answers

    def _late(self, group: _Replicas, replica: int, future: Any) -> None:
        exc = future.exception()
        if exc is None:
            group.answered(replica)
        elif isinstance(exc, self._errors):
            group.failed(replica, exc)

    def _unavailable(self, shard: int, exc: BaseException | None) -> ShardUnavailable:
        cause = "no answer within the deadline" if exc is None else type(exc).__name__
        return ShardUnavailable(
            f"shard {shard} of {self.shards} cannot be reached ({cause}; its {self.replicas} replica(s) tried); retry "
            "in a moment (Ray restarts dead actors), run more replicas (--replicas 2), or ask for partial results "
            "(allow_partial)")

    # -- what an operator watches ---------------------------------------------------------------
    def health(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Per shard: replicas, how many answered a ping within `timeout` seconds."""
        ray = self.cluster.ray
        refs = [[a.ping.remote() for a in g.actors] for g in self.groups]
        out = []
        for g, shard_refs in zip(self.groups, refs):
            live = 0
            for replica, ref in enumerate(shard_refs):
                try:
                    ray.get(ref, timeout=timeout)
                    live += 1
                    g.answered(replica)
                except Exception:  # noqa: BLE001 - dead, restarting or slow: not live now
                    continue
            out.append({"shard": g.index, "replicas": len(g.actors), "live": live})
        return out

    def register(self, registry: Any) -> None:
        """Per-shard latency histograms and partial/retried counters in a Prometheus registry."""
        from prometheus_client import Counter, Histogram

        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self._metrics = {
            "shard": Histogram("stagegraph_shard_duration_seconds", "one shard's answer to one scatter, as the "
                               "coordinator waited for it", ["shard"], buckets=buckets, registry=registry),
            "retried": Counter("stagegraph_shard_retried", "shard calls retried on another replica", registry=registry),
            "partial": Counter("stagegraph_partial_results", "searches answered without some shard (allow_partial)",
                               registry=registry),
            "hedged": Counter("stagegraph_shard_hedged", "shard calls also sent to a second replica after "
                              "hedge_after_s without an answer", registry=registry),
        }
        for shard in range(self.shards):
            self._metrics["shard"].labels(str(shard))

    def _observe(self, shard: int, seconds: float) -> None:
        histogram = self._metrics.get("shard")
        if histogram is not None:
            histogram.labels(str(shard)).observe(seconds)

    def _count(self, what: str) -> None:
        counter = self._metrics.get(what)
        if counter is not None:
            counter.inc()

    def _record(self, method: str, started: int, answers: list[Any], args: tuple) -> None:
        wall = time.perf_counter_ns() - started  # before the pickling below, which is only for counting bytes
        own = [a[1] for a in answers if isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], int)]
        sent = len(pickle.dumps(args, protocol=5)) * self.shards
        received = sum(len(pickle.dumps(a, protocol=5)) for a in answers if a is not None)
        leg = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        with self._stats_lock:
            self.stats.append({"method": method, "leg": leg, "started_ns": started, "wall_ns": wall,
                               "slowest_shard_ns": max(own, default=0), "bytes": sent + received})

    def close(self) -> None:
        ray = self.cluster.ray
        for g in self.groups:
            for actor in g.actors:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.groups = []


class RemoteLeg:
    """A retriever step of the coordinator's pipeline: every shard's top k, merged (module docstring)."""

    def __init__(self, search: ShardedSearch, step: Any, number: int, offsets: list[int], totals: tuple[int, int] | None,
                 corpus: Any = None):
        self.search = search
        self.corpus = corpus  # the whole collection's (memory-mapped): feedback documents are read from it
        self.step = step
        self.stage = step.stage
        self.kind = getattr(step.stage, "type_name", "")
        self.number = number
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.totals = totals
        self.k = int(step.stage.config.k)
        self.encoder: Any = None
        self._static_query: bool | None = None
        self._df: dict[str, int] = {}  # this generation's document frequencies, gathered once per term
        self._df_lock = threading.Lock()
        self._analyzer = step.stage.config.index_settings().tokenizer if self.kind == "bm25" else None

    def load_encoder(self) -> Any:
        """The query side's model, loaded here once: dense's encoder, sparse's SparseEncoder (BM25: none)."""
        if self.kind == "dense":
            return self.stage._encoder(False)
        return self.stage._model() if self.kind == "sparse" else None

    def _prepare(self, text: str) -> Any:
        """What the coordinator computes once per query and sends: BM25's analysed terms, sparse's
        (token ids, weights); None for dense (its vector is encoded for live queries only)."""
        if self.kind == "bm25":
            return self._analyzer.analyze(text)
        if self.kind == "sparse":
            from stagegraph.stages.retrieve.sparse import has_static_query, stage_query_weights

            if self._static_query is None:  # whether the model's query side is inference-free: found once
                self._static_query = has_static_query(self.encoder)
            if not (text and text.strip()):
                return np.empty(0, np.int64), np.empty(0, np.float32)
            return stage_query_weights(self.stage, self.encoder, text, self._static_query)
        return None

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        ids, texts = list(queries.ids), list(queries.texts)
        prepared = [self._prepare(t) for t in texts]
        live = [i for i, t in enumerate(texts) if self._searchable(ids[i], t, prepared[i])]
        out = [Ranking.empty() for _ in texts]
        if not live:
            return out
        sub = queries.select(live)
        if self.kind == "bm25" and self.stage.config.expand is not None:
            merged = self._expanded(sub, [prepared[i] for i in live])
            for position, i in enumerate(live):
                out[i] = Ranking(*merged[position])
            return out
        given = vectors = None
        if self.kind == "bm25":
            given = self._given([prepared[i] for i in live])
        elif self.kind == "sparse":
            given = [prepared[i] for i in live]
        else:
            vectors = [self.encoder.encode_query(texts[i]) for i in live]
        answers = self.search.scatter("search", self.number, self.step.name, list(sub.ids), list(sub.texts),
                                      sub.filters, given, vectors)
        for position, i in enumerate(live):
            out[i] = Ranking(*self._merged(answers, position, self.k))
        return out

    def _merged(self, answers: list[Any], position: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Query `position`'s best `k` over every shard that answered (rows of the whole collection)."""
        found = [(rows + self.offsets[shard], scores, keys)
                 for shard, answer in enumerate(answers) if answer is not None
                 for rows, scores, keys in [answer[0][position]] if len(rows)]
        return merge_top(found, k)

    def _expanded(self, sub: Queries, terms: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """BM25 with RM3/Rocchio over the shards, as one collection expands: the first pass (the
        collection's statistics) gathered from every shard and merged; the feedback documents' terms
        read here (the coordinator holds the whole corpus) with their collection-wide document
        frequencies; then the weighted second pass, scattered with its terms' statistics."""
        from stagegraph.stages.retrieve.feedback import FeedbackSource, expand

        settings = self.stage.config.expand
        depth = settings.first_pass_depth(self.k)
        first = self.search.scatter("search", self.number, self.step.name, list(sub.ids), list(sub.texts),
                                    sub.filters, self._given(terms), None, depth, None)
        pools = [self._merged(first, position, depth) for position in range(len(terms))]
        analysed = {row: self._analyzer.analyze(self.corpus.doc_text(row))  # each feedback document once
                    for rows, _ in pools for row in rows.tolist()}
        dfs = self._dfs({t for terms_of_row in analysed.values() for t in terms_of_row})
        source = FeedbackSource(self.totals[0], lambda term: dfs.get(term, 0), lambda row: analysed[int(row)])
        weights = [expand(ts, rows, scores, source, settings) for ts, (rows, scores) in zip(terms, pools)]
        second = self.search.scatter("search", self.number, self.step.name, list(sub.ids), list(sub.texts),
                                     sub.filters, self._given([sorted(w) for w in weights]), None, None, weights)
        return [self._merged(second, position, self.k) for position in range(len(terms))]

    def _searchable(self, qid: str, text: str, prepared: Any) -> bool:
        terms = prepared[0] if self.kind == "sparse" else prepared  # BM25's terms, sparse's token ids
        empty = not (text and text.strip()) or (terms is not None and not len(terms))
        if empty:
            warnings.warn(f"query {qid!r} ({text[:60]!r}) is empty or has only stopwords for stage {self.step.name!r} "
                          "(no term, or no weighted token); returning an empty ranking.", EmptyQueryWarning, stacklevel=3)
        return not empty

    def _given(self, terms: list[list[str]]) -> list[tuple[int, int, dict[str, int]]]:
        """(N, length total, df of its terms) of each query (its analysed `terms`) over the whole collection."""
        assert self.totals is not None
        dfs = self._dfs({t for ts in terms for t in ts})
        return [(self.totals[0], self.totals[1], {t: dfs[t] for t in ts}) for ts in terms]

    def _dfs(self, terms: set[str]) -> dict[str, int]:
        """The document frequency of each of `terms` over the whole collection: gathered from every shard
        for the terms not yet known (one round trip), kept for this generation."""
        with self._df_lock:
            unknown = sorted(t for t in terms if t not in self._df)
        summed: dict[str, int] = {}
        if unknown:
            answers = self.search.scatter("frequencies", self.number, self.step.name, unknown)
            reached = [a for a in answers if a is not None]
            summed = dict(zip(unknown, np.sum(np.asarray(reached, dtype=np.int64), axis=0).tolist()))
            if len(reached) == len(answers):  # a partial answer's statistics are not the collection's: not kept
                with self._df_lock:
                    self._df.update(summed)
        with self._df_lock:
            return {t: self._df.get(t, summed.get(t, 0)) for t in terms}
