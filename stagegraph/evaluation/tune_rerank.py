"""`tune_rerank`: which reranker configuration gives the best quality within a latency budget.

One run evaluates, on one split, every combination that can be had from the pipeline's candidate
pool and the given cross-encoders: fixed depths (10, 20, 30, 50, 100 by default) x models x numeric
backends (torch fp32, torch bf16 autocast, ONNX fp32, ONNX int8, as this CPU supports them:
`stagegraph.stages.rerank.cpu`), per-query depth (`adaptive_depth`, over a grid of margins and the
one calibrated with each model), and two-stage cascades (a faster model's top `k1` of its top `d1`
reranked by a slower one). For each it reports nDCG@10 of the final top 10 and the mean and P95
rerank time per query in online mode, draws the quality-vs-P95 frontier, marks the Pareto points
and the "90% of the maximum gain" point, recommends the best configuration whose P95 fits the
budget, and writes it as a YAML pipeline.

How it stays cheap, and what is measured:

* **every pair is scored once per scorer** (model x backend x max_length): the pool's top
  `max(depths)` of each query, in blocks of `block` from the top, one query at a time, every
  scorer taking its turn on the same query (in a rotating order, so that load from other
  processes on a shared machine falls on all of them alike). Each block is one call of the stage's
  own scorer (`CrossEncoderReranker.score_rows`), timed with `perf_counter_ns`, with the thread
  count the executor gives a stage alone. Scores go to the stage's score cache (SQLite, keyed by
  scorer, query and document), timings to the tuning store beside it: a run stopped by its time
  limit, or interrupted, resumes where it stopped.
* **every configuration's ranking is exact**: rebuilt from the cached scores with the stage's own
  code (`finish`, `stop_depth`), so it is the ranking the stage would return.
* **its cost is the measured cost of the blocks it scores**: depth d costs the first d/block
  blocks; an adaptive run the blocks its rule scored; a cascade's second stage its candidates'
  share of the measured blocks, in proportion to their token counts. `verify` re-runs chosen
  configurations as real pipelines (the executor, online) and reports measured against estimated.
* **backends are chosen on evidence** (`prune`): after the first `calibration_queries` queries,
  each model keeps torch fp32 (the reference) and the fastest backend whose nDCG@10 on those
  queries is within `tolerance` of fp32's (the rule of `backend: auto`); the others are reported
  on those queries and not carried further.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from stagegraph.progress import progress_bar

from stagegraph.corpora.types import Dataset, Qrels, Queries
from stagegraph.errors import InputError
from stagegraph.evaluation import tune_report
from stagegraph.evaluation.report import machine_info
from stagegraph.evaluation.scoring import score_run
from stagegraph.evaluation.tune_result import (
    BackendRow,
    DepthVerdict,
    RerankStep,
    TunePoint,
    TuneResult,
    TuneSettings,
    Verification,
)
from stagegraph.hashing import stable_hash
from stagegraph.pipeline import threads as thread_policy
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import Step
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.sqlite_store import SqliteStore
from stagegraph.stages.rerank.calibration import CANDIDATES
from stagegraph.stages.rerank.cpu import backend_support, cpu_features
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker, finish
from stagegraph.stages.rerank.depth import AdaptiveCalibration, AdaptiveDepth, stop_depth
from stagegraph.stages.rerank.model import read_stagegraph_metadata
from stagegraph.stages.rerank.score_cache import ScoreCache


class TuneError(InputError):
    """A tuning run that cannot start: no cross-encoder, a depth the pool cannot give, a bad budget."""


# --------------------------------------------------------------------------- measuring


class TimingStore:
    """Per (scorer, query, candidates) the measured time of every block and the token count of every pair."""

    def __init__(self, path: Path):
        self._db = SqliteStore(path, "timings", group="scorer", key="query",
                               values={"block_ns": "TEXT", "tokens": "TEXT"}, timeout=30)

    def get(self, scorer: str, query: str) -> tuple[np.ndarray, np.ndarray] | None:
        row = self._db.get(scorer, query)
        if row is None:
            return None
        return np.array(json.loads(row[0]), dtype=np.int64), np.array(json.loads(row[1]), dtype=np.int64)

    def put(self, scorer: str, query: str, block_ns: Sequence[int], tokens: Sequence[int]) -> None:
        self._db.put_many([(scorer, query, json.dumps([int(x) for x in block_ns]), json.dumps([int(x) for x in tokens]))])

    def close(self) -> None:
        self._db.close()


class Scorer:
    """One model x backend: its stage (warmed up), its score cache and its key."""

    def __init__(self, label: str, model: str, backend: str, stage: CrossEncoderReranker, cache: ScoreCache):
        self.label, self.model, self.backend, self.stage, self.cache = label, model, backend, stage, cache
        self.key = stage.scorer_key()
        self.blend = stage.blend
        meta = read_stagegraph_metadata(model).get("adaptive_depth")
        self.calibration = AdaptiveCalibration.model_validate(meta) if meta else None

    @property
    def name(self) -> str:
        return f"{self.label} {self.backend}"


def _query_key(text: str, ids: Sequence[str]) -> str:
    return stable_hash({"query": text, "candidates": list(ids)})


def measure_query(scorer: Scorer, text: str, rows: np.ndarray, ids: list[str], block: int) -> tuple[np.ndarray, np.ndarray]:
    """Score one query's candidates block by block, timing each block; scores go to the score cache."""
    block_ns, scores = [], []
    for lo in range(0, len(rows), block):
        part = rows[lo: lo + block]
        t0 = time.perf_counter_ns()
        values = scorer.stage.score_rows(text, part)
        block_ns.append(time.perf_counter_ns() - t0)
        scores.append(values)
    all_scores = np.concatenate(scores) if scores else np.empty(0, np.float32)
    scorer.cache.store([text] * len(ids), ids, all_scores)
    return np.array(block_ns, dtype=np.int64), scorer.stage.pair_lengths(text, rows)


