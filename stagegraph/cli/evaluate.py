"""`stagegraph eval CONFIG --dataset D [--out DIR]`: quality and latency of every stage on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from stagegraph.cli.app import Exit, add_config_arg, add_dataset_args, environment, load_dataset, load_pipeline, progress, say, work_dir
from stagegraph.evaluation.writer import save_report


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a pipeline on a dataset: quality and latency per stage")
    add_config_arg(p)
    add_dataset_args(p)
    p.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
    p.add_argument("--mode", choices=["online", "batch"], default="online",
                   help="online: one query at a time, timed per stage (default); batch: throughput")
    p.add_argument("--out", help="directory for report.json, report.html, per_query.csv and runs/")
    p.add_argument("--metrics", help="comma-separated, e.g. recall@10,recall@100,ndcg@10,mrr@10,map")
    p.add_argument("--timing", choices=["concurrent", "isolated"], default="concurrent",
                   help="online latencies: as run, branches side by side (default); isolated: also each stage alone")
    p.add_argument("--warmup", type=int, default=3, help="warm-up queries run first and left out of the figures (default 3)")
    p.add_argument("--no-cache", action="store_true", help="run every stage, ignoring cached outputs")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from stagegraph.evaluation.console import print_report
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.measures import parse_metrics
    from stagegraph.pipeline.cache import StageCache

    metrics = parse_metrics(args.metrics) if args.metrics else None  # a bad metric fails before any work
    pipeline = load_pipeline(args)
    dataset = load_dataset(args)
    cache = None if args.no_cache else StageCache(work_dir(args) / "cache")
    report = evaluate(
        pipeline, dataset, split=args.split, metrics=metrics, mode=args.mode, env=environment(args, dataset),
        cache=cache, warmup=args.warmup, timing=args.timing, progress=progress(args),
    )
    out = Path(args.out) if args.out else None
    if out is not None:
        save_report(report, out)
    print_report(report, quiet=args.quiet)
    if out is not None:
        say(args, f"Report written to {out}/ (report.json, report.html, per_query.csv, runs/*.trec)")
    return Exit.OK
