"""`evaluate`: run a graph over a dataset split and score the output of every stage.

The funnel is the point: the report shows what each retriever finds, what the pool keeps (its
recall@100 is the reranker's ceiling) and what the reranker puts on top, each next to its own
latency (online: P50/P95/P99/mean/max per query; batch: throughput), the warm-up queries left out
and whether the stage came from the cache. The queries evaluated are the split's judged queries;
a judged query a stage returns nothing for scores 0 and is counted as missing.

A `MetricsStage` at the end of the graph (`type: metrics` in YAML) sets the metrics when the caller
gives none; it passes rankings through, so it is run but not reported as a stage of its own.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence

import numpy as np

from stagegraph.corpora.types import Corpus, Dataset, Qrels, Queries
from stagegraph.errors import InputError
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.compose import Pipeline, as_pipeline
from stagegraph.pipeline.executor import ExecutorConfig, Mode, RunResult, Timing
from stagegraph.evaluation.conditions import LoadProbe, MachineLoad
from stagegraph.evaluation.report import (
    BranchContribution,
    EndToEnd,
    PerQuery,
    Report,
    StageReport,
    library_versions,
    machine_info,
)
from stagegraph.pipeline.timing import LatencySummary
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.loss import attribute_losses, leg_filters
from stagegraph.evaluation.measures import DEFAULT_METRICS, Metric, parse_metrics
from stagegraph.evaluation.aggregate import Aggregation, document_corpus, to_documents
from stagegraph.evaluation.metrics_stage import MetricsStage
from stagegraph.evaluation.scoring import score_run

DEFAULT = DEFAULT_METRICS


def evaluate(
    pipeline: Pipeline | object,
    dataset: Dataset,
    split: str = "test",
    metrics: Iterable[str | Metric] | str | None = DEFAULT,
    mode: Mode = "online",
    env: Environment | None = None,
    cache: StageCache | None = None,
    warmup: int = 3,
    progress: bool = True,
    timing: Timing = "concurrent",
    aggregate: Aggregation | None = None,
    executor: object = None,
    loss_at: int = 10,
) -> Report:
    """Run `pipeline` on the judged queries of `split` and report quality and cost per stage.

    `executor`: where a batch run runs, `"local"` or `"ray"` (or `{type: ray, address, workers}`,
    an `ExecutorConfig`, or an open `stagegraph.scale.RayExecutor`); default the pipeline's own
    `executor:` (local). On Ray the queries are sharded over the workers and the report equals a
    local batch run's, plus the per-worker split.

    On a chunked corpus (a collection) whose qrels name documents, `aggregate` (`maxp`, `firstp`,
    `sum`; `stagegraph.evaluation.aggregate`) turns every stage's chunk ranking into a document
    ranking before it is scored; a chunked corpus is aggregated by `maxp` unless told otherwise.

    `loss_at`: the k of loss attribution (`stagegraph.evaluation.loss`): every relevant document
    missing from the output's top k, and the step that lost it (`report.loss`, `loss.tsv`)."""
    graph = as_pipeline(pipeline)
    graph.require_complete()
    queries, qrels = dataset.split(split)
    if env is None:
        env = Environment(corpus=dataset.corpus, progress=progress)
    elif env.corpus.fingerprint != dataset.corpus.fingerprint:
        raise InputError(
            "the Environment's corpus is not the dataset's corpus; build it as "
            "Environment(corpus=dataset.corpus, ...) so indexes match the documents scored"
        )
    parsed = _metrics_for(graph, metrics)
    probe = LoadProbe()
    result = _run(graph, queries, env, mode, cache, warmup, timing, progress, executor)
    if aggregate is None and dataset.corpus.doc_ids is not None:
        aggregate = "maxp"
    if loss_at < 1:
        raise InputError(f"loss_at must be a positive rank (the k of 'missing from the top k'), got {loss_at}")
    return build_report(graph, dataset, split, queries, qrels, result, parsed, timing=timing, aggregate=aggregate,
                        load=probe.finish(), loss_at=loss_at)


