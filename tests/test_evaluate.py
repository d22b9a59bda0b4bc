"""evaluate(): every stage scored (the funnel), latency per stage, cache hits, missing queries."""

from __future__ import annotations

import numpy as np
import pytest

from stagegraph.corpora.types import Dataset, Qrels
from eval_fixtures import EmptyFor, OracleRetriever, tiny_dataset
from stagegraph.pipeline.cache import StageCache
from stagegraph.evaluation.evaluate import DEFAULT, branch_contributions, evaluate
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.ranking import Ranking, StepTrace
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.metrics_stage import MetricsStage
from stagegraph.evaluation.scoring import score_run
from stagegraph.stages.fusion import CandidatePool
from stubs import StubRerank, StubRetriever


@pytest.fixture
def dataset():
    return tiny_dataset()


def test_default_metrics_at_every_stage(dataset):
    qrels = dataset.qrels["test"]
    graph = (OracleRetriever("perfect", qrels=qrels) | StubRetriever("random", k=20)) >> CandidatePool("rrf", k=100, name="pool") >> StubRerank("rerank", k=10)
    report = evaluate(graph, dataset, progress=False)
    assert report.metrics == list(DEFAULT) == ["recall@10", "recall@100", "ndcg@10", "mrr@10", "map", "judged@10"]
    assert list(report.stages) == ["perfect", "random", "pool", "rerank"]
    perfect = report.stages["perfect"].metrics
    assert perfect["ndcg@10"] == pytest.approx(1.0) and perfect["recall@10"] == pytest.approx(1.0)
    assert report.stages["random"].metrics["ndcg@10"] < 0.5
    # The pool (up to 100) holds the union of both branches: every relevant document the oracle found.
    assert report.stages["pool"].metrics["recall@100"] == pytest.approx(1.0)
    assert report.stages["rerank"].metrics["recall@100"] is None  # it keeps 10: recall@100 does not apply
    assert report.output == "rerank" and report.stages["rerank"].queries == len(qrels)
    assert report.queries == len(qrels) and report.missing_queries == 0


def test_online_latency_per_stage(dataset):
    graph = StubRetriever("slow", k=20, sleep_ms=15) >> StubRerank("fast", k=10)
    report = evaluate(graph, dataset, progress=False, warmup=2)
    slow, fast = report.stages["slow"].latency_ms, report.stages["fast"].latency_ms
    n = len(dataset.qrels["test"])
    assert slow.n == fast.n == n  # warm-up queries are run apart and left out
    assert report.warmup_queries == 2
    assert slow.p50 >= 15.0 and fast.p50 < 5.0  # sleep is a lower bound, scheduling noise only adds
    per_query = np.array(report.per_query.latency_ms["slow"])
    assert slow.p95 == pytest.approx(np.percentile(per_query, 95)) and slow.max == pytest.approx(per_query.max())
    assert report.end_to_end.latency_ms.p50 >= slow.p50
    assert len(report.per_query.latency_ms["slow"]) == n
    assert report.stages["slow"].throughput_qps < report.stages["fast"].throughput_qps


def test_batch_mode_reports_throughput_not_latency(dataset):
    report = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, mode="batch", progress=False)
    assert report.mode == "batch"
    for stage in report.stages.values():
        assert stage.latency_ms is None and stage.throughput_qps > 0
    assert report.end_to_end.throughput_qps > 0


def test_cache_hits_are_reported_and_not_timed(dataset, tmp_path):
    cache = StageCache(tmp_path / "cache")
    first = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, cache=cache, progress=False)
    second = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5, flip=True), dataset, cache=cache, progress=False)
    assert not first.stages["r"].cache_hit and second.stages["r"].cache_hit
    assert second.stages["r"].latency_ms is None and second.stages["rr"].latency_ms is not None
    assert second.cache_hits == 1
    assert second.stages["r"].metrics == first.stages["r"].metrics
    third = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, cache=cache, progress=False)
    assert third.cache_hits == 2 and third.end_to_end.latency_ms is None and third.end_to_end.throughput_qps is None
    assert third.stages["rr"].metrics == first.stages["rr"].metrics


