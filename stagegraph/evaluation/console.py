"""The console view of a `Report`: one rich table, a row per stage, that fits 100 columns.

Columns: the stage, each metric (ir_measures names: R@100, nDCG@10, RR@10, AP, Judged@10) and the latency
percentiles P50/P95/P99 in milliseconds as run (online mode: parallel branches share the cores) or
the throughput in queries per second (batch mode), so the rerank stage's cost sits right under the
retrievers' and the pool's. A metric that reads deeper than a stage can return (R@100 of a reranker
that keeps 10) shows "n/a": truncation is not loss. A cached stage shows "cached" instead of a
latency: a cache hit is not a latency. With isolated timing a second table gives each stage's
latency alone. Lines below give the end-to-end latency, warm-up queries, missing queries and what
each branch added to a pool, and the machine's CPU count and load at the start and the end of the
run. When other work kept the machine busy (`MachineLoad.busy`) one warning line says so, quiet or
not: those latencies are not comparable with figures measured on a quiet machine.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.table import Table

from stagegraph.evaluation.report import PERCENTILE_MIN, Report
from stagegraph.evaluation.measures import label_of

WIDTH = 100


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def build_tables(report: Report, width: int = WIDTH) -> list[Table]:
    """One table when metrics and latency fit in `width` columns, else a quality and a cost table."""
    both = build_table(report)
    if _width(both) <= width:
        return [both]
    tables, chunk = [], []
    for metric in report.metrics:  # as many metrics per table as fit, then the latency table
        if chunk and _width(build_table(report, metrics=[*chunk, metric], cost=False)) > width:
            tables.append(build_table(report, metrics=chunk, cost=False))
            chunk = []
        chunk.append(metric)
    tables.append(build_table(report, metrics=chunk, cost=False))
    return tables + [build_table(report, metrics=[])]


def _width(table: Table) -> int:
    return Console(width=1000).measure(table).maximum


def build_table(report: Report, metrics: list[str] | None = None, cost: bool = True) -> Table:
    online = report.mode == "online"
    title = f"{report.dataset} · {report.split} · {report.queries} queries · {report.mode}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), title_justify="left")
    table.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=24)
    metrics = report.metrics if metrics is None else metrics
    for metric in metrics:
        table.add_column(label_of(metric), justify="right", no_wrap=True)
    if not cost:
        pass
    elif online:
        flagged = report.thin_percentiles()
        for p in ("P50", "P95", "P99"):
            mark = "†" if flagged and p in flagged else ""
            table.add_column(f"{p} ms{mark}", justify="right", no_wrap=True)
    else:
        table.add_column("q/s", justify="right", no_wrap=True)
    best = {
        m: max((s.metrics.get(m, 0.0) for s in report.stages.values() if m not in s.not_applicable), default=0.0)
        for m in metrics
    }
    for name, stage in report.stages.items():
        cells = [name + (" *" if stage.missing else "")]
        for m in metrics:
            value = stage.metrics.get(m)
            if m in stage.not_applicable:
                cells.append("[dim]n/a[/dim]")
                continue
            text = "-" if value is None else f"{value:.4f}"
            cells.append(f"[bold]{text}[/bold]" if value is not None and value == best[m] and value > 0 else text)
        if not cost:
            pass
        elif stage.cache_hit:
            cells += ["cached"] + ([""] * 2 if online else [])
        elif online:
            lat = stage.latency_ms
            cells += [_ms(lat.p50 if lat else None), _ms(lat.p95 if lat else None), _ms(lat.p99 if lat else None)]
        else:
            cells.append(f"{stage.throughput_qps:,.1f}" if stage.throughput_qps else "-")
        table.add_row(*cells)
    if not cost:
        pass
    elif online and report.end_to_end.latency_ms is not None:
        lat = report.end_to_end.latency_ms
        table.add_row("end to end", *([""] * len(metrics)), _ms(lat.p50), _ms(lat.p95), _ms(lat.p99), style="dim")
    elif not online and report.end_to_end.throughput_qps:
        table.add_row("end to end", *([""] * len(metrics)), f"{report.end_to_end.throughput_qps:,.1f}", style="dim")
    return table


def alone_table(report: Report) -> Table | None:
    """Each stage's latency when it ran alone (timing="isolated"), beside its latency as run."""
    rows = [(n, s) for n, s in report.stages.items() if s.latency_alone_ms is not None]
    if not rows:
        return None
    table = Table(title="latency alone (each stage run by itself, branches one after another) vs as run",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), title_justify="left")
    for name in ("stage", "alone P50", "P95", "P99", "as run P50", "P95 ", "P99 "):
        table.add_column(name, justify="left" if name == "stage" else "right", no_wrap=True)
    for name, stage in rows:
        alone, run = stage.latency_alone_ms, stage.latency_ms
        table.add_row(name, _ms(alone.p50), _ms(alone.p95), _ms(alone.p99),
                      _ms(run.p50 if run else None), _ms(run.p95 if run else None), _ms(run.p99 if run else None))
    return table


