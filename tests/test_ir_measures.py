"""Our measures against ir_measures (`calc_aggregate` and per query), the library IR researchers use.

* On random runs: Judged@k against ir_measures' own `judged` provider, ERR@k against `gdeval` (the
  TREC Web track's Perl script ir_measures ships, which prints 5 decimals: hence 5e-6 there).
* On the five shared datasets: a BM25 run of each test split, every measure by its ir_measures name,
  aggregates equal to `ir_measures.calc_aggregate` (pytrec_eval provider) within 1e-9.

The run given to ir_measures carries rank-based scores (strictly decreasing in our order), so no
tool's own tie rule reorders it: the same rule our run files follow.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import shared_dataset

from stagegraph.corpora.types import Corpus, Qrels
from stagegraph.evaluation.measures import Metric, parse_metrics
from stagegraph.evaluation.scoring import score_run
from stagegraph.pipeline.ranking import Ranking

ir_measures = pytest.importorskip("ir_measures")


def as_run(run: dict[str, Ranking], corpus: Corpus) -> dict[str, dict[str, float]]:
    return {q: {corpus.ids[row]: float(len(r) - i) for i, row in enumerate(r.doc_rows)} for q, r in run.items() if len(r)}


def random_case(seed: int, n_docs: int = 80, n_queries: int = 30):
    rng = np.random.default_rng(seed)
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [""] * n_docs, [""] * n_docs)
    judgments, run = {}, {}
    for qi in range(n_queries):
        qid = str(100 + qi)  # gdeval reads numeric topic ids only
        judged = rng.choice(n_docs, size=int(rng.integers(1, 25)), replace=False)
        judgments[qid] = {f"d{r}": int(g) for r, g in zip(judged, rng.integers(0, 5, size=len(judged)))}
        size = int(rng.integers(1, 60))
        rows = rng.choice(n_docs, size=size, replace=False)
        run[qid] = Ranking.from_scores(rows, rng.integers(0, 6, size=size).astype(np.float32))
    return corpus, Qrels(judgments), run


@pytest.mark.parametrize("seed", [0, 1])
def test_judged_at_k_equals_ir_measures_judged_provider(seed):
    corpus, qrels, run = random_case(seed)
    names = ["Judged@1", "Judged@5", "Judged@10", "Judged@100", "Judged"]
    ours = score_run(run, None, qrels, corpus, names)
    theirs = {(m.query_id, str(m.measure)): m.value
              for m in ir_measures.iter_calc([ir_measures.parse_measure(n) for n in names], qrels.judgments, as_run(run, corpus))}
    for name in names:
        metric = Metric.parse(name)
        for qid, value in zip(ours.qids, ours.per_query[str(metric)]):
            assert value == pytest.approx(theirs[(qid, name)], abs=1e-12), (name, qid)


@pytest.mark.skipif(shutil.which("perl") is None, reason="gdeval needs perl")
@pytest.mark.parametrize("seed", [0, 1])
def test_err_equals_gdeval(seed):
    corpus, qrels, run = random_case(seed)
    names = ["ERR@5", "ERR@20"]
    ours = score_run(run, None, qrels, corpus, names)
    measures = [ir_measures.parse_measure(n) for n in names]
    theirs = {(m.query_id, str(m.measure)): m.value
              for m in ir_measures.gdeval.iter_calc(measures, qrels.judgments, as_run(run, corpus))}
    assert len(theirs) == 2 * len(ours.qids)
    for name in names:
        for qid, value in zip(ours.qids, ours.per_query[str(Metric.parse(name))]):
            assert value == pytest.approx(theirs[(qid, name)], abs=5e-6 + 1e-12), (name, qid)  # %.5f rounds by at most 5e-6


SHARED_MEASURES = ["nDCG@10", "nDCG", "R@100", "R@1000", "RR@10", "RR", "RR(rel=2)@10", "AP", "AP@100", "P@10",
                   "Success@10", "Bpref", "Judged@10"]


@pytest.mark.parametrize("name", ["scifact", "cranfield", "med", "cacm", "npl"])
def test_aggregates_equal_ir_measures_on_the_shared_datasets(name):
    import stagegraph as sg

    dataset = sg.load_dataset(shared_dataset(name), progress=False)
    queries, qrels = dataset.split("test")
    with sg.Pipeline.from_yaml("bm25").bind(dataset) as runner:
        rankings = runner.run(queries)
    run = dict(zip(queries.ids, rankings))
    ours = score_run(run, None, qrels, dataset.corpus, SHARED_MEASURES)
    assert ours.missing == 0
    measures = [ir_measures.parse_measure(m) for m in SHARED_MEASURES]
    theirs = ir_measures.calc_aggregate(measures, qrels.judgments, as_run(run, dataset.corpus))
    for metric, measure in zip(parse_metrics(SHARED_MEASURES), measures):
        assert ours.means[str(metric)] == pytest.approx(theirs[measure], abs=1e-9), (name, metric.label)
        assert metric.label == str(measure)  # reports print the ir_measures name


@pytest.mark.parametrize("name", ["scifact", "cranfield", "med", "cacm", "npl"])
def test_the_run_files_reproduce_the_report_in_trec_eval_and_ir_measures(name, tmp_path):
    """Every stage's runs/<stage>.trec, scored by pytrec_eval (trec_eval) and ir_measures, gives the
    report's figures: the RRF pool of two BM25 variants included, whose scores tie often."""
    import pytrec_eval

    import stagegraph as sg
    from stagegraph.corpora.trec import read_run
    from stagegraph.evaluation.writer import save_report

    dataset = sg.load_dataset(shared_dataset(name), progress=False)
    pipe = ((sg.BM25Retriever(k=100, name="lucene") | sg.BM25Retriever(k=100, k1=1.2, b=0.75, name="classic"))
            >> sg.CandidatePool("rrf", k=100, name="pool"))
    measures = ["nDCG@10", "RR@10", "R@100", "AP", "P@10", "Judged@10"]
    report = sg.evaluate(pipe, dataset, split="test", mode="batch", metrics=measures, progress=False)
    save_report(report, tmp_path)
    qrels = dataset.split("test")[1].judgments
    trec_names = {"nDCG@10": "ndcg_cut_10", "RR@10": None, "R@100": "recall_100", "AP": "map", "P@10": "P_10"}
    for stage in ("lucene", "classic", "pool"):
        run = read_run(tmp_path / "runs" / f"{stage}.trec")
        theirs = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in measures], qrels, run)
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {v for v in trec_names.values() if v}).evaluate(run)
        for metric in parse_metrics(measures):
            ours = report.stages[stage].metrics[str(metric)]
            assert ours == pytest.approx(theirs[ir_measures.parse_measure(metric.label)], abs=1e-9), (name, stage, metric.label)
            trec = trec_names.get(metric.label)
            if trec:
                mean = sum(q[trec] for q in per_query.values()) / len(per_query)
                assert ours == pytest.approx(mean, abs=1e-9), (name, stage, metric.label)
    pool = report.runs[1]["pool"]
    assert sum(len(r.scores) - len(np.unique(r.scores)) for r in pool) > 0  # the pool's ranking does tie
