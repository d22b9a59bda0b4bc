"""What `stagegraph search` prints: the hits, each with its rank and score at every stage.

A hit's row shows its full id, the chunk's section and page where it has them, a snippet of its
text around the query's words (highlighted on a terminal), and where every stage put it (`#rank
score`; a cross-encoder's column shows the model's own score, `cross_encoder_score`, while the hit's
final `score` may blend it with the upstream score), so a reader sees why it is in the pool and what
the reranker did with it; the header shows each stage's time for this query. `print_json` writes the
same result for programs.
"""

from __future__ import annotations

import json
import re

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.hits import SearchResult
from stagegraph.pipeline.stage import Arity


def print_search(result: SearchResult, pipeline: Pipeline, console: Console | None = None) -> None:
    console = console or Console(width=120)
    times = " · ".join(f"{name} {ms:.1f} ms" for name, ms in result.timings_ms.items())
    console.print(f"[bold]{result.query}[/bold]", highlight=False)
    console.print(f"time: {times} · end to end {result.total_ms:.1f} ms", highlight=False)
    if not result.hits:
        if result.hint:  # a filter was given: say what it let through (stagegraph.corpora.filter_hints.explain_empty)
            console.print(f"no results: {result.hint}", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print("no results (is the query all stopwords?)")
        return
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    longest = max(len(h.id) for h in result.hits)
    table.add_column("doc", overflow="fold", min_width=min(longest, 40))  # an id folds past 40 characters, never cut
    table.add_column("where / snippet", ratio=1)
    rerankers = {s.name for s in pipeline.steps if getattr(s.stage, "type_name", "") == "cross_encoder"}
    for name in pipeline.names:
        table.add_column(name, justify="right")
    words = query_words(result.query)
    for hit in result.hits:
        where = " · ".join(str(x) for x in (hit.metadata.get("section"), _page(hit.metadata)) if x)
        text = Text(f"{where}\n" if where else "", style="dim")
        text.append_text(snippet(" ".join(f"{hit.title} {hit.text}".split()), words))
        cells: list = [str(hit.rank), hit.id, text]
        for name in pipeline.names:
            pos = hit.stages.get(name)
            if pos is None or pos.rank is None:
                cells.append("-")
            elif name in rerankers and hit.cross_encoder_score is not None:
                cells.append(f"#{pos.rank} {hit.cross_encoder_score:.3g}")
            else:
                cells.append(f"#{pos.rank} {pos.score:.3g}")
        table.add_row(*cells)
    console.print(table)
    retrievers = [s.name for s in pipeline.steps if s.stage.arity == Arity.NONE]
    if len(retrievers) > 1:
        found = {
            name: sum(1 for h in result.hits if (h.stages.get(name) and h.stages[name].rank is not None))
            for name in retrievers
        }
        console.print("found by: " + ", ".join(f"{n} {c}/{len(result.hits)}" for n, c in found.items()), highlight=False)


SNIPPET_CHARS = 160
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(query: str) -> list[str]:
    """The query's words worth showing in a snippet (lower-cased, 3 letters or more)."""
    return sorted({w.lower() for w in _WORD.findall(query) if len(w) >= 3}, key=len, reverse=True)


def snippet(text: str, words: list[str], width: int = SNIPPET_CHARS) -> Text:
    """About `width` characters of `text` around the first query word it holds (its start when none),
    every query word highlighted (bold on a terminal; plain text elsewhere)."""
    lower = text.lower()
    hits = [i for i in (lower.find(w) for w in words) if i >= 0]
    start = max(0, min(hits) - width // 4) if hits else 0
    if start:
        start = text.find(" ", start) + 1 or start
    end = min(len(text), start + width)
    if end < len(text):
        end = text.rfind(" ", start, end) if text.rfind(" ", start, end) > start else end
    out = Text(("…" if start else "") + text[start:end] + ("…" if end < len(text) else ""))
    if words:
        out.highlight_regex(re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE), style="bold yellow")
    return out


def _page(metadata: dict) -> str | None:
    page = metadata.get("page")
    return f"p. {page}" if page is not None else None


def print_json(result: SearchResult, *, explain: bool = False) -> None:
    """The result as JSON on stdout: query, generation, hits (id, doc_id, rank, score, cross_encoder_score,
    title, text, metadata), hint; with `explain`, each hit's per-stage ranks and scores and the timings."""
    data = result.model_dump(mode="json")
    if not explain:
        data.pop("timings_ms", None)
        data.pop("total_ms", None)
        data.pop("timing", None)
        for hit in data["hits"]:
            hit.pop("stages", None)
    print(json.dumps(data, indent=2, ensure_ascii=False))