def _run(graph: Pipeline, queries: Queries, env: Environment, mode, cache, warmup, timing, progress, executor) -> RunResult:
    """The pipeline's run here, or on the executor named (a cluster named is opened and closed here)."""
    if executor is not None and hasattr(executor, "execute"):
        return graph.execute(queries, env=env, mode=mode, cache=cache, executor=executor, progress=progress)
    config = ExecutorConfig.of(executor) if executor is not None else graph.executor
    if not config.distributed:
        return graph.execute(queries, env=env, mode=mode, cache=cache, warmup=warmup, timing=timing)
    if mode != "batch":
        raise InputError(f"the {config.type} executor runs batch mode only: pass mode='batch' (--mode batch)")
    from stagegraph.scale import session

    with session(config, progress=progress) as open_executor:
        return graph.execute(queries, env=env, mode=mode, cache=cache, executor=open_executor, progress=progress)


def _metrics_for(graph: Pipeline, metrics: Iterable[str | Metric] | str | None) -> list[Metric]:
    if metrics is not None:
        return parse_metrics(metrics)
    declared = [s.stage for s in graph.steps if isinstance(s.stage, MetricsStage)]
    return declared[-1].metrics if declared else parse_metrics(DEFAULT_METRICS)


def _reported_steps(graph: Pipeline) -> list:
    """Every step but pass-through metrics stages (which would repeat their input's figures)."""
    return [s for s in graph.steps if not isinstance(s.stage, MetricsStage)]


def _output_name(graph: Pipeline) -> str:
    """The last reported stage: a trailing metrics stage reports its input."""
    name = graph.output
    while isinstance(graph.step(name).stage, MetricsStage):
        name = graph.step(name).inputs[0]
    return name


def build_report(
    graph: Pipeline,
    dataset: Dataset,
    split: str,
    queries: Queries,
    qrels: Qrels,
    result: RunResult,
    metrics: Sequence[Metric],
    timing: str = "concurrent",
    aggregate: Aggregation | None = None,
    load: MachineLoad | None = None,
    loss_at: int = 10,
) -> Report:
    """Score every stage of `result` and gather the figures into a `Report` (`load`: how busy the
    machine was while `result` ran, from a `LoadProbe` started before it)."""
    names = [str(m) for m in metrics]
    stages: dict[str, StageReport] = {}
    per_query = PerQuery(qids=qrels.query_ids, latency_qids=list(queries.ids))
    runs: dict[str, list[Ranking]] = {}
    judged_corpus = dataset.corpus
    documents = document_corpus(dataset.corpus) if aggregate else None
    for step in _reported_steps(graph):
        stage_run = result.stages[step.name]
        rankings, per_doc = stage_run.rankings, None
        if documents is not None:
            doc_runs = to_documents(rankings, dataset.corpus, aggregate, documents)
            rankings, per_doc, judged_corpus = doc_runs.rankings, doc_runs.chunks_per_document, doc_runs.documents
        scores = score_run(rankings, queries, qrels, judged_corpus, metrics)
        latency = stage_run.latency
        limit = step.limit
        # A metric reading deeper than `limit` does not apply: the report keeps it null under
        # `metrics` and drops its per-query values (StageReport and Report enforce that on any input).
        stages[step.name] = StageReport(
            limit=limit,
            not_applicable=[str(m) for m in metrics if m.k is not None and limit is not None and m.k > limit],
            latency_alone_ms=stage_run.latency_isolated,
            type=step.stage.type_name,
            inputs=list(step.inputs),
            cutoff=step.cutoff,
            queries=len(stage_run.rankings),
            metrics=scores.means,
            missing=scores.missing,
            latency_ms=latency,
            throughput_qps=_throughput(stage_run.rankings, stage_run.latencies_ns, stage_run.wall_ns, stage_run.cache_hit),
            cache_hit=stage_run.cache_hit,
            wall_ms=stage_run.wall_ns / 1e6,
            branches={} if documents is not None else branch_contributions(step.inputs, stage_run.rankings, queries, qrels, dataset.corpus),
            chunks_per_document=per_doc,
        )
        per_query.metrics[step.name] = {m: v.tolist() for m, v in scores.per_query.items()}
        if stage_run.latencies_ns is not None:
            per_query.latency_ms[step.name] = (np.asarray(stage_run.latencies_ns) / 1e6).tolist()
        runs[step.name] = rankings
    # End to end covers the stages that ran; when every stage came from the cache nothing was timed.
    e2e = EndToEnd(wall_ms=result.wall_ns / 1e6, includes=[n for n, s in stages.items() if not s.cache_hit])
    ran = not all(s.cache_hit for s in stages.values())
    if result.end_to_end_ns is not None and ran:
        e2e.latency_ms = LatencySummary.from_ns(result.end_to_end_ns)
        per_query.latency_ms["end_to_end"] = (np.asarray(result.end_to_end_ns) / 1e6).tolist()
    if ran and result.wall_ns > 0 and len(queries):
        e2e.throughput_qps = len(queries) / (result.wall_ns / 1e9)
    output = _output_name(graph)
    report = Report(
        dataset=dataset.name,
        split=split,
        mode=result.mode,
        timing=timing,
        aggregate=aggregate,
        config=_graph_config(graph),
        output=output,
        metrics=names,
        dataset_fingerprint=dataset.corpus.fingerprint,
        corpus_docs=len(dataset.corpus),
        queries=len(qrels),
        missing_queries=stages[output].missing,
        warmup_queries=result.warmup_queries,
        cache_hits=sum(s.cache_hit for s in stages.values()),
        end_to_end=e2e,
        executor=result.executor.type,
        workers=list(result.workers),
        stages=stages,
        versions=library_versions(),
        machine=machine_info(),
        machine_load=load,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        per_query=per_query,
    )
    report.attach_runs(queries.ids, runs, judged_corpus)
    reported = _reported_steps(graph)
    losses, report.loss = attribute_losses(
        reported, output, runs, queries, qrels, judged_corpus, k=loss_at,
        filters=leg_filters(reported, graph.filter), chunks=dataset.corpus if documents is not None else None)
    report.attach_losses(losses)
    return report