def busy_warning(report: Report) -> str | None:
    """One line when the machine was busy with other work during the run (its 1-minute load at the start
    and the end), else None: the latencies are not comparable with figures measured on a quiet machine."""
    load = report.machine_load
    if load is None or not load.busy:
        return None
    start, end = (f"{v:.2f}" if v is not None else "?" for v in (load.load_start, load.load_end))
    # within 100 columns: the line is the report's, like the table above it
    return f"Warning: busy machine (load {start} -> {end}, {load.cpus} CPUs): latencies not comparable with a quiet machine's."


def notes(report: Report) -> list[str]:
    lines = []
    if report.machine_load is not None:
        lines.append(f"Machine: {report.machine_load.describe()}.")
    if report.mode == "online":
        lat = report.end_to_end.latency_ms
        n = report.timed_queries
        lines.append(
            f"Latency: per query as run (parallel branches share the cores), percentiles over {n} queries, "
            f"{report.warmup_queries} warm-up queries run first and left out"
            + (f"; end to end mean {_ms(lat.mean)} ms, max {_ms(lat.max)} ms." if lat else ".")
        )
        flagged = report.thin_percentiles()
        if flagged:
            lines.append(f"† {' and '.join(flagged)} over only {n} queries: "
                         + ", ".join(f"{p} needs {PERCENTILE_MIN[p]}" for p in flagged)
                         + " to be more than the slowest query or two; read it as about the maximum.")
        if report.timing != "isolated" and any(len(s.inputs) > 1 for s in report.stages.values()):
            lines.append("Each branch's time includes sharing the cores with its neighbour; `--timing isolated` "
                         "also times every stage alone.")
    if report.executor != "local" and report.workers:
        split = "; ".join(f"worker {w.worker} ({w.node}, pid {w.pid}): {w.queries} queries in {w.shards} shards, {w.seconds:.2f} s"
                          for w in report.workers)
        lines.append(f"Run on {report.executor} with {len(report.workers)} workers, stage throughput over the busiest "
                     f"worker's time: {split}.")
    if report.aggregate:
        per_doc = ", ".join(f"{n} {s.chunks_per_document:.2f}" for n, s in report.stages.items() if s.chunks_per_document)
        lines.append(f"Chunks scored as documents by {report.aggregate}; chunks per retrieved document: {per_doc}.")
    if any(s.not_applicable for s in report.stages.values()):
        cut = [f"{n} keeps {s.limit}" for n, s in report.stages.items() if s.not_applicable]
        lines.append(f"n/a: the metric reads deeper than the stage returns ({', '.join(cut)}).")
    if report.cache_hits:
        cached = [n for n, s in report.stages.items() if s.cache_hit]
        timed = [n for n, s in report.stages.items() if not s.cache_hit]
        lines.append(f"{', '.join(cached)} read from the cache: not timed, so end to end covers "
                     f"{', '.join(timed) or 'no stage'} only; `--no-cache` times every stage.")
    if report.missing_queries or any(s.missing for s in report.stages.values()):
        worst = max(s.missing for s in report.stages.values())
        lines.append(f"* up to {worst} judged queries got no result from a stage; they score 0 and are counted.")
    for name, stage in report.stages.items():
        if stage.branches:
            parts = [
                f"{b} {c.unique:.1f} docs ({c.unique_relevant:.2f} relevant)" for b, c in stage.branches.items()
            ]
            lines.append(f"{name}: found by one branch only, per query: " + ", ".join(parts) + ".")
    return lines


def loss_lines(report: Report, width: int = WIDTH) -> list[str]:
    """One bar per step: the share of the relevant documents missing from the output's top k lost there."""
    loss = report.loss
    if loss is None or not loss.missing:
        return []
    lines = [f"Misses at R@{loss.at}: {loss.missing} relevant documents are not in {report.output}'s top {loss.at}; "
             "lost at (loss.tsv lists each):"]
    label_w = min(28, max(len(name) for name in loss.by))
    bar_w = max(10, width - label_w - 20)
    for name, share in loss.shares().items():
        filled = share * bar_w
        bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
        lines.append(f"  {name[:label_w]:<{label_w}} {loss.by[name]:>6} {share:>4.0%} {bar}")
    return lines


def render_report(report: Report, width: int = WIDTH, color: bool = False) -> str:
    """The table and notes as text, `width` columns wide at most."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None)
    for table in [*build_tables(report, width), alone_table(report)]:
        if table is not None:
            console.print(table)
    _warn(report, console)
    for line in [*loss_lines(report, width), *notes(report)]:
        console.print(line, highlight=False, markup=False)
    return buf.getvalue()


def _warn(report: Report, console: Console) -> None:
    warning = busy_warning(report)
    if warning is not None:  # one line in a log, however narrow the terminal
        console.print(warning, highlight=False, markup=False, soft_wrap=True, style="bold yellow")


def print_report(report: Report, quiet: bool = False, console: Console | None = None) -> None:
    """Print the table, the busy-machine warning when there is one and, unless `quiet`, the notes below."""
    if console is None:
        probe = Console()
        console = Console(width=min(WIDTH, probe.width) if probe.is_terminal else WIDTH)
    for table in [*build_tables(report, console.width), alone_table(report)]:
        if table is not None:
            console.print(table)
    _warn(report, console)
    if not quiet:
        for line in [*loss_lines(report, console.width), *notes(report)]:
            console.print(line, highlight=False, markup=False)
