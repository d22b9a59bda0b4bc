"""`stagegraph tune-rerank CONFIG --dataset D --split train --budget-ms 200 --out DIR`.

Measures every reranker configuration the pipeline's pool and the given cross-encoders allow
(fixed depths, numeric backends, models, cascades, per-query depth; see
`stagegraph.evaluation.tune_rerank`), prints the Pareto front and the recommendation for the P95
budget, and writes `DIR/tune.json`, `tune.csv`, `frontier.svg`, `tune.html` and the recommended
pipeline as `DIR/recommended.yaml`. Stopped by `--time-limit` or interrupted, a rerun resumes from
its cache. Tune on training (or dev) queries, never on the test split you report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.cli.app import Exit, add_config_arg, add_dataset_args, environment, load_dataset, load_pipeline, progress, say
from stagegraph.errors import InputError


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{text!r} is not a comma-separated list of integers, e.g. 10,20,30,50,100") from None
    if not values or min(values) < 1:
        raise InputError(f"{text!r}: give positive integers, e.g. 10,20,30,50,100")
    return values


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "tune-rerank",
        help="find the best reranker configuration under a P95 latency budget (depths, backends, models, cascades)",
        description=__doc__.splitlines()[0],
    )
    add_config_arg(p, help="pipeline YAML with a candidate pool and at least one cross_encoder stage")
    add_dataset_args(p)
    p.add_argument("--split", default="train", help="queries to tune on: train or a dev split, not test (default train)")
    p.add_argument("--budget-ms", type=float, default=200.0, help="P95 rerank time per query to fit (default 200)")
    p.add_argument("--models", help="more cross-encoders to try, comma-separated (paths or HF ids)")
    p.add_argument("--backends", help="backends to try (default: all this CPU supports): torch,torch-bf16,onnx,onnx-int8")
    p.add_argument("--depths", default="10,20,30,50,100", help="fixed depths (default 10,20,30,50,100)")
    p.add_argument("--block", type=int, default=10, help="candidates per timed call and per adaptive step (default 10)")
    p.add_argument("--heldout", action="store_true",
                   help="tune only on the training queries that train-reranker held out from the models (their dev queries)")
    p.add_argument("--max-queries", type=int, help="tune on the first N judged queries")
    p.add_argument("--time-limit", type=float, help="stop measuring after this many seconds (rerun to resume)")
    p.add_argument("--calibration-queries", type=int, default=20, help="queries that decide which backends go on (default 20)")
    p.add_argument("--all-backends", action="store_true", help="carry every backend through the run (no pruning)")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="re-run the recommended and the naive configuration as real pipelines on N queries")
    p.add_argument("--out", default="out/tune-rerank", help="directory for the report and recommended.yaml")
    p.set_defaults(func=handle)


def heldout_ids(models: list[str]) -> list[str]:
    """The training queries every model's train-reranker run held out (its dev queries)."""
    from stagegraph.stages.rerank.model import read_stagegraph_metadata

    common: list[str] | None = None
    for model in models:
        ids = read_stagegraph_metadata(model).get("dev_query_ids") or []
        if not ids:
            raise InputError(f"--heldout: {model!r} records no held-out queries (train it with train-reranker); drop --heldout")
        common = list(ids) if common is None else [q for q in common if q in set(ids)]
    if not common:
        raise InputError("--heldout: the models were held out on different queries, none in common; drop --heldout")
    return common


def handle(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stagegraph.evaluation.tune_rerank import reranker_steps, tune_rerank
    from stagegraph.evaluation.tune_result import TuneSettings

    if args.split == "test":
        say(args, "warning: tuning on the test split makes its figures optimistic; tune on train/dev and evaluate test once")
    try:
        settings = TuneSettings(
            budget_ms=args.budget_ms, depths=_ints(args.depths), block=args.block, models=_names(args.models),
            backends=_names(args.backends) or None, max_queries=args.max_queries, time_limit_s=args.time_limit,
            calibration_queries=args.calibration_queries, prune=not args.all_backends,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid tune-rerank settings: {problems}") from None
    graph = load_pipeline(args)
    dataset = load_dataset(args)
    env = environment(args, dataset)
    query_ids = None
    if args.heldout:
        models = list(dict.fromkeys([s.stage.config.model for s in reranker_steps(graph)] + list(settings.models)))
        query_ids = heldout_ids(models)
    result = tune_rerank(
        graph, dataset, split=args.split, settings=settings, env=env, query_ids=query_ids, out=args.out,
        verify=args.verify, progress=progress(args), say=lambda line: say(args, line),
    )
    if progress(args):
        print_front(result)
        say(args, f"report: {Path(args.out)}/tune.html (frontier.svg, tune.csv, tune.json); "
                  f"recommended pipeline: {Path(args.out)}/recommended.yaml")
    return Exit.OK


def print_front(result, console: Console | None = None) -> None:
    console = console or Console(width=120)
    table = Table(title=f"Pareto front · {result.dataset}/{result.split} · {result.queries} queries · online",
                  box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in (("configuration", "left"), ("nDCG@10", "right"), ("mean ms", "right"), ("P95 ms", "right"), ("", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "configuration")
    for p in sorted((p for p in result.points if p.pareto), key=lambda p: p.p95_ms):
        tags = [t for t, on in (("recommended", p.label == result.recommended), ("90% gain", p.label == result.ninety)) if on]
        table.add_row(p.label, f"{p.ndcg:.4f}", f"{p.mean_ms:.1f}", f"{p.p95_ms:.1f}", ", ".join(tags))
    console.print(table)
