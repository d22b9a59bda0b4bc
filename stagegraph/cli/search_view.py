"""What `stagegraph search` prints: the hits, each with its rank and score at every stage.

A hit's row shows where every stage put it (`#rank score`), so a reader sees why it is in the pool
(which retrievers found it) and what the reranker did with it; the header shows each stage's time
for this query. An empty result of a filtered search prints the result's `hint` (what the filter
let through); an unfiltered one asks whether the query is all stopwords.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.hits import SearchResult
from stagegraph.pipeline.stage import Arity


def print_search(result: SearchResult, pipeline: Pipeline, console: Console | None = None) -> None:
    console = console or Console(width=120)
    times = " · ".join(f"{name} {ms:.1f} ms" for name, ms in result.timings_ms.items())
    console.print(f"[bold]{result.query}[/bold]", highlight=False)
    console.print(f"time: {times} · end to end {result.total_ms:.1f} ms", highlight=False)
    if not result.hits:
        if result.hint:  # a filter was given: say what it let through (stagegraph.corpora.filters.explain_empty)
            console.print(f"no results: {result.hint}", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print("no results (is the query all stopwords?)")
        return
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("doc")
    table.add_column("title / text", max_width=48, overflow="ellipsis", no_wrap=True)
    for name in pipeline.names:
        table.add_column(name, justify="right")
    for hit in result.hits:
        cells = [str(hit.rank), hit.id, " ".join(f"{hit.title} {hit.text}".split())]
        for name in pipeline.names:
            pos = hit.stages.get(name)
            cells.append("-" if pos is None or pos.rank is None else f"#{pos.rank} {pos.score:.3g}")
        table.add_row(*cells)
    console.print(table)
    retrievers = [s.name for s in pipeline.steps if s.stage.arity == Arity.NONE]
    if len(retrievers) > 1:
        found = {
            name: sum(1 for h in result.hits if (h.stages.get(name) and h.stages[name].rank is not None))
            for name in retrievers
        }
        console.print("found by: " + ", ".join(f"{n} {c}/{len(result.hits)}" for n, c in found.items()), highlight=False)
