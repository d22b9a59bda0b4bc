"""`stagegraph compare REPORT.json... [--baseline REPORT] [--stage NAME] [--out DIR]`.

Prints, per system and metric, the baseline and system means, the delta, the paired t-test and
randomisation-test p-values after Holm's correction, Cohen's d and a significance mark, then the
P50/P95 latency deltas. A metric that does not apply to a compared stage (null in report.json) is
skipped with its reason. `--out DIR` writes `compare.json` and `compare.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.cli.app import Exit
from stagegraph.evaluation.compare import CompareError, Comparison, compare, label_for, to_csv
from stagegraph.evaluation.report import Report



def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare saved reports: metric deltas with paired tests (Holm-corrected) and latency deltas",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("reports", nargs="+", help="report.json files (or the directories holding them)")
    p.add_argument("--baseline", help="the baseline report (a path or its position, 1-based; default the first)")
    p.add_argument("--stage", help="stage to compare in every report (default: each report's output stage)")
    p.add_argument("--metrics", help="comma-separated metrics (default: those every report has)")
    p.add_argument("--permutations", type=int, default=10_000, help="randomisation-test draws (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomisation test (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    p.add_argument("--out", help="directory for compare.json and compare.csv")
    p.set_defaults(func=handle)


def _baseline_index(paths: list[str], baseline: str | None) -> tuple[list[str], int]:
    if baseline is None:
        return paths, 0
    if baseline.isdigit() and not Path(baseline).exists():
        index = int(baseline) - 1
        if not 0 <= index < len(paths):
            raise CompareError(f"--baseline {baseline}: give a position between 1 and {len(paths)}")
        return paths, index
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p == Path(baseline).resolve() or p / "report.json" == Path(baseline).resolve():
            return paths, i
    return [baseline, *paths], 0  # a baseline not listed among the reports is added first


def handle(args: argparse.Namespace) -> int:
    paths, index = _baseline_index(list(args.reports), args.baseline)
    reports = [Report.load(p) for p in paths]
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    result = compare(
        reports, labels=[label_for(p) for p in paths], baseline=index, stage=args.stage, metrics=metrics,
        permutations=args.permutations, seed=args.seed, alpha=args.alpha,
    )
    print_comparison(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
        (out / "compare.csv").write_text(to_csv(result), encoding="utf-8")
        if not getattr(args, "quiet", False):
            print(f"Comparison written to {out}/ (compare.json, compare.csv)")
    return Exit.OK


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    digits = 3 if abs(v) < 1 else 1
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def comparison_tables(result: Comparison) -> list[Table]:
    title = (
        f"vs {result.baseline} · {result.dataset}/{result.split} · paired t and randomisation "
        f"({result.permutations:,} draws), Holm-corrected over {len(result.metrics)} comparisons"
    )
    quality = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in [("system", "left"), ("metric", "left"), ("base", "right"), ("value", "right"),
                          ("Δ", "right"), ("p t", "right"), ("p rand", "right"), ("d", "right"), ("", "left")]:
        quality.add_column(name, justify=justify, no_wrap=True, max_width=20 if name == "system" else None)
    for c in result.metrics:
        mark = f"* (α={result.alpha:g})" if c.significant else ""
        quality.add_row(
            c.system, c.metric, f"{c.baseline_mean:.4f}", f"{c.system_mean:.4f}", f"{c.delta:+.4f}",
            _p(c.p_t_holm), _p(c.p_rand_holm), "-" if c.cohen_d is None else f"{c.cohen_d:+.2f}", mark,
        )
    latency = Table(title="latency (ms)", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name in ("system", "stage", "base P50", "P50", "ΔP50", "base P95", "P95", "ΔP95"):
        latency.add_column(name, justify="left" if name in ("system", "stage") else "right", no_wrap=True,
                           max_width=20 if name in ("system", "stage") else None)
    for d in result.latency:
        latency.add_row(d.system, d.stage, _ms(d.baseline_p50), _ms(d.system_p50), _ms(d.delta_p50, True),
                        _ms(d.baseline_p95), _ms(d.system_p95), _ms(d.delta_p95, True))
    return [quality, latency]


def print_comparison(result: Comparison, console: Console | None = None) -> None:
    if console is None:
        probe = Console()
        console = Console(width=min(100, probe.width) if probe.is_terminal else 100)
    for table in comparison_tables(result):
        console.print(table)
    for s in result.skipped:
        console.print(f"skipped: {s.system} {s.metric}: {s.reason}", markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)