def test_missing_queries_score_zero_and_are_counted(dataset):
    qrels = dataset.qrels["test"]
    judged = dict(qrels.judgments)
    judged["no_text"] = {"d1": 1}  # judged, but the dataset has no such query: never run
    ds = Dataset("t", dataset.corpus, dataset.queries, {"test": Qrels(judged)})
    graph = OracleRetriever("o", qrels=qrels) >> EmptyFor("holes", qids=("q0", "q1"))
    report = evaluate(graph, ds, progress=False)
    assert report.stages["o"].missing == 1 and report.stages["holes"].missing == 3
    assert report.missing_queries == 3 and report.queries == len(judged)
    n = len(judged)
    assert report.stages["o"].metrics["ndcg@10"] == pytest.approx((n - 1) / n)
    assert report.stages["holes"].metrics["ndcg@10"] == pytest.approx((n - 3) / n)


def test_metrics_stage_sets_metrics_and_is_not_a_row(dataset):
    graph = StubRetriever("r", k=20) >> MetricsStage(metrics=["p@5", "hit@10"])
    report = evaluate(graph, dataset, metrics=None, progress=False)
    assert report.metrics == ["p@5", "hit@10"] and list(report.stages) == ["r"] and report.output == "r"
    explicit = evaluate(graph, dataset, metrics=["map"], progress=False)
    assert explicit.metrics == ["map"]


def test_figures_match_score_run_of_the_stage_output(dataset):

    queries, qrels = dataset.split("test")
    graph = StubRetriever("r", k=50, seed=3)
    report = evaluate(graph, dataset, progress=False, metrics=["ndcg@10", "recall@50"])
    rankings = Pipeline(graph).execute(queries, env=Environment(dataset.corpus, progress=False), mode="batch").stages["r"].rankings
    expected = score_run(rankings, queries, qrels, dataset.corpus, ["ndcg@10", "recall@50"])
    assert report.stages["r"].metrics == pytest.approx(expected.means)
    assert report.per_query.metrics["r"]["ndcg@10"] == pytest.approx(expected.per_query["ndcg@10"].tolist())


def test_branch_contributions_hand_case():
    from stagegraph.corpora.types import Queries
    from stubs import tiny_corpus

    corpus = tiny_corpus(10)
    nan = np.nan
    ranks = {"a": np.array([1, nan, 2, 3], np.float32), "b": np.array([nan, 1, 2, nan], np.float32)}
    ranking = Ranking(
        np.array([0, 1, 2, 3]), np.array([4, 3, 2, 1], np.float32), {n: StepTrace(r, r) for n, r in ranks.items()}
    )
    qrels = Qrels({"q": {"d1": 1, "d3": 2, "d2": 1}})
    out = branch_contributions(("a", "b"), [ranking], Queries(["q"], ["t"]), qrels, corpus)
    assert out["a"].found == 3 and out["a"].unique == 2 and out["a"].unique_relevant == 1  # d0, d3; d3 relevant
    assert out["b"].found == 2 and out["b"].unique == 1 and out["b"].unique_relevant == 1  # d1
    assert branch_contributions(("a",), [ranking], Queries(["q"], ["t"]), qrels, corpus) == {}


def test_pool_branch_contributions_in_report(dataset):
    graph = (StubRetriever("a", k=10, seed=1) | StubRetriever("b", k=10, seed=2)) >> CandidatePool("rrf", k=100, name="pool")
    report = evaluate(graph, dataset, progress=False)
    branches = report.stages["pool"].branches
    assert set(branches) == {"a", "b"}
    assert branches["a"].found == 10 and 0 < branches["a"].unique <= 10
    assert not report.stages["a"].branches


def test_environment_for_another_corpus_is_refused(dataset):
    other = tiny_dataset(n_docs=30)
    with pytest.raises(ValueError, match="corpus"):
        evaluate(StubRetriever("r"), dataset, env=Environment(other.corpus), progress=False)


def test_yaml_metrics_stage_sets_the_metrics(dataset):
    from stagegraph.pipeline.compose import Pipeline
    from stubs import register_stubs

    register_stubs()
    graph = Pipeline.from_config(
        {"pipeline": [{"type": "stub_retriever", "name": "r", "k": 20}, {"type": "metrics", "metrics": ["ndcg@10", "P@5"]}]}
    )
    report = evaluate(graph, dataset, metrics=None, progress=False)
    assert report.metrics == ["ndcg@10", "p@5"] and list(report.stages) == ["r"]
    assert graph.to_config()["pipeline"][-1] == {"type": "metrics", "metrics": ["ndcg@10", "p@5"]}
