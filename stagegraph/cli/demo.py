"""`stagegraph demo`: run the default pipeline on the bundled sample and print what it shows."""

from __future__ import annotations

import argparse

from stagegraph.cli.app import Exit


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run BM25 | dense -> RRF pool -> cross-encoder rerank on the bundled sample and report",
        description="Builds the indexes for the bundled sample dataset and, when no pretrained cross-encoder "
        "can be had offline, fine-tunes a small one on its train split (first run only: later runs reuse "
        "both from the work directory), runs the default pipeline on the test split in online mode and "
        "prints quality and latency per stage.",
    )
    p.add_argument("--reranker", help="use this cross-encoder (HF id or local path) instead of the demo's own")
    p.add_argument("--out", default="out/demo", help="where to write the report (default out/demo)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from stagegraph.cli.app import progress, work_dir
    from stagegraph.demo import run_demo
    from stagegraph.evaluation.console import print_report

    result = run_demo(work_dir=work_dir(args), out=args.out, reranker=args.reranker, progress=progress(args))
    print_report(result.report)
    print(result.verdict)
    print(f"HTML report: {result.out}/report.html  (also report.json, per_query.csv, runs/*.trec)")
    print(result.finished)
    return Exit.OK
