"""Metrics: parsing, hand-computed cases, and agreement with pytrec_eval (trec_eval) on random runs."""

from __future__ import annotations

import numpy as np
import pytest

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.evaluation.measures import DEFAULT_METRICS, Metric, MetricError, parse_metrics
from stagegraph.evaluation.metrics_stage import MetricsStage
from stagegraph.evaluation.scoring import score_run

pytrec_eval = pytest.importorskip("pytrec_eval")


def corpus_of(n: int) -> Corpus:
    return Corpus([f"d{i}" for i in range(n)], [""] * n, [f"text {i}" for i in range(n)])


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("recall@100", Metric("recall", 100)),
        ("nDCG@10", Metric("ndcg", 10)),
        ("map", Metric("map")),
        ("map@5", Metric("map", 5)),
        ("P@10", Metric("p", 10)),
        ("hit@3", Metric("hit", 3)),
        ("success@3", Metric("hit", 3)),
        ("mrr@10", Metric("mrr", 10)),
        ("recall(rel=2)@10", Metric("recall", 10, rel=2)),
        ("recall@10(rel=2)", Metric("recall", 10, rel=2)),
        # ir_measures' names
        ("R@100", Metric("recall", 100)),
        ("RR(rel=2)@10", Metric("mrr", 10, rel=2)),
        ("RR", Metric("mrr")),
        ("nDCG", Metric("ndcg")),
        ("AP", Metric("map")),
        ("Success@10", Metric("hit", 10)),
        ("Judged@10", Metric("judged", 10)),
        ("Bpref", Metric("bpref")),
        ("Bpref(rel=2)", Metric("bpref", rel=2)),
        ("ERR@20", Metric("err", 20)),
    ],
)
def test_parse(text, expected):
    assert Metric.parse(text) == expected
    assert Metric.parse(str(expected)) == expected  # str round-trips


def test_str_is_canonical():
    assert str(Metric.parse("NDCG@10")) == "ndcg@10"
    assert str(Metric.parse("P(rel=2)@5")) == "p(rel=2)@5"
    assert str(Metric.parse("map")) == "map"


def test_labels_are_ir_measures_names():
    labels = [m.label for m in parse_metrics("recall@100,ndcg@10,mrr@10,map,hit@5,p(rel=2)@10,judged@10,bpref,err@10,ndcg,mrr")]
    assert labels == ["R@100", "nDCG@10", "RR@10", "AP", "Success@5", "P(rel=2)@10", "Judged@10", "Bpref", "ERR@10", "nDCG", "RR"]
    assert all(Metric.parse(label) == m for label, m in zip(labels, parse_metrics(labels)))


@pytest.mark.parametrize("bad", ["bleu@10", "recall", "err", "bpref@10", "recall@0", "recall@x", "p(rel=0)@10",
                                 "ndcg(rel=2)@10", "Judged(rel=2)@10", "ERR(rel=2)@10"])
def test_parse_errors_name_the_problem(bad):
    with pytest.raises(MetricError) as info:
        Metric.parse(bad)
    message = str(info.value)
    if bad.startswith("bleu") or bad.endswith("@x"):
        assert "R@k" in message and "nDCG@k" in message and "Judged@k" in message  # lists the valid names
    if "rel=2" in bad:
        assert "does not take a relevance threshold" in message and "@10" in message.split("Write ")[1]
    if bad == "bpref@10":
        assert "takes no cut-off; write Bpref" in message


def test_parse_metrics_string_and_dedup():
    assert [str(m) for m in parse_metrics("ndcg@10, recall@100,ndcg@10")] == ["ndcg@10", "recall@100"]
    with pytest.raises(MetricError):
        parse_metrics([])


# -- hand-computed --------------------------------------------------------------------------------


