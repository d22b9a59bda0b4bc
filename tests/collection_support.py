"""Helpers shared by the collection tests: the queries they ask, and every stage's rankings of them."""

from __future__ import annotations

from pathlib import Path

import stagegraph as sg

QUERIES = ["protein cancer cell", "heat flow wing pressure", "dense vector rank fusion", "query document index"]


def rankings(root: Path, config: dict, filter: dict | None = None) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Every stage's ranking of every query (each with metadata `filter`, when given): stage -> query ->
    [(chunk id, score)]."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    queries = sg.Queries([f"q{i}" for i in range(len(QUERIES))], list(QUERIES), [filter] * len(QUERIES))
    with sg.open(config, collection=root) as stack:
        result = stack.runner.execute(queries, mode="batch")
        corpus = stack.collection.corpus
        for name, run in result.stages.items():
            out[name] = {q: [(corpus.ids[int(r)], float(s)) for r, s in zip(rk.doc_rows, rk.scores)]
                         for q, rk in zip(QUERIES, run.rankings)}
    return out