# --------------------------------------------------------------------------- configurations


def _cost_prefix(block_ns: np.ndarray, depth: int, block: int) -> float:
    """ms to score the first `depth` candidates: the blocks that cover them (depth a block multiple,
    or the last block counted in proportion)."""
    full, part = divmod(depth, block)
    ns = float(block_ns[:full].sum())
    if part and full < len(block_ns):
        ns += float(block_ns[full]) * part / block
    return ns / 1e6


def _cost_subset(block_ns: np.ndarray, tokens: np.ndarray, positions: np.ndarray, block: int) -> float:
    """ms to score the candidates at `positions` (of the pool): each its token share of its block's time."""
    ns = 0.0
    for p in positions.tolist():
        b = p // block
        lo, hi = b * block, min((b + 1) * block, len(tokens))
        share = tokens[p] / max(int(tokens[lo:hi].sum()), 1)
        ns += float(block_ns[b]) * share
    return ns / 1e6


class _Evaluator:
    """Builds every configuration's rankings from the cached scores and prices them from the timings."""

    def __init__(self, queries: Queries, qrels, corpus, pools: list[Ranking], k: int, block: int):
        self.queries, self.corpus, self.pools, self.k, self.block = queries, corpus, pools, k, block
        self.qrels = Qrels({q: qrels.for_query(q) for q in queries.ids})  # these queries only, as evaluate does
        self.scores: dict[str, list[np.ndarray]] = {}
        self.timings: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.scorers: dict[str, Scorer] = {}
        self.costs: dict[str, np.ndarray] = {}  # point label -> per-query ms
        self.rankings: dict[str, list[Ranking]] = {}

    def add(self, scorer: Scorer, scores: list[np.ndarray], timings: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.scorers[scorer.name], self.scores[scorer.name], self.timings[scorer.name] = scorer, scores, timings

    def ndcg(self, rankings: list[Ranking]) -> float:
        return self.ndcg_of(rankings, self.queries, self.qrels)

    def ndcg_of(self, rankings: list[Ranking], queries: Queries, qrels) -> float:
        return float(score_run(rankings, queries, qrels, self.corpus, ["ndcg@10"]).means["ndcg@10"])

    def _point(self, label, kind, steps, rankings, costs, pairs, calibrated=False) -> TunePoint:
        costs = np.asarray(costs, dtype=np.float64)
        self.costs[label], self.rankings[label] = costs, rankings
        return TunePoint(
            label=label, kind=kind, steps=steps, ndcg=round(self.ndcg(rankings), 4),
            mean_ms=round(float(costs.mean()), 2) if costs.size else 0.0,
            p95_ms=round(float(np.percentile(costs, 95)), 2) if costs.size else 0.0,
            pairs=round(float(np.mean(pairs)), 2) if len(pairs) else 0.0, calibrated=calibrated,
        )

    def pool_point(self) -> TunePoint:
        rankings = [p.top(self.k) for p in self.pools]
        return self._point("no rerank (pool)", "pool", [], rankings, np.zeros(len(self.pools)), [])

    def fixed(self, name: str, depth: int) -> TunePoint:
        s = self.scorers[name]
        rankings, costs, pairs = [], [], []
        for pool, scores, (block_ns, _) in zip(self.pools, self.scores[name], self.timings[name]):
            n = min(depth, len(pool))
            rankings.append(finish(pool.top(n), scores[:n], s.blend, self.k, "rerank"))
            costs.append(_cost_prefix(block_ns, n, self.block))
            pairs.append(n)
        step = RerankStep(model=s.model, label=s.label, backend=s.backend, depth=depth, k=self.k)
        return self._point(f"{name} depth {depth}", "fixed", [step], rankings, costs, pairs)

    def adaptive(self, name: str, depth: int, margin: float, calibrated: bool = False) -> TunePoint:
        s = self.scorers[name]
        policy = AdaptiveDepth(block=self.block, min_depth=self.block, margin=margin)
        rankings, costs, pairs = [], [], []
        for pool, scores, (block_ns, _) in zip(self.pools, self.scores[name], self.timings[name]):
            n = stop_depth(scores[:depth], min(depth, len(pool)), self.k, policy, margin)
            rankings.append(finish(pool.top(n), scores[:n], s.blend, self.k, "rerank"))
            costs.append(_cost_prefix(block_ns, n, self.block))
            pairs.append(n)
        step = RerankStep(model=s.model, label=s.label, backend=s.backend, depth=depth, k=self.k, margin=margin)
        tag = " (calibrated)" if calibrated else ""
        return self._point(f"{name} adaptive <= {depth} margin {margin:g}{tag}", "adaptive", [step], rankings, costs,
                           pairs, calibrated=calibrated)

    def cascade(self, small: str, large: str, depth: int, k1: int) -> TunePoint:
        a, b = self.scorers[small], self.scorers[large]
        rankings, costs, pairs = [], [], []
        for i, pool in enumerate(self.pools):
            n = min(depth, len(pool))
            first = finish(pool.top(n), self.scores[small][i][:n], a.blend, k1, "small")
            positions = pool.positions_of(first.doc_rows)
            large_scores = self.scores[large][i][positions]
            rankings.append(finish(first, large_scores, b.blend, self.k, "large"))
            block_ns, tokens = self.timings[large][i]
            costs.append(_cost_prefix(self.timings[small][i][0], n, self.block)
                         + _cost_subset(block_ns, tokens, positions, self.block))
            pairs.append(n + len(first))
        steps = [RerankStep(model=a.model, label=a.label, backend=a.backend, depth=depth, k=k1),
                 RerankStep(model=b.model, label=b.label, backend=b.backend, depth=k1, k=self.k)]
        return self._point(f"{small} depth {depth} -> {k1} >> {large} -> {self.k}", "cascade", steps, rankings, costs, pairs)


def pareto(points: Sequence[TunePoint]) -> list[TunePoint]:
    """The points no other point beats on both P95 (lower) and nDCG@10 (higher)."""
    ordered = sorted(points, key=lambda p: (p.p95_ms, -p.ndcg))
    front, best = [], -math.inf
    for p in ordered:
        if p.ndcg > best + 1e-12:
            front.append(p)
            best = p.ndcg
    return front


def ninety_point(points: Sequence[TunePoint], base: float, share: float = 0.9) -> TunePoint | None:
    """The cheapest (P95) point whose gain over `base` reaches `share` of the largest gain."""
    gains = [p.ndcg - base for p in points]
    top = max(gains, default=0.0)
    if top <= 0:
        return None
    fit = [p for p, g in zip(points, gains) if g >= share * top - 1e-12]
    return min(fit, key=lambda p: (p.p95_ms, -p.ndcg))


def recommend(points: Sequence[TunePoint], budget_ms: float) -> TunePoint | None:
    """The best nDCG@10 whose P95 fits the budget (ties: the lower mean time)."""
    fit = [p for p in points if p.p95_ms <= budget_ms]
    return max(fit, key=lambda p: (p.ndcg, -p.mean_ms)) if fit else None


def depth_verdicts(points: Sequence[TunePoint]) -> list[DepthVerdict]:
    """Each adaptive point against the same scorer's fixed depths at its mean cost."""
    out = []
    for a in (p for p in points if p.kind == "adaptive"):
        scorer = a.label.split(" adaptive")[0]
        fixed = sorted((p for p in points if p.kind == "fixed" and p.label.startswith(scorer + " depth")), key=lambda p: p.mean_ms)
        if len(fixed) < 2:
            continue
        xs, ys = [p.mean_ms for p in fixed], [p.ndcg for p in fixed]
        same = float(np.interp(a.mean_ms, xs, ys))
        cheaper = [p for p in fixed if p.mean_ms <= a.mean_ms + 1e-9]
        best = max(cheaper, key=lambda p: p.ndcg) if cheaper else fixed[0]
        out.append(DepthVerdict(
            scorer=scorer, margin=a.steps[0].margin or 0.0, calibrated=a.calibrated, adaptive_ndcg=a.ndcg,
            adaptive_mean_ms=a.mean_ms, fixed_ndcg_same_cost=round(same, 4), best_fixed_label=best.label,
            best_fixed_ndcg=best.ndcg, gain=round(a.ndcg - same, 4),
        ))
    return out


# --------------------------------------------------------------------------- the run


def reranker_steps(graph: Pipeline) -> list[Step]:
    return [s for s in graph.steps if s.stage.type_name == "cross_encoder"]


def first_stage(graph: Pipeline) -> Pipeline:
    """The part of `graph` that feeds its first cross-encoder: the candidate pool."""
    rerankers = reranker_steps(graph)
    if not rerankers:
        raise TuneError(f"the pipeline {graph.name!r} has no cross_encoder stage to tune; add one after the pool")
    by_name = {s.name: s for s in graph.steps}
    keep: set[str] = set()
    todo = list(rerankers[0].inputs)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(by_name[name].inputs)
    return Pipeline([s for s in graph.steps if s.name in keep])


def model_label(model: str, taken: Iterable[str] = ()) -> str:
    """A short name for a model: its directory's name (or the last part of a hub id), made unique."""
    base = Path(model.rstrip("/")).name or model
    label, n = base, 2
    while label in set(taken):
        label, n = f"{base}-{n}", n + 1
    return label


def build_pipeline(graph: Pipeline, point: TunePoint, template: CrossEncoderReranker, block: int = 10) -> Pipeline:
    """`graph`'s candidate pool followed by `point`'s reranker stage(s), as a pipeline (for YAML);
    an adaptive step scores blocks of `block` (the tuning run's), from a first block of that size."""
    pool = first_stage(graph)
    c = template.config
    stages = []
    names = ["rerank"] if len(point.steps) == 1 else ["small", "large"]
    for name, step in zip(names, point.steps):
        adaptive = None if step.margin is None else AdaptiveDepth(block=block, min_depth=block, margin=step.margin)
        stages.append(CrossEncoderReranker(
            step.model, max_length=c.max_length, depth=step.depth, k=step.k, batch_size=c.batch_size,
            backend=step.backend, device=c.device, blend=c.blend, blend_upstream=c.blend_upstream,
            adaptive_depth=adaptive, name=name,
        ))
    if not stages:
        return pool
    try:
        node = pool.node
    except InputError:
        steps = list(pool.steps)
        upstream = pool.output
        for stage in stages:
            steps.append(Step(stage.name, stage, (upstream,)))
            upstream = stage.name
        return Pipeline(steps)
    pipe = Pipeline(node)
    for stage in stages:
        pipe = pipe >> stage
    return pipe


def tune_rerank(
    graph: Pipeline,
    dataset: Dataset,
    *,
    split: str = "train",
    settings: TuneSettings = TuneSettings(),
    env: Environment | None = None,
    query_ids: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    verify: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TuneResult:
    """Measure every configuration on `split` (see the module docstring) and recommend one under the budget."""
    started = time.perf_counter()
    s = settings
    if any(d % s.block for d in s.depths) or any(d % s.block for d in s.cascade_depths):
        raise TuneError(f"depths {list(s.depths)} and cascade depths {list(s.cascade_depths)} must be multiples of the block ({s.block})")
    rerankers = reranker_steps(graph)
    pool_graph = first_stage(graph)
    template: CrossEncoderReranker = rerankers[0].stage
    env = env or Environment(dataset.corpus, progress=progress)
    corpus = dataset.corpus
    queries, qrels = dataset.split(split)
    if query_ids is not None:
        wanted = [q for q in query_ids if q in set(queries.ids)]
        if not wanted:
            raise TuneError(f"none of the {len(query_ids)} given query ids is a judged {split} query of {dataset.name!r}")
        queries = queries.restrict_to(wanted)
    judged = [i for i, q in enumerate(queries.ids) if q in qrels]
    queries = queries.select(judged)
    if s.max_queries is not None and len(queries) > s.max_queries:
        queries = queries.select(range(s.max_queries))
    if not len(queries):
        raise TuneError(f"the {split} split of {dataset.name!r} has no judged queries to tune on")
    max_depth = max(s.depths)

    # the candidate pool, once (batch mode, from the stage cache when it has it)
    pools_all = pool_graph.execute(queries, env=env, mode="batch", cache=StageCache(Path(env.work_dir) / "cache"),
                                   progress=progress).final
    pools = [p.top(max_depth) for p in pools_all]
    if max(len(p) for p in pools) < max_depth:
        say(f"note: the pool returns at most {max(len(p) for p in pools)} candidates; deeper settings score what there is")
    ids = [[corpus.ids[int(r)] for r in p.doc_rows] for p in pools]

    # the scorers: every model x supported backend
    features = cpu_features()
    models: list[str] = []
    for m in [st.stage.config.model for st in rerankers] + list(s.models):
        if m not in models:
            models.append(m)
    labels: dict[str, str] = {}
    for m in models:
        labels[m] = model_label(m, labels.values())
    wanted_backends = list(s.backends) if s.backends else list(CANDIDATES)
    unknown = [b for b in wanted_backends if b not in CANDIDATES]
    if unknown:
        raise TuneError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    if "torch" not in wanted_backends:
        wanted_backends.insert(0, "torch")  # the reference every other backend is judged against
    rows: list[BackendRow] = []
    scorers: list[Scorer] = []
    base_dir = Path(env.work_dir) / "tune_rerank"
    c = template.config
    for m in models:
        for b in wanted_backends:
            ok, why = backend_support(b, features)
            row = BackendRow(model=labels[m], backend=b, supported=ok, reason=why)
            rows.append(row)
            if not ok:
                continue
            stage = CrossEncoderReranker(m, max_length=c.max_length, depth=max_depth, k=s.k, batch_size=max(c.batch_size, s.block),
                                         backend=b, device="cpu", blend=c.blend, blend_upstream=c.blend_upstream,
                                         name=f"{labels[m]}-{b}")
            try:
                stage.warm_up(env)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
                row.supported, row.reason = False, f"could not load: {' '.join(str(exc).split())[:160]}"
                continue
            key = stage.scorer_key()
            cache = ScoreCache(base_dir / "scores" / f"{key[:16]}-{corpus.fingerprint[:12]}.sqlite")
            scorers.append(Scorer(labels[m], m, b, stage, cache))
    if not scorers:
        raise TuneError("no reranker could be loaded; check the models (--models) and backends (--backends)")
    store = TimingStore(base_dir / "timings.sqlite")
    say(f"tune-rerank: {len(queries)} {split} queries of {dataset.name}, pool {pool_graph.output!r} top {max_depth}, "
        f"{len(scorers)} scorers ({', '.join(x.name for x in scorers)}), blocks of {s.block}; CPU: {features.summary()}")

    # the measuring loop: query by query, scorers in turn, resumable
    qkeys = [_query_key(t, d) for t, d in zip(queries.texts, ids)]
    records: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {x.name: {} for x in scorers}
    for x in scorers:
        for i, qk in enumerate(qkeys):
            got = store.get(x.key, qk)
            if got is not None and len(got[1]) == len(pools[i]):
                known = x.cache.lookup(queries.texts[i], ids[i])
                if not np.isnan(known).any():
                    records[x.name][i] = got
    active = list(scorers)
    pruned = False
    stopped = False
    thread_policy.apply(thread_policy.threads_for(1))
    for x in active:  # warm-up: first queries once, untimed (their scores are kept)
        for i in range(min(s.warmup, len(queries))):
            if i not in records[x.name]:
                x.stage.score_rows(queries.texts[i], pools[i].doc_rows)
    bar = progress_bar(total=len(queries), desc="tune-rerank (online)", unit="q", disable=not progress)
    for i in range(len(queries)):
        if i and s.time_limit_s is not None and time.perf_counter() - started > s.time_limit_s:
            stopped = True  # checked between queries: the query under way when it passed completes
            break
        turn = active[i % len(active):] + active[: i % len(active)]
        for x in turn:
            if i in records[x.name]:
                continue
            thread_policy.apply(thread_policy.threads_for(1))
            block_ns, tokens = measure_query(x, queries.texts[i], pools[i].doc_rows, ids[i], s.block)
            store.put(x.key, qkeys[i], block_ns, tokens)
            records[x.name][i] = (block_ns, tokens)
        bar.update(1)
        if s.prune and not pruned and i + 1 >= min(s.calibration_queries, len(queries)):
            active = _prune(active, rows, records, queries, qrels, corpus, pools, ids, s, list(range(i + 1)))
            pruned = True
    bar.close()
    store.close()
    done = [i for i in range(len(queries)) if all(i in records[x.name] for x in active)]
    if not pruned and done:  # too few queries to prune on: every backend is reported on what there is
        _prune(active, rows, records, queries, qrels, corpus, pools, ids, s, done[: s.calibration_queries], drop=False)
    sub = queries.select(done)
    ev = _Evaluator(sub, qrels, corpus, [pools[i] for i in done], s.k, s.block)
    for x in active:
        scores = [x.cache.lookup(queries.texts[i], ids[i]) for i in done]
        ev.add(x, scores, [records[x.name][i] for i in done])

    points = [ev.pool_point()]
    for x in active:
        for d in s.depths:
            points.append(ev.fixed(x.name, d))
        for margin in s.margins:
            points.append(ev.adaptive(x.name, max_depth, margin))
        if x.calibration is not None and x.calibration.margin not in s.margins:
            points.append(ev.adaptive(x.name, max_depth, x.calibration.margin, calibrated=True))
        elif x.calibration is not None:
            for p in points:
                if p.kind == "adaptive" and p.label == f"{x.name} adaptive <= {max_depth} margin {x.calibration.margin:g}":
                    p.calibrated = True
                    p.label += " (calibrated)"
    # cascades: a faster model first, a slower one second
    speed = {x.name: float(np.mean([t[0].sum() for t in ev.timings[x.name]])) for x in active}
    for a, b in itertools.permutations(active, 2):
        if a.model == b.model or _model_speed(active, speed, a.model) >= _model_speed(active, speed, b.model):
            continue
        for d, k1 in itertools.product(s.cascade_depths, s.cascade_ks):
            if d <= max_depth and k1 < d and k1 >= s.k:
                points.append(ev.cascade(a.name, b.name, d, k1))
    for p in pareto(points):
        p.pareto = True
    pool_ndcg = points[0].ndcg
    best = recommend(points, s.budget_ms)
    ninety = ninety_point(points, pool_ndcg)
    slowest = max(active, key=lambda x: _model_speed(active, speed, x.model))
    naive = next((p for p in points if p.kind == "fixed" and p.label == f"{slowest.label} torch depth {max_depth}"), None)
    result = TuneResult(
        dataset=dataset.name, split=split, queries=len(done), queries_total=len(queries), stopped_early=stopped,
        budget_ms=s.budget_ms, k=s.k, cpu=features.summary(), machine=f"{machine_info()['cpu_model']}, {thread_policy.usable_cores()} usable cores", settings=s, pool=pool_graph.output,
        pool_ndcg=pool_ndcg, backends=rows, points=points, recommended=best.label if best else None,
        ninety=ninety.label if ninety else None, naive=naive.label if naive else None,
        auto_picks=_auto_picks(rows), depth_verdicts=depth_verdicts(points),
    )
    if best is not None:
        result.recommended_yaml = _yaml(graph, best, template, result)
    if verify:
        targets = {p.label: p for p in (best, naive) if p is not None and p.kind != "pool"}
        for p in targets.values():
            result.verifications.append(_verify(graph, p, template, dataset, split, ev, verify, env, progress))
    result.lines = tune_report.summary_lines(result)
    result.seconds = round(time.perf_counter() - started, 1)
    for line in result.lines:
        say(line)
    if out is not None:
        tune_report.save(result, out)
    for x in scorers:
        x.cache.close()
    return result


def _model_speed(active: Sequence[Scorer], speed: dict[str, float], model: str) -> float:
    """A model's time on the reference backend (torch fp32), else its fastest measured."""
    own = [speed[x.name] for x in active if x.model == model]
    ref = [speed[x.name] for x in active if x.model == model and x.backend == "torch"]
    return ref[0] if ref else min(own)


def _prune(active, rows, records, queries, qrels, corpus, pools, ids, s: TuneSettings, on: list[int], drop: bool = True):
    """Measure each model x backend on the calibration queries; keep fp32 and the fastest within tolerance."""
    sub = queries.select(on)
    ev = _Evaluator(sub, qrels, corpus, [pools[i] for i in on], s.k, s.block)
    stats: dict[str, tuple[float, float]] = {}
    for x in active:
        scores = [x.cache.lookup(queries.texts[i], ids[i]) for i in on]
        ev.add(x, scores, [records[x.name][i] for i in on])
        p = ev.fixed(x.name, max(s.depths))
        stats[x.name] = (p.ndcg, p.mean_ms)
    keep: list[Scorer] = []
    for model in dict.fromkeys(x.model for x in active):
        mine = [x for x in active if x.model == model]
        ref = next((x for x in mine if x.backend == "torch"), mine[0])
        base = stats[ref.name][0]
        good = [x for x in mine if stats[x.name][0] >= base - s.tolerance - 1e-12]
        fastest = min(good, key=lambda x: stats[x.name][1])
        for x in mine:
            row = next(r for r in rows if r.model == x.label and r.backend == x.backend)
            row.ndcg, row.ms_per_query = stats[x.name]
            row.delta = round(stats[x.name][0] - base, 4)
            row.kept = (x is ref or x is fastest) or not drop
            if x is fastest and x is not ref:
                row.reason += f"; auto's pick: the fastest within {s.tolerance} of fp32"
            elif x is fastest:
                row.reason += "; auto's pick: fp32 was the fastest within tolerance"
            elif row.ndcg < base - s.tolerance:
                row.reason += f"; rejected: nDCG@10 {row.delta:+.4f} vs fp32"
            elif drop and x is not ref:
                row.reason += "; within tolerance but slower than the pick"
            if row.kept:
                keep.append(x)
    return keep if drop else list(active)


def _auto_picks(rows: Sequence[BackendRow]) -> dict[str, str]:
    out = {}
    for r in rows:
        if "auto's pick" in r.reason:
            out[r.model] = r.backend
    return out


def _yaml(graph: Pipeline, point: TunePoint, template: CrossEncoderReranker, result: TuneResult) -> str:
    pipe = build_pipeline(graph, point, template, result.settings.block)
    header = (f"# recommended by stagegraph tune-rerank for a {result.budget_ms:g} ms P95 rerank budget on "
              f"{result.dataset} {result.split} ({result.queries} queries, {result.machine}):\n"
              f"# {point.label}: nDCG@10 {point.ndcg:.4f}, rerank mean {point.mean_ms:.1f} ms, P95 {point.p95_ms:.1f} ms\n")
    return header + pipe.to_yaml()


def _verify(graph: Pipeline, point: TunePoint, template: CrossEncoderReranker, dataset: Dataset, split: str,
            ev: _Evaluator, n: int, env: Environment, progress: bool) -> Verification:
    """Run `point` as a real pipeline (the executor, online, no score cache) on the first `n` tuned
    queries: its measured nDCG@10 and rerank time against the estimate for the same queries."""
    from stagegraph.corpora.types import Qrels
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.sweep import UpstreamOnlyCache

    pipe = build_pipeline(graph, point, template, ev.block)
    qids = ev.queries.ids[: max(1, n)]
    _, qrels = dataset.split(split)
    sub = Dataset(dataset.name, dataset.corpus, ev.queries.restrict_to(qids), {split: Qrels({q: qrels.for_query(q) for q in qids})})
    first_rerank = reranker_steps(pipe)[0].name
    cache = UpstreamOnlyCache.for_graph(StageCache(Path(env.work_dir) / "cache"), pipe, first_rerank, sub.split(split)[0], env)
    report = evaluate(pipe, sub, split=split, metrics=["ndcg@10"], mode="online", env=env, cache=cache, warmup=2,
                      progress=progress)
    names = [st.name for st in reranker_steps(pipe)]
    measured = np.sum([np.asarray(report.per_query.latency_ms[nm], dtype=np.float64) for nm in names], axis=0)
    costs = ev.costs[point.label][: len(qids)]
    estimated_ndcg = ev.ndcg_of(ev.rankings[point.label][: len(qids)], sub.split(split)[0], sub.split(split)[1])
    return Verification(
        label=point.label, queries=len(qids), ndcg_estimated=round(estimated_ndcg, 4),
        # scored like the estimate, on the output's own rankings (report.json has null when k < 10)
        ndcg_measured=round(ev.ndcg_of(report.runs[1][pipe.output], *sub.split(split)), 4),
        mean_ms_estimated=round(float(np.mean(costs)), 2), mean_ms_measured=round(float(measured.mean()), 2),
        p95_ms_estimated=round(float(np.percentile(costs, 95)), 2), p95_ms_measured=round(float(np.percentile(measured, 95)), 2),
    )
