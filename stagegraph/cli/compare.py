"""`stagegraph compare REPORT.json... [--baseline REPORT] [--stage NAME] [--table markdown|latex] [--out DIR]`.

Compares every pair of reports (or each with `--baseline`) on every measure they share: means, the
difference with its paired-bootstrap 95% CI, Cohen's d_z, the minimum detectable difference, and raw
and corrected p-values (paired t and randomisation; Holm and Benjamini-Hochberg over the family the
first line names), then the P50/P95 latency of the compared stages and end to end, each marked when
a side was not measured alike. A metric that does not apply to a compared stage (null in
report.json) is skipped with its reason. `--table` prints a Markdown or LaTeX table to paste;
`--out DIR` writes `compare.json`, `compare.csv`, `compare.md` and `compare.tex`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.cli.app import Exit
from stagegraph.evaluation.compare import CompareError, Comparison, compare, label_for, to_csv, to_latex, to_markdown
from stagegraph.evaluation.measures import label_of
from stagegraph.evaluation.report import Report



def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare saved reports: differences with CIs, effect sizes, corrected p-values, latency",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("reports", nargs="+", help="report.json files (or the directories holding them), or TREC run "
                   "files of any system with --dataset")
    p.add_argument("--dataset", help="score the TREC run files given against this dataset (as `eval --run` does)")
    p.add_argument("--split", default="test", help="with --dataset: the qrels split (default test)")
    p.add_argument("--baseline", help="compare each report with this one only (a path or its position, 1-based); "
                   "default: every pair of reports")
    p.add_argument("--stage", help="stage to compare in every report (default: each report's output stage)")
    p.add_argument("--metrics", help="comma-separated metrics (default: those every report has)")
    p.add_argument("--permutations", type=int, default=10_000, help="randomisation-test draws (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomisation test (default 0)")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the 95%% CIs (default 10000)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    p.add_argument("--table", choices=["markdown", "latex"], help="print the comparison as a table to paste instead")
    p.add_argument("--out", help="directory for compare.json, compare.csv, compare.md and compare.tex")
    p.set_defaults(func=handle)


def _baseline_index(paths: list[str], baseline: str | None) -> tuple[list[str], int | None]:
    if baseline is None:
        return paths, None
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


def load_report_or_run(path: str, args: argparse.Namespace) -> Report:
    """A saved report, or a TREC run file scored against `--dataset` (read once for every run file)."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        return Report.load(p)
    if not p.is_file():
        raise CompareError(f"{path}: no report or run file here")
    if not args.dataset:
        raise CompareError(f"{path} is not a report.json: to compare a TREC run file, give the dataset it ran on "
                           f"(--dataset D), e.g. `stagegraph compare {path} OTHER.trec --dataset sample`")
    from stagegraph.cli.app import load_dataset
    from stagegraph.evaluation.runfile import report_of_run

    if getattr(args, "_dataset", None) is None:
        args._dataset = load_dataset(args)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    return report_of_run(p, args._dataset, split=args.split, metrics=metrics)


def handle(args: argparse.Namespace) -> int:
    paths, index = _baseline_index(list(args.reports), args.baseline)
    reports = [load_report_or_run(p, args) for p in paths]
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    result = compare(
        reports, labels=[label_for(p) for p in paths], baseline=index, stage=args.stage, metrics=metrics,
        permutations=args.permutations, seed=args.seed, alpha=args.alpha, bootstrap=args.bootstrap,
    )
    if args.table:
        print(to_markdown(result) if args.table == "markdown" else to_latex(result), end="")
    else:
        print_comparison(result)
    if args.out:
        from stagegraph.atomic import write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("compare.json", result.model_dump_json(indent=2)), ("compare.csv", to_csv(result)),
                           ("compare.md", to_markdown(result)), ("compare.tex", to_latex(result))):
            write_text(out / name, text)
        if not getattr(args, "quiet", False) and not args.table:
            print(f"Comparison written to {out}/ (compare.json, compare.csv, compare.md, compare.tex)")
    return Exit.OK


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    digits = 3 if abs(v) < 1 else 1
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def comparison_tables(result: Comparison) -> list[Table]:
    who = f"vs {result.baseline}" if result.baseline else "every pair"
    title = f"{who} · {result.dataset}/{result.split} · {result.metrics[0].n} queries"
    quality = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in [("pair", "left"), ("measure", "left"), ("ref", "right"), ("sys", "right"),
                          ("Δ [95% CI]", "right"), ("d_z", "right"), ("MDD", "right"), ("", "left")]:
        quality.add_column(name, justify=justify, no_wrap=True, max_width=24 if name == "pair" else None)
    tests = Table(title=f"p-values: raw, and corrected over {result.family.describe()}", box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
    for name, justify in [("pair", "left"), ("measure", "left"), ("t raw", "right"), ("t Holm", "right"),
                          ("t BH", "right"), ("rand raw", "right"), ("rand Holm", "right"), ("rand BH", "right")]:
        tests.add_column(name, justify=justify, no_wrap=True, max_width=24 if name == "pair" else None)
    for c in result.metrics:
        ci = "" if c.ci_low is None else f" [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        pair = f"{c.system} vs {c.baseline}"
        quality.add_row(
            pair, c.measure, f"{c.baseline_mean:.4f}", f"{c.system_mean:.4f}", f"{c.delta:+.4f}{ci}",
            "-" if c.cohen_d is None else f"{c.cohen_d:+.2f}", "-" if c.mdd is None else f"{c.mdd:.3f}",
            "*" if c.significant else "",
        )
        tests.add_row(pair, c.measure, _p(c.p_t), _p(c.p_t_holm), _p(c.p_t_bh), _p(c.p_rand), _p(c.p_rand_holm),
                      _p(c.p_rand_bh))
    latency = Table(title="latency (ms)", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name in ("pair", "stage", "ref P50", "P50", "ΔP50", "ref P95", "P95", "ΔP95"):
        latency.add_column(name, justify="left" if name in ("pair", "stage") else "right", no_wrap=True,
                           max_width=22 if name in ("pair", "stage") else None)
    for d in result.latency:
        latency.add_row(f"{d.system} vs {d.baseline}", d.stage, _ms(d.baseline_p50), _ms(d.system_p50),
                        _ms(d.delta_p50, True), _ms(d.baseline_p95), _ms(d.system_p95), _ms(d.delta_p95, True))
    return [quality, tests, latency]


def print_comparison(result: Comparison, console: Console | None = None) -> None:
    if console is None:
        probe = Console()
        console = Console(width=min(100, probe.width) if probe.is_terminal else 100)
    for table in comparison_tables(result):
        console.print(table)
    console.print(
        f"t, rand: the paired t and randomisation ({result.permutations:,} draws) tests; raw p-values, and "
        f"corrected by Holm and Benjamini-Hochberg over the family ({result.family.describe()}: every pair x "
        f"measure of this call; adding reports adds to it). *: rand Holm < {result.alpha:g}. CI: paired bootstrap "
        f"({result.bootstrap:,} resamples). MDD: the smallest Δ a paired t-test detects with "
        f"{result.power:.0%} power over these queries.", markup=False, highlight=False)
    for d in result.latency:
        if d.note:
            console.print(f"latency, {d.system} vs {d.baseline}, {d.stage}: {d.note}", markup=False, highlight=False)
    for s in result.skipped:
        console.print(f"skipped: {s.system} {label_of(s.metric)}: {s.reason}", markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)
