"""The `stagegraph` command line: eval, index, search and demo, plus subcommands other modules add.

Exit codes scripts can rely on: 0 success; 1 a check failed (a pinned expectation, a reranker that
does not beat its first stage); 2 bad input (config, dataset, arguments); 3 a stage failed at run
time (a model or index that cannot be loaded). Errors print one clear message, not a traceback
(`--debug` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_STAGE_FAILED = 0, 1, 2, 3

#: Modules that add subcommands through `register(subparsers)`.
PLUGIN_COMMANDS = (
    "stagegraph.cli.compare",
    "stagegraph.cli.sweep",
    "stagegraph.cli.expectations",
    "stagegraph.cli.train",
    "stagegraph.cli.demo",
)

DEFAULT_WORK_DIR = ".stagegraph"


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work_dir or os.environ.get("STAGEGRAPH_HOME") or DEFAULT_WORK_DIR)


def reranker_override(args: argparse.Namespace) -> dict:
    """`--reranker MODEL` (or $STAGEGRAPH_RERANKER) replaces the model of every cross-encoder stage."""
    model = getattr(args, "reranker", None) or os.environ.get("STAGEGRAPH_RERANKER")
    return {"cross_encoder": {"model": model}} if model else {}


def load_graph_for(args: argparse.Namespace, config_path: str):
    from stagegraph.pipeline.config import apply_overrides, graph_from_config, load_config

    config = load_config(config_path)
    overrides = reranker_override(args)
    if overrides and _has_type(config, "cross_encoder"):
        config = apply_overrides(config, overrides)
    return graph_from_config(config, source=config_path)


def _has_type(entry, type_name: str) -> bool:
    if isinstance(entry, dict):
        return entry.get("type") == type_name or any(_has_type(v, type_name) for v in entry.values())
    if isinstance(entry, list):
        return any(_has_type(v, type_name) for v in entry)
    return False


def _environment(args: argparse.Namespace, dataset):
    from stagegraph.stages.base import Environment

    return Environment(corpus=dataset.corpus, work_dir=work_dir(args), progress=not args.quiet)


def _load_dataset(args: argparse.Namespace):
    from stagegraph.corpora.registry import load_dataset

    return load_dataset(args.dataset, progress=not args.quiet, download=getattr(args, "download", False))


# -- commands -------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from stagegraph.pipeline.cache import StageCache
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.evaluation.console import print_report

    graph = load_graph_for(args, args.config)
    dataset = _load_dataset(args)
    env = _environment(args, dataset)
    cache = None if args.no_cache else StageCache(work_dir(args) / "cache")
    metrics = args.metrics.split(",") if args.metrics else None
    report = evaluate(
        graph,
        dataset,
        split=args.split,
        metrics=metrics,
        mode=args.mode,
        env=env,
        cache=cache,
        warmup=args.warmup,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else None
    if out is not None:
        report.save(out)
    print_report(report, quiet=args.quiet)
    if out is not None and not args.quiet:
        print(f"Report written to {out}/ (report.json, report.html, per_query.csv, runs/*.trec)")
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    import time

    graph = load_graph_for(args, args.config)
    dataset = _load_dataset(args)
    env = _environment(args, dataset)
    for step in graph.steps:
        t0 = time.perf_counter()
        step.stage.warm_up(env)
        if not args.quiet:
            print(f"{step.name}: ready in {time.perf_counter() - t0:.1f} s")
    if not args.quiet:
        print(f"Artefacts are under {env.work_dir}/; `stagegraph eval` and `search` reuse them.")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from stagegraph.corpora.types import Queries
    from stagegraph.pipeline.executor import run
    from stagegraph.cli.search_view import print_search

    if not args.query.strip():
        print("error: the query is empty; give a question or keywords", file=sys.stderr)
        return EXIT_BAD_INPUT
    graph = load_graph_for(args, args.config)
    dataset = _load_dataset(args)
    env = _environment(args, dataset)
    result = run(graph, Queries.single(args.query), env, mode="online", warmup=1 if args.warm else 0)
    print_search(result, graph, dataset.corpus, top=args.top)
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagegraph",
        description="Composable retrieval pipelines with per-stage quality and latency reports.",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--work-dir", help=f"where indexes, models and the cache live (default {DEFAULT_WORK_DIR}, or $STAGEGRAPH_HOME)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate a pipeline on a dataset: quality and latency per stage")
    p.add_argument("config", help="pipeline YAML (see configs/)")
    _dataset_args(p)
    p.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
    p.add_argument("--mode", choices=["online", "batch"], default="online", help="online: one query at a time, timed per stage (default); batch: throughput")
    p.add_argument("--out", help="directory for report.json, report.html, per_query.csv and runs/")
    p.add_argument("--metrics", help="comma-separated, e.g. recall@10,recall@100,ndcg@10,mrr@10,map")
    p.add_argument("--warmup", type=int, default=3, help="warm-up queries run first and left out of the figures (default 3)")
    p.add_argument("--no-cache", action="store_true", help="run every stage, ignoring cached outputs")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="build (or check) every index and model a pipeline needs")
    p.add_argument("config")
    _dataset_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="run one query and show each stage's results, scores and time")
    p.add_argument("config")
    p.add_argument("query")
    _dataset_args(p)
    p.add_argument("--top", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--warm", action="store_true", help="run the query once untimed first")
    p.set_defaults(func=cmd_search)

    for module in PLUGIN_COMMANDS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="a BEIR-layout directory or a registered name such as `sample`")
    p.add_argument("--download", action="store_true", help="fetch a public BEIR dataset by name when it is not found locally (needs network)")
    p.add_argument("--reranker", help="model for every cross-encoder stage (HF id or local path; or $STAGEGRAPH_RERANKER)")


GLOBAL_FLAGS = {"--quiet", "-q", "--debug"}


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Accept the global flags after the subcommand too (`stagegraph demo --quiet`)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg == "--work-dir" and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 1
        elif arg.startswith("--work-dir="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    from stagegraph.corpora.types import DataError
    from stagegraph.indexes.manifest import IndexLoadError
    from stagegraph.pipeline.config import ConfigError
    from stagegraph.stages.base import StageError

    parser = build_parser()
    args = parser.parse_args(hoist_global_flags(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StageError, IndexLoadError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
