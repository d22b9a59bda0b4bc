"""Scoring another system's TREC run file with stagegraph's measures: `report_of_run`.

`stagegraph eval --run FILE --dataset D` and `stagegraph compare` over run files read a run as
trec_eval does and give a `Report` with one stage (named after the file), so the same measures,
statistics, console table, HTML page and `compare` apply to any system's output:

* order: each query's documents by score, descending, ties by document id, descending (trec_eval's
  rule; the rank column is ignored, as trec_eval ignores it);
* documents the dataset's corpus does not hold are scored as trec_eval scores them (unjudged unless
  the qrels judge them), not dropped: the run is scored over the corpus ids and the run's own;
* queries of the run that have no judgments are ignored; judged queries missing from the run score
  0 and are counted (as trec_eval -c does);
* no latency: a run file holds none (`mode` is "run file").
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stagegraph.corpora.trec import read_run
from stagegraph.corpora.types import Corpus, Dataset
from stagegraph.evaluation.measures import DEFAULT_METRICS, Metric, parse_metrics
from stagegraph.evaluation.report import PerQuery, Report, StageReport, library_versions, machine_info
from stagegraph.evaluation.scoring import score_run
from stagegraph.pipeline.ranking import Ranking


def run_name(path: str | os.PathLike[str]) -> str:
    """The stage name of a run file: its name without the suffix (`bm25.trec` -> `bm25`)."""
    p = Path(path)
    return p.stem if p.suffix else p.name


def rankings_of_run(run: dict[str, dict[str, float]], corpus: Corpus) -> tuple[dict[str, Ranking], Corpus]:
    """Each query's ranking in trec_eval's order over `corpus` extended by the run's unknown document ids."""
    known = set(corpus.ids)
    extra = sorted({d for docs in run.values() for d in docs if d not in known})
    scoring = Corpus(list(corpus.ids) + extra, [""] * (len(corpus) + len(extra)), [""] * (len(corpus) + len(extra))) \
        if extra else corpus
    rankings = {}
    for qid, docs in run.items():
        ordered = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)  # score desc, id desc
        rows = np.array([scoring.row_of(d) for d, _ in ordered], dtype=np.int64)
        scores = np.array([s for _, s in ordered], dtype=np.float32)
        rankings[qid] = Ranking(rows, scores)
    return rankings, scoring


def report_of_run(
    path: str | os.PathLike[str],
    dataset: Dataset,
    split: str = "test",
    metrics: Iterable[str | Metric] | None = None,
) -> Report:
    """A `Report` of the run file at `path` scored against `dataset`'s `split`."""
    parsed = parse_metrics(metrics if metrics is not None else DEFAULT_METRICS)
    names = [str(m) for m in parsed]
    queries, qrels = dataset.split(split)
    rankings, scoring = rankings_of_run(read_run(path), dataset.corpus)
    scores = score_run(rankings, None, qrels, scoring, parsed)
    depth = max((len(r) for r in rankings.values()), default=0)
    name = run_name(path)
    stage = StageReport(
        type="run file", queries=sum(1 for q in qrels.query_ids if q in rankings), metrics=scores.means,
        missing=scores.missing, limit=depth,
        not_applicable=[str(m) for m in parsed if m.k is not None and m.k > depth],
    )
    report = Report(
        dataset=dataset.name, split=split, mode="run file", config={"run": str(path)}, output=name, metrics=names,
        dataset_fingerprint=dataset.corpus.fingerprint, corpus_docs=len(dataset.corpus), queries=len(qrels),
        missing_queries=scores.missing, stages={name: stage}, versions=library_versions(), machine=machine_info(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        per_query=PerQuery(qids=scores.qids, metrics={name: {m: v.tolist() for m, v in scores.per_query.items()}}),
    )
    ordered = [rankings.get(q, Ranking.empty()) for q in queries.ids]
    report.attach_runs(queries.ids, {name: ordered}, scoring)
    return report
