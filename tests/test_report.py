"""Report files: the report.json contract, TREC runs, per-query CSV, self-contained HTML, console width."""

from __future__ import annotations

import csv
import json
import re

import pytest

from stagegraph.corpora.trec import read_run
from eval_fixtures import OracleRetriever, tiny_dataset
from stagegraph.errors import InputError
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.console import print_report, render_report
from stagegraph.evaluation.html import render_html
from stagegraph.evaluation.writer import save_report
from stagegraph.stages.fusion import CandidatePool
from stubs import StubRerank, StubRetriever


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture(scope="module")
def report(dataset):
    qrels = dataset.qrels["test"]
    graph = (OracleRetriever("bm25", k=30, noise=0.5, qrels=qrels) | StubRetriever("dense", k=30)) >> CandidatePool("rrf", k=40, name="pool") >> StubRerank("rerank", k=10)
    return evaluate(graph, dataset, progress=False)


@pytest.fixture(scope="module")
def saved(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    save_report(report, out)
    return out


def test_json_contract(saved, dataset):
    data = json.loads((saved / "report.json").read_text())
    for key in ("dataset", "split", "mode", "config", "output", "metrics", "dataset_fingerprint", "versions",
                "machine", "warmup_queries", "cache_hits", "missing_queries", "end_to_end", "stages", "per_query"):
        assert key in data, key
    assert (data["dataset"], data["split"], data["mode"]) == ("tiny", "test", "online")
    assert data["dataset_fingerprint"] == dataset.corpus.fingerprint
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["cpu_model"]
    assert data["versions"]["numpy"] and data["versions"]["python"]
    assert data["config"]["pipeline"][-1]["name"] == "rerank"  # the graph's own config
    for name in ("bm25", "dense", "pool", "rerank"):
        stage = data["stages"][name]
        assert set(stage["metrics"]) == {"recall@10", "recall@100", "ndcg@10", "mrr@10", "map", "judged@10"}
        assert {"p50", "p95", "p99", "mean", "max"} <= set(stage["latency_ms"])
        assert stage["queries"] == len(dataset.qrels["test"])
        assert 0.0 <= stage["metrics"]["ndcg@10"] <= 1.0
    assert set(data["stages"]["pool"]["branches"]) == {"bm25", "dense"}
    qids = data["per_query"]["qids"]
    assert len(data["per_query"]["metrics"]["rerank"]["map"]) == len(qids)


def test_json_round_trip(saved, report):
    loaded = Report.load(saved)  # a directory works as well as the file
    assert loaded.model_dump() == report.model_dump()
    with pytest.raises(InputError, match="report.json"):
        Report.load(saved / "nowhere")


def test_trec_run_per_stage_in_ranking_order(saved, report, dataset):
    for name in report.stages:
        path = saved / "runs" / f"{name}.trec"
        lines = path.read_text().splitlines()
        assert all(len(line.split()) == 6 and line.split()[5] == name for line in lines)
        run = read_run(path)
        first = report.per_query.latency_qids[0]
        ranking = report._runs[name][0]
        assert list(run[first]) == [dataset.corpus.ids[r] for r in ranking.doc_rows]


def test_per_query_csv(saved, report):
    rows = list(csv.DictReader((saved / "per_query.csv").open()))
    assert len(rows) == len(report.stages) * report.queries
    assert list(rows[0]) == ["stage", "qid", *report.metrics, "latency_ms"]
    by_key = {(r["stage"], r["qid"]): r for r in rows}
    i = 5
    qid = report.per_query.qids[i]
    assert float(by_key["pool", qid]["ndcg@10"]) == pytest.approx(report.per_query.metrics["pool"]["ndcg@10"][i], rel=1e-5)
    assert float(by_key["pool", qid]["latency_ms"]) > 0


def test_html_is_self_contained(saved, report):
    html = (saved / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert html.count("<svg") >= 2 + len(report.stages)  # funnel, strip plot, a histogram per stage
    for name in report.stages:
        assert f">{name}<" in html or f">{name} <" in html
    assert "Recall funnel" in html and "Latency per query" in html


def test_html_in_batch_mode_and_from_loaded_report(saved, dataset):
    batch = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, mode="batch", progress=False)
    html = render_html(batch)
    assert "Batch mode measures throughput" in html and "<svg" in html
    loaded = Report.load(saved)
    out = saved.parent / "resaved"
    save_report(loaded, out)  # no rankings attached: no run files, but every other file
    assert (out / "report.html").is_file() and not (out / "runs").exists()


def test_console_table_fits_100_columns(report):
    text = render_report(report)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text
    header = next(line for line in text.splitlines() if "nDCG@10" in line)
    for column in ("R@100", "RR@10", "AP", "Judged@10", "P50 ms", "P95 ms", "P99 ms"):  # ir_measures names
        assert column in header
    for name in report.stages:
        assert any(line.strip().startswith(name) for line in text.splitlines())


def test_console_table_fits_with_many_metrics_and_long_names(dataset):
    graph = StubRetriever("a_retriever_with_a_very_long_name", k=20) >> StubRerank("r", k=10)
    metrics = ["recall@10", "recall@100", "ndcg@10", "ndcg@100", "mrr@10", "map", "p@10", "hit@10"]
    report = evaluate(graph, dataset, metrics=metrics, progress=False)
    text = render_report(report)
    assert max(len(line) for line in text.splitlines()) <= 100
    values = [line for line in text.splitlines() if line.strip().startswith("r ")]
    assert "…" not in "".join(values)  # numbers are never cut: the table splits instead
    for column in ("nDCG@100", "Success@10", "P95 ms"):
        assert column in text


def test_print_report_quiet_prints_only_the_table(report, capsys):
    from rich.console import Console

    print_report(report, quiet=True, console=Console(width=100, file=None))
    quiet = capsys.readouterr().out
    print_report(report, quiet=False, console=Console(width=100))
    loud = capsys.readouterr().out
    assert "nDCG@10" in quiet and "warm-up" not in quiet and "warm-up" in loud


def test_a_metric_deeper_than_a_stage_returns_is_not_applicable_everywhere(report, saved):
    # the reranker keeps 10 (StubRerank k=10), the retrievers 30, the pool 40: only R@100 is out of reach
    assert report.stages["rerank"].limit == 10 and report.stages["rerank"].not_applicable == ["recall@100"]
    assert report.stages["pool"].limit == 40 and report.stages["pool"].not_applicable == ["recall@100"]
    dense_only = json.loads((saved / "report.json").read_text())["stages"]["dense"]
    assert dense_only["limit"] == 30 and dense_only["not_applicable"] == ["recall@100"]
    text = render_report(report)
    rerank_row = next(line for line in text.splitlines() if line.lstrip().startswith("rerank"))
    assert rerank_row.split()[2] == "n/a"  # stage, R@10, R@100 columns
    assert "n/a: the metric reads deeper than the stage returns" in text
    html = render_html(report)
    assert html.count(">n/a</td>") == 4 and "truncation, not loss" in html


def test_isolated_timing_is_reported_beside_the_concurrent_one(dataset):
    graph = (StubRetriever("a", k=20) | StubRetriever("b", k=20, seed=1)) >> CandidatePool("rrf", k=20, name="pool")
    isolated = evaluate(graph, dataset, progress=False, timing="isolated")
    assert isolated.timing == "isolated"
    assert all(s.latency_alone_ms is not None and s.latency_alone_ms.n == s.latency_ms.n for s in isolated.stages.values())
    text = render_report(isolated)
    assert "latency alone" in text and "includes sharing the cores" not in text
    plain = evaluate(graph, dataset, progress=False)
    assert all(s.latency_alone_ms is None for s in plain.stages.values())
    assert "includes sharing the cores with its neighbour" in render_report(plain)


def test_percentiles_say_how_many_queries_they_rest_on(report, dataset):
    n = report.timed_queries
    assert n == len(dataset.qrels["test"]) < 100  # warm-up queries run before and are not among them
    assert report.thin_percentiles() == (["P95", "P99"] if n < 20 else ["P99"])
    text = render_report(report)
    assert "P99 ms†" in text and f"percentiles over {n} queries" in text
    assert f"† P99 over only {n} queries" in text.replace("\n", " ")
    assert "P99 ms†" in render_html(report)
    many = tiny_dataset(n_queries=110)
    big = evaluate(StubRetriever("r", k=20), many, progress=False, warmup=0)
    assert big.timed_queries == 110 and big.thin_percentiles() == []
    assert "†" not in render_report(big)


def test_end_to_end_says_which_stages_it_covers_when_some_came_from_the_cache(dataset, tmp_path):
    from stagegraph.pipeline.cache import StageCache

    cache = StageCache(tmp_path / "cache")
    evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, progress=False, cache=cache)
    again = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5, flip=True), dataset, progress=False, cache=cache)
    assert again.end_to_end.includes == ["rr"]
    text = render_report(again).replace("\n", " ")
    assert "r read from the cache: not timed, so end to end covers rr only" in text
    assert "End to end covers rr only" in render_html(again)
