"""`stagegraph search CONFIG "query" --dataset D` (or `--collection DIR`): one query, each stage's
ranks, scores and time."""

from __future__ import annotations

import argparse

from stagegraph.cli.app import Exit, add_config_arg, add_dataset_args, environment, load_dataset, load_pipeline
from stagegraph.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("search", help="run one query and show each stage's results, scores and time")
    add_config_arg(p)
    p.add_argument("query")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="a BEIR-layout directory or a registered name such as `sample`")
    where.add_argument("--collection", help="a collection directory (`stagegraph ingest`)")
    p.add_argument("--download", action="store_true", help="fetch a public BEIR dataset by name when it is not found locally")
    p.add_argument("--reranker", help="model for every cross-encoder stage (HF id or local path; or $STAGEGRAPH_RERANKER)")
    p.add_argument("--top", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="metadata filter, repeatable and and-ed: ext=md (or ext==md), ext!=md, year>=2024 (> < <=), "
                        "'tags in gpu,cuda', 'tags notin a,b', or JSON; a filter that finds nothing says which "
                        "values exist")
    p.add_argument("--warm", action="store_true", help="run the query once untimed first")
    p.add_argument("--per-doc", type=int, default=1, metavar="N",
                   help="show at most N chunks of each document (default 1; 0: every chunk)")
    p.add_argument("--json", action="store_true", help="write the hits as JSON (for programs) instead of a table")
    p.add_argument("--explain", action="store_true", help="with --json: each hit's rank and score at every stage, "
                                                           "and the stage timings")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.query.strip():
        raise InputError("the query is empty; give a question or keywords")
    if args.top < 1:
        raise InputError(f"--top must be a positive number of results, got {args.top}")
    from stagegraph.corpora.filters import parse_cli

    query_filter = parse_cli(args.filter)
    pipeline = load_pipeline(args)
    if args.collection:
        from stagegraph.collection import Stack
        from stagegraph.collection.sharded import open_collection

        with Stack(pipeline, open_collection(args.collection)) as stack:
            if args.warm:
                stack.search(args.query, k=args.top, filter=query_filter)
            show(args, stack.search(args.query, k=wanted(args), filter=query_filter), stack.pipeline)
        return Exit.OK
    dataset = load_dataset(args)
    pipeline.warm_up(environment(args, dataset))
    if args.warm:
        pipeline.search(args.query, k=args.top, filter=query_filter)
    show(args, pipeline.search(args.query, k=wanted(args), filter=query_filter), pipeline)
    return Exit.OK


#: with --per-doc, hits fetched per document shown (chunks of one document often fill the top ranks)
FETCH_PER_DOC = 10


def wanted(args: argparse.Namespace) -> int:
    """Hits to ask for: `--top`, or more when documents are folded to `--per-doc` chunks each."""
    return args.top if args.per_doc == 0 else args.top * FETCH_PER_DOC


def show(args: argparse.Namespace, result, pipeline) -> None:
    from stagegraph.cli.search_view import print_json, print_search

    if args.per_doc < 0:
        raise InputError(f"--per-doc must be 0 (every chunk) or a positive number, got {args.per_doc}")
    result = result.per_document(args.per_doc, top=args.top) if args.per_doc else result
    if args.json:
        print_json(result, explain=args.explain)
    else:
        print_search(result, pipeline)