def _graph_config(graph: Pipeline) -> dict | None:
    try:
        return graph.to_config()
    except Exception as exc:  # a stage that cannot be written as YAML must not sink the report
        return {"error": f"the graph could not be written as a config: {exc}", "graph": str(graph)}


def _throughput(rankings: list, latencies_ns, wall_ns: int, cache_hit: bool) -> float | None:
    """Queries per second of stage time (batch: over the stage's one call; online: over the sum)."""
    if cache_hit or wall_ns <= 0 or not rankings:
        return None
    n = len(latencies_ns) if latencies_ns is not None else len(rankings)
    return n / (wall_ns / 1e9)


def branch_contributions(
    branches: Sequence[str],
    rankings: Sequence[Ranking],
    queries: Queries,
    qrels: Qrels,
    corpus: Corpus,
) -> dict[str, BranchContribution]:
    """Per branch of a fusing step, the pooled documents it ranked, and those (and the relevant ones)
    only it ranked, read from the provenance of the step's rankings (`provenance[branch].found`)."""
    if len(branches) < 2:
        return {}
    found = {b: [] for b in branches}
    unique = {b: [] for b in branches}
    unique_rel = {b: [] for b in branches}
    for qid, ranking in zip(queries.ids, rankings):
        present = np.zeros((len(branches), len(ranking)), dtype=bool)
        for i, b in enumerate(branches):
            trace = ranking.provenance.get(b)
            if trace is not None:
                present[i] = trace.found
        judged = qrels.as_rows(qid, corpus)
        relevant = np.isin(ranking.doc_rows, judged.doc_rows[judged.grades >= 1])
        only = present & (present.sum(axis=0) == 1)
        for i, b in enumerate(branches):
            found[b].append(present[i].sum())
            unique[b].append(only[i].sum())
            unique_rel[b].append((only[i] & relevant).sum())
    return {
        b: BranchContribution(
            found=float(np.mean(found[b])) if found[b] else 0.0,
            unique=float(np.mean(unique[b])) if unique[b] else 0.0,
            unique_relevant=float(np.mean(unique_rel[b])) if unique_rel[b] else 0.0,
        )
        for b in branches
    }
