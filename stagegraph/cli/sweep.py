"""`stagegraph sweep CONFIG --dataset PATH --stage rerank --param depth --values 10,20,50,100 --out DIR`.

Evaluates the pipeline once per value (upstream stages come from the cache after the first run) and
prints a quality-versus-latency table; `--out` also gets `sweep.csv`, `sweep.svg`, `sweep.html`
and one full report per value.

A sweep chooses a setting, so it runs on a split you do not report: `dev` when the dataset has one,
else `train`. It refuses the `test` split unless `--on-test` says so, and then warns: a value chosen
on the split it is reported on gives an optimistic figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.cli.app import Exit, add_config_arg, add_dataset_args, environment, load_dataset, load_pipeline, progress, say, work_dir
from stagegraph.errors import InputError
from stagegraph.evaluation.measures import Metric
from stagegraph.evaluation.sweep import SweepResult, parse_values, sweep


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="evaluate one stage setting over several values: quality vs P95 latency table and plot",
        description=__doc__.splitlines()[0],
    )
    add_config_arg(p)
    add_dataset_args(p)
    p.add_argument("--stage", required=True, help="the stage to vary (its name in the pipeline)")
    p.add_argument("--param", required=True, help="the setting of that stage, e.g. depth")
    p.add_argument("--values", required=True, help="comma-separated values, e.g. 10,20,50,100")
    p.add_argument("--out", help="directory for sweep.csv/svg/html and a report per value")
    p.add_argument("--split", default=None, help="split to tune on (default: dev, else train; test needs --on-test)")
    p.add_argument("--on-test", action="store_true", help="tune on the test split anyway (the figures are then optimistic)")
    p.add_argument("--mode", choices=["online", "batch"], default="online")
    p.add_argument("--metrics", help="comma-separated metrics (default recall@10,recall@100,ndcg@10,mrr@10,map)")
    p.add_argument("--primary", help="metric plotted against latency (default ndcg@10)")
    p.add_argument("--warmup", type=int, default=3)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from stagegraph.pipeline.cache import StageCache

    values = parse_values(args.values)
    primary = str(Metric.parse(args.primary)) if args.primary else None
    pipeline = load_pipeline(args)
    dataset = load_dataset(args)
    split = tuning_split(dataset, args.split, args.on_test)
    env = environment(args, dataset)
    result = sweep(
        pipeline, dataset, args.stage, args.param, values, out=args.out,
        metrics=args.metrics.split(",") if args.metrics else None, split=split, mode=args.mode,
        env=env, cache=StageCache(work_dir(args) / "cache"), warmup=args.warmup, progress=progress(args),
        primary=primary,
    )
    print_sweep(result)
    if split == "test":
        print("Warning: tuned on the test split: a value chosen and reported on one split is optimistic.")
    if args.out:
        say(args, f"Sweep written to {Path(args.out)}/ (sweep.csv, sweep.svg, sweep.html, one report per value)")
    return Exit.OK


def tuning_split(dataset, split: str | None, on_test: bool) -> str:
    """The split a sweep tunes on: the one asked for, else dev, else train; test only with `on_test`."""
    if split is None:
        split = next((s for s in ("dev", "train") if s in dataset.splits), None)
        if split is None:
            raise InputError(
                f"{dataset.name} has no dev or train split (only {', '.join(dataset.splits) or 'none'}); a sweep chooses "
                "a setting, and choosing it on the split you report overfits it. Add judgments as qrels/dev.tsv, "
                "or tune on test anyway: --split test --on-test")
    if split == "test" and not on_test:
        raise InputError("a sweep chooses a setting, and choosing it on the test split you report overfits it: tune on "
                         f"{' or '.join(s for s in ('dev', 'train') if s in dataset.splits) or 'a dev split'} "
                         "(--split), or add --on-test to do it anyway")
    return split


def sweep_table(result: SweepResult) -> Table:
    title = f"{result.stage}.{result.param} · {result.dataset}/{result.split} · quality of {result.output}"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column(result.param, justify="right", no_wrap=True)
    for m in result.metrics:
        table.add_column(Metric.parse(m).label, justify="right", no_wrap=True)
    for name in ("P50 ms", "P95 ms", "path P95"):
        table.add_column(name, justify="right", no_wrap=True)
    best = max((p.metrics[result.primary] for p in result.points if p.metrics[result.primary] is not None), default=None)
    for p in result.points:
        cells = [str(p.value)]
        for m in result.metrics:
            if p.metrics[m] is None:  # the metric reads deeper than the output returns at this value
                cells.append("[dim]n/a[/dim]")
                continue
            v = f"{p.metrics[m]:.4f}"
            cells.append(f"[bold]{v}[/bold]" if m == result.primary and p.metrics[m] == best else v)
        cells += ["-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.1f}"
                  for v in (p.stage_p50_ms, p.stage_p95_ms, p.path_p95_ms)]
        table.add_row(*cells)
    return table


def print_sweep(result: SweepResult, console: Console | None = None) -> None:
    if console is None:
        probe = Console()
        console = Console(width=min(100, probe.width) if probe.is_terminal else 100)
    console.print(sweep_table(result))
    console.print(
        f"P50/P95: {result.stage} alone; path P95: {result.stage} and every stage after it, per query.",
        markup=False, highlight=False,
    )
