"""`stagegraph eval CONFIG --dataset D [--out DIR]`: quality and latency of every stage on a dataset.

Or on a collection of one's own: `stagegraph eval CONFIG --collection DIR --queries Q.jsonl --qrels
QRELS.tsv [--aggregate maxp|firstp|sum]`: the qrels name documents, the collection holds chunks, and
each stage's chunk ranking is scored as a document ranking (`stagegraph.evaluation.aggregate`).

`--executor ray --mode batch` shards the queries over a Ray cluster (`stagegraph.scale`): the same
report and run files, plus the per-worker split; the stage cache is not used there.

Or another system's output: `stagegraph eval --run RUN.trec --dataset D` scores a TREC run file with
the same measures and report (`stagegraph.evaluation.runfile`; no CONFIG, no latency).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stagegraph.errors import InputError
from stagegraph.cli.app import (
    Exit,
    add_executor_args,
    environment,
    executor_config,
    load_dataset,
    load_pipeline,
    opened_executor,
    progress,
    say,
    work_dir,
)
from stagegraph.evaluation.writer import save_report


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a pipeline on a dataset: quality and latency per stage")
    p.add_argument("config", nargs="?", help="pipeline YAML: a path, or a bundled config such as hybrid-rerank "
                   "(none with --run)")
    p.add_argument("--run", metavar="RUN.trec", help="score this TREC run file of any system instead of running a pipeline")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="a BEIR-layout directory or a registered name such as `sample`")
    where.add_argument("--collection", help="a collection directory (`stagegraph ingest`); give --queries and --qrels")
    p.add_argument("--download", action="store_true", help="fetch a public BEIR dataset by name when it is not found locally (needs network)")
    p.add_argument("--reranker", help="model for every cross-encoder stage (HF id or local path; or $STAGEGRAPH_RERANKER)")
    p.add_argument("--queries", help="with --collection: queries JSONL ({_id or id, text} per line)")
    p.add_argument("--qrels", help="with --collection: judgments naming documents (BEIR TSV or TREC qrels)")
    p.add_argument("--aggregate", choices=["maxp", "firstp", "sum"],
                   help="with --collection: how a document scores from its chunks (default maxp)")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
    p.add_argument("--mode", choices=["online", "batch"], default="online",
                   help="online: one query at a time, timed per stage (default); batch: throughput")
    p.add_argument("--out", help="directory for report.json, report.html, per_query.csv and runs/")
    p.add_argument("--metrics", help="comma-separated, e.g. recall@10,recall@100,ndcg@10,mrr@10,map")
    p.add_argument("--timing", choices=["concurrent", "isolated"], default="concurrent",
                   help="online latencies: as run, branches side by side (default); isolated: also each stage alone")
    p.add_argument("--warmup", type=int, default=3, help="warm-up queries run first and left out of the figures (default 3)")
    p.add_argument("--no-cache", action="store_true", help="run every stage, ignoring cached outputs")
    p.add_argument("--loss-at", type=int, default=10, metavar="K",
                   help="attribute every relevant document missing from the output's top K to the step that lost it "
                        "(loss.tsv; default 10)")
    add_executor_args(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from stagegraph.evaluation.console import print_report
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.measures import parse_metrics
    from stagegraph.pipeline.cache import StageCache

    metrics = parse_metrics(args.metrics) if args.metrics else None  # a bad metric fails before any work
    if args.run:
        return score_run_file(args, metrics)
    if not args.config:
        raise InputError("give a pipeline to evaluate (e.g. `stagegraph eval hybrid --dataset sample`), or a run file "
                         "to score (`--run RUN.trec`)")
    pipeline = load_pipeline(args)
    distributed = executor_config(args, pipeline)
    if distributed.distributed and args.mode != "batch":
        raise InputError(f"--executor {distributed.type} runs batch mode: add --mode batch")
    aggregate = None
    if args.collection:
        dataset, env, close = collection_dataset(args)
        aggregate, cache = args.aggregate or "maxp", None  # a collection changes: its generations are the cache
    else:
        if args.queries or args.qrels or args.aggregate:
            raise InputError("--queries, --qrels and --aggregate go with --collection DIR")
        dataset = load_dataset(args)
        env, close = environment(args, dataset), None
        cache = None if args.no_cache or distributed.distributed else StageCache(work_dir(args) / "cache")
    try:
        with opened_executor(args, distributed) as executor:
            report = evaluate(
                pipeline, dataset, split=args.split if not args.collection else "test", metrics=metrics, mode=args.mode,
                env=env, cache=cache, warmup=args.warmup, timing=args.timing, progress=progress(args), aggregate=aggregate,
                executor=executor or "local", loss_at=args.loss_at,
            )
    finally:
        if close is not None:
            close()
    out = Path(args.out) if args.out else None
    if out is not None:
        save_report(report, out)
    print_report(report, quiet=args.quiet)
    if out is not None:
        say(args, f"Report written to {out}/ (report.json, report.html, per_query.csv, loss.tsv, runs/*.trec)")
    return Exit.OK


def score_run_file(args: argparse.Namespace, metrics) -> int:
    """`eval --run FILE --dataset D`: the run scored as trec_eval reads it, printed and saved like a report."""
    from stagegraph.evaluation.console import print_report
    from stagegraph.evaluation.runfile import report_of_run

    if args.config:
        raise InputError(f"--run scores a run file; a pipeline ({args.config}) has nothing to do with it: drop one")
    if args.collection:
        raise InputError("--run is scored against a dataset's qrels: give --dataset D (a BEIR folder or `sample`)")
    report = report_of_run(args.run, load_dataset(args), split=args.split, metrics=metrics)
    out = Path(args.out) if args.out else None
    if out is not None:
        save_report(report, out)
    print_report(report, quiet=args.quiet)
    if out is not None:
        say(args, f"Report written to {out}/ (report.json, report.html, per_query.csv, runs/*.trec)")
    return Exit.OK


def collection_dataset(args: argparse.Namespace):
    """(dataset of the collection's chunks with the given queries and document qrels, its read-only
    environment, a function that closes the collection)."""
    from stagegraph.collection.sharded import open_collection
    from stagegraph.corpora.jsonl import read_queries
    from stagegraph.corpora.qrels import read_qrels, resolve_qrels
    from stagegraph.corpora.types import Dataset
    from stagegraph.evaluation.aggregate import document_corpus

    if not args.queries or not args.qrels:
        raise InputError("evaluating a collection needs --queries Q.jsonl and --qrels QRELS.tsv (judgments naming documents)")
    collection = open_collection(args.collection, progress=progress(args))
    queries = read_queries(args.queries)
    documents, _ = document_corpus(collection.corpus) if len(collection.corpus) else (collection.corpus, None)
    qrels = resolve_qrels(read_qrels(args.qrels), documents, queries, source=args.qrels, queries_source=args.queries)
    dataset = Dataset(Path(args.collection).name, collection.corpus, queries, {"test": qrels})
    return dataset, collection.environment(), collection.close