def test_hand_computed_values():
    corpus = corpus_of(10)
    qrels = Qrels({"q": {"d1": 2, "d3": 1, "d9": 1}})
    # ranked: d1 (rel 2), d2 (unjudged), d3 (rel 1), d4
    ranking = Ranking(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1], dtype=np.float32))
    s = score_run({"q": ranking}, None, qrels, corpus, ["recall@2", "recall@4", "p@4", "mrr@10", "map", "hit@1", "ndcg@3"])
    m = {k: float(v[0]) for k, v in s.per_query.items()}
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["p@4"] == pytest.approx(2 / 4)
    assert m["mrr@10"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["hit@1"] == 1.0
    dcg = 2 / np.log2(2) + 1 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg@3"] == pytest.approx(dcg / idcg)


def test_hand_computed_judged_bpref_and_err():
    corpus = corpus_of(10)
    qrels = Qrels({"q": {"d1": 2, "d3": 1, "d9": 1, "d5": 0, "d6": 0}})
    # ranked: d5 (judged 0), d1 (2), d2 (unjudged), d6 (judged 0), d3 (1)
    ranking = Ranking(np.array([5, 1, 2, 6, 3]), np.array([5, 4, 3, 2, 1], dtype=np.float32))
    s = score_run({"q": ranking}, None, qrels, corpus, ["judged@2", "judged@4", "judged@10", "judged", "bpref", "err@3"])
    m = {k: float(v[0]) for k, v in s.per_query.items()}
    assert (m["judged@2"], m["judged@4"], m["judged@10"], m["judged"]) == (1.0, 3 / 4, 4 / 5, 4 / 5)
    # R = 3 relevant, N = 2 judged non-relevant: d1 has 1 non-relevant above, d3 has 2; d9 not retrieved
    assert m["bpref"] == pytest.approx(((1 - 1 / 2) + (1 - 2 / 2) + 0) / 3)
    stop = [0.0, 3 / 16, 0.0]  # grades 0, 2, unjudged
    assert m["err@3"] == pytest.approx(stop[1] * 1.0 / 2)


def test_missing_and_empty_queries_score_zero_and_are_counted():
    corpus = corpus_of(5)
    qrels = Qrels({"a": {"d0": 1}, "b": {"d1": 1}, "c": {"d2": 1}})
    run = {"a": Ranking(np.array([0]), np.array([1.0], np.float32)), "b": Ranking.empty(), "x": Ranking.empty()}
    s = score_run(run, None, qrels, corpus, DEFAULT_METRICS)
    assert s.qids == ["a", "b", "c"]
    assert s.missing == 2 and s.missing_ids == ["b", "c"]
    assert s.per_query["recall@10"].tolist() == [1.0, 0.0, 0.0]
    assert s.means["mrr@10"] == pytest.approx(1 / 3)


def test_aligned_rankings_need_matching_queries():
    corpus = corpus_of(3)
    qrels = Qrels({"a": {"d0": 1}})
    queries = Queries(["a", "b"], ["x", "y"])
    r = Ranking(np.array([0]), np.array([1.0], np.float32))
    assert score_run([r, r], queries, qrels, corpus, ["p@1"]).per_query["p@1"].tolist() == [1.0]
    with pytest.raises(ValueError, match="score_run got 1 rankings for 2 queries"):
        score_run([r], queries, qrels, corpus, ["p@1"])


def test_metrics_stage_passes_through_and_validates():
    stage = MetricsStage(metrics=["ndcg@10", "recall@100"])
    r = Ranking(np.array([2, 1]), np.array([2.0, 1.0], np.float32))
    assert stage.run(Queries(["q"], ["t"]), [[r]])[0] is r
    assert [str(m) for m in stage.metrics] == ["ndcg@10", "recall@100"]
    assert stage.to_config()["metrics"] == ["ndcg@10", "recall@100"]
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        MetricsStage(metrics=["bleu@4"])


# -- against pytrec_eval ------------------------------------------------------------------------

PYTREC = {
    "recall": "recall_{k}",
    "ndcg": "ndcg_cut_{k}",
    "map": "map_cut_{k}",
    "p": "P_{k}",
    "hit": "success_{k}",
}


def random_case(seed: int, n_docs: int = 60, n_queries: int = 40):
    rng = np.random.default_rng(seed)
    corpus = corpus_of(n_docs)
    judgments: dict[str, dict[str, int]] = {}
    run: dict[str, Ranking] = {}
    for qi in range(n_queries):
        qid = f"q{qi}"
        judged = rng.choice(n_docs, size=rng.integers(1, 15), replace=False)
        grades = rng.integers(0, 4, size=len(judged))  # graded, with judged non-relevant (0)
        judgments[qid] = {f"d{r}": int(g) for r, g in zip(judged, grades)}
        if qi % 5 == 1:  # a judged document absent from the corpus: relevant but never retrievable
            judgments[qid][f"ghost{qi}"] = 2
        if qi % 7 == 3:
            continue  # a judged query missing from the run
        if qi % 11 == 5:
            run[qid] = Ranking.empty()
            continue
        size = int(rng.integers(1, 50))
        rows = rng.choice(n_docs, size=size, replace=False)
        scores = rng.integers(0, 5, size=size).astype(np.float32)  # many ties
        run[qid] = Ranking.from_scores(rows, scores)
    # Queries judged only as non-relevant, and an unjudged query in the run.
    judgments["q_nonrel"] = {"d0": 0, "d1": 0}
    run["q_nonrel"] = Ranking.from_scores(np.array([0, 1]), np.array([1.0, 0.5]))
    run["q_unjudged"] = Ranking.from_scores(np.array([3]), np.array([1.0]))
    return corpus, Qrels(judgments), run


def pytrec_run(run: dict[str, Ranking], corpus: Corpus, k: int | None = None) -> dict[str, dict[str, float]]:
    """Our order as rank-based scores, so trec_eval's own tie rule never reorders it."""
    out = {}
    for qid, r in run.items():
        rows = r.doc_rows if k is None else r.doc_rows[:k]
        if len(rows):
            out[qid] = {corpus.ids[row]: float(len(rows) - i) for i, row in enumerate(rows)}
    return out


def expected_values(metric: Metric, corpus, qrels, run) -> dict[str, float]:
    if metric.name == "mrr":
        measure, trec_run = "recip_rank", pytrec_run(run, corpus, metric.k)
    elif metric.k is None and metric.name in ("map", "ndcg", "bpref"):
        measure, trec_run = metric.name, pytrec_run(run, corpus)
    else:
        measure, trec_run = PYTREC[metric.name].format(k=metric.k), pytrec_run(run, corpus)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels.judgments, {measure}, relevance_level=metric.rel)
    result = evaluator.evaluate(trec_run)
    # pytrec_eval leaves out judged queries absent from the run: they score 0.
    return {q: result.get(q, {}).get(measure, 0.0) for q in qrels.query_ids}


