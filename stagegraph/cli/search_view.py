"""What `stagegraph search` prints: the final results, each with its score and rank at every stage.

A document's row in the table shows where every stage put it (`#rank score`), so a reader sees why it
is in the pool (which branch found it) and what the reranker did with it; the header shows each
stage's time for this query.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from stagegraph.corpora.types import Corpus
from stagegraph.pipeline.executor import RunResult
from stagegraph.pipeline.graph import Graph


def stage_positions(result: RunResult, graph: Graph) -> dict[str, dict[int, tuple[int, float]]]:
    """For every stage: row -> (1-based rank, score) in that stage's output for the first query."""
    positions = {}
    for step in graph.steps:
        ranking = result.stages[step.name].rankings[0]
        positions[step.name] = {
            int(row): (rank + 1, float(score))
            for rank, (row, score) in enumerate(zip(ranking.doc_rows, ranking.scores))
        }
    return positions


def print_search(result: RunResult, graph: Graph, corpus: Corpus, top: int = 10, console: Console | None = None) -> None:
    console = console or Console(width=120)
    times = []
    for step in graph.steps:
        stage = result.stages[step.name]
        ms = "cached" if stage.cache_hit else f"{stage.latencies_ns[0] / 1e6:.1f} ms"
        times.append(f"{step.name} {ms}")
    total = result.end_to_end_ns
    console.print(f"[bold]{result.queries.texts[0]}[/bold]")
    console.print("time: " + " · ".join(times) + (f" · end to end {total[0] / 1e6:.1f} ms" if total is not None else ""))
    final = result.final[0]
    if len(final) == 0:
        console.print("no results (is the query all stopwords?)")
        return
    positions = stage_positions(result, graph)
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("doc")
    table.add_column("title / text", max_width=48, overflow="ellipsis", no_wrap=True)
    for step in graph.steps:
        table.add_column(step.name, justify="right")
    for rank, row in enumerate(final.doc_rows[:top].tolist(), start=1):
        cells = [str(rank), corpus.ids[row], corpus.doc_text(row)]
        for step in graph.steps:
            pos = positions[step.name].get(row)
            cells.append("-" if pos is None else f"#{pos[0]} {pos[1]:.3g}")
        table.add_row(*cells)
    console.print(table)
    branch_features = sorted(n for n in final.features if not n.endswith(".rank"))
    if branch_features:
        found = {n: int(np.isfinite(final.features[n][:top]).sum()) for n in branch_features}
        console.print("found by: " + ", ".join(f"{n} {c}/{min(top, len(final))}" for n, c in found.items()))