ALL = ["recall@1", "recall@10", "recall@100", "ndcg@1", "ndcg@5", "ndcg@10", "ndcg@100", "mrr@1", "mrr@10",
       "map", "map@10", "p@1", "p@10", "p@100", "hit@1", "hit@10", "recall(rel=2)@10", "map(rel=2)",
       "p(rel=3)@5", "mrr(rel=2)@10", "hit(rel=2)@5", "ndcg", "mrr", "mrr(rel=2)", "bpref", "bpref(rel=2)"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_matches_pytrec_eval(seed):
    corpus, qrels, run = random_case(seed)
    scores = score_run(run, None, qrels, corpus, ALL)
    assert scores.missing == sum(1 for q in qrels.query_ids if q not in run or len(run[q]) == 0) > 0
    for name in ALL:
        metric = Metric.parse(name)
        want = expected_values(metric, corpus, qrels, run)
        got = dict(zip(scores.qids, scores.per_query[str(metric)]))
        for qid in qrels.query_ids:
            assert got[qid] == pytest.approx(want[qid], abs=1e-9), (name, qid)


def test_ties_are_scored_in_our_order_not_trec_evals():
    """Same scores, different rows first: our metric follows the Ranking's order (row ascending)."""
    corpus = corpus_of(4)
    qrels = Qrels({"q": {"d3": 1}})
    r = Ranking.from_scores(np.array([3, 0]), np.array([1.0, 1.0]))
    assert r.doc_rows.tolist() == [0, 3]
    assert score_run({"q": r}, None, qrels, corpus, ["mrr@10"]).per_query["mrr@10"][0] == pytest.approx(0.5)
