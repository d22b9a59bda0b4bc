"""A metric that does not apply is null in report.json, and every reader of a report says n/a.

A real pipeline on the bundled sample: two BM25 retrievers (100 documents each) fused by a pool that
keeps 10, scored with recall@100. The pool's recall@100 would only measure the cut at 10, so the
report must give it no number: not in `metrics`, not per query, not in the console, the HTML, the
CSV, `compare`, a sweep or a pinned expectation. The figures that do apply are checked against a
recall computed here from the TREC run files and the qrels.
"""

from __future__ import annotations

import csv
import json
import re

import pytest

from stagegraph.cli.app import main
from stagegraph.cli.expectations import outcome_table
from stagegraph.cli.sweep import sweep_table
from stagegraph.corpora.registry import load_sample
from stagegraph.corpora.trec import read_run
from stagegraph.evaluation.compare import CompareError, compare
from stagegraph.evaluation.console import render_report
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.expectations import check, load_file
from stagegraph.evaluation.html import render_html
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.sweep import sweep
from stagegraph.evaluation.writer import save_report
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.fusion import CandidatePool
from stagegraph.stages.retrieve.bm25 import BM25Retriever

METRICS = ["recall@10", "recall@100", "ndcg@10"]


def pipeline(rrf_k: int = 60, keep: int = 10):
    branches = BM25Retriever(k=100, name="bm25") | BM25Retriever(k=100, k1=0.6, b=0.3, name="bm25_flat")
    return branches >> CandidatePool("rrf", rrf_k=rrf_k, k=keep, name="top10")


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def env(sample, tmp_path_factory):
    return Environment(corpus=sample.corpus, work_dir=tmp_path_factory.mktemp("work"), progress=False)


@pytest.fixture(scope="module")
def run(sample, env, tmp_path_factory):
    """The pipeline, its report, and the directories of two saved reports (rrf_k 60 and 10)."""
    pipe = pipeline()
    report = evaluate(pipe, sample, metrics=METRICS, env=env, warmup=0, progress=False)
    root = tmp_path_factory.mktemp("reports")
    save_report(report, root / "rrf60")
    save_report(evaluate(pipeline(rrf_k=10), sample, metrics=METRICS, env=env, warmup=0, progress=False), root / "rrf10")
    return pipe, report, root


def _json(path):
    return json.loads((path / "report.json").read_text())


def _recall(ranked: list[str], judged: dict[str, int], k: int) -> float:
    relevant = {d for d, grade in judged.items() if grade > 0}
    return len(relevant & set(ranked[:k])) / len(relevant)


def test_report_json_writes_null_where_a_metric_does_not_apply_and_checked_figures_elsewhere(run, sample):
    _, _, root = run
    data = _json(root / "rrf60")
    top10, bm25 = data["stages"]["top10"], data["stages"]["bm25"]
    assert top10["limit"] == 10 and top10["not_applicable"] == ["recall@100"]
    assert top10["metrics"]["recall@100"] is None  # JSON null, not the 0.x the cut would give
    assert "recall@100" not in data["per_query"]["metrics"]["top10"]
    assert bm25["not_applicable"] == [] and isinstance(bm25["metrics"]["recall@100"], float)
    assert data["format_version"] == 2
    # the numbers that are there agree with recall computed here from the run files and the qrels
    _, qrels = sample.split("test")
    qids = data["per_query"]["qids"]
    for stage, metric, k in (("bm25", "recall@100", 100), ("top10", "recall@10", 10)):
        ranked = {q: list(docs) for q, docs in read_run(root / "rrf60" / "runs" / f"{stage}.trec").items()}
        mine = [_recall(ranked.get(q, []), qrels.for_query(q), k) for q in qids]
        assert data["per_query"]["metrics"][stage][metric] == pytest.approx(mine, abs=1e-6)
        assert data["stages"][stage]["metrics"][metric] == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    assert 0 < data["stages"]["top10"]["metrics"]["recall@10"] < 1


def test_report_json_records_the_pipelines_own_config(run):
    pipe, _, root = run
    assert _json(root / "rrf60")["config"] == json.loads(json.dumps(pipe.to_config()))


def test_a_report_read_back_shows_n_a_in_the_console_html_and_csv(run):
    _, _, root = run
    loaded = Report.load(root / "rrf60")
    assert loaded.metric("top10", "recall@100") is None and loaded.metric("bm25", "recall@100") > 0
    text = render_report(loaded)
    header = next(line for line in text.splitlines() if "R@100" in line)
    column = header.split().index("R@100")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] in (["bm25"], ["top10"])}
    assert rows["top10"][column] == "n/a" and re.fullmatch(r"0\.\d{4}", rows["bm25"][column])
    html = render_html(loaded)
    assert html.count(">n/a</td>") == 1 and "None" not in html
    rows = list(csv.DictReader((root / "rrf60" / "per_query.csv").open()))
    assert {r["recall@100"] for r in rows if r["stage"] == "top10"} == {""}
    assert all(float(r["recall@100"]) >= 0 for r in rows if r["stage"] == "bm25")


def test_an_old_report_with_a_number_there_is_read_as_null(run, tmp_path):
    _, _, root = run
    old = _json(root / "rrf60")
    old["format_version"] = 1  # format 1 wrote the truncated figure
    old["stages"]["top10"]["metrics"]["recall@100"] = 0.07
    old["per_query"]["metrics"]["top10"]["recall@100"] = [0.07] * len(old["per_query"]["qids"])
    old["stages"]["bm25_flat"]["metrics"]["ndcg@10"] = None  # a null with no reason listed: not applicable either
    (tmp_path / "report.json").write_text(json.dumps(old))
    loaded = Report.load(tmp_path)
    assert loaded.metric("top10", "recall@100") is None
    assert "recall@100" not in loaded.per_query.metrics["top10"]
    assert loaded.stages["bm25_flat"].not_applicable == ["ndcg@10"]
    assert render_report(loaded).count("n/a") >= 2 and render_html(loaded).count(">n/a</td>") == 2
    save_report(loaded, tmp_path / "again")
    again = _json(tmp_path / "again")
    assert again["stages"]["top10"]["metrics"]["recall@100"] is None and again["format_version"] == 2


def test_compare_skips_a_metric_that_does_not_apply_and_says_why(run):
    _, _, root = run
    a, b = Report.load(root / "rrf60"), Report.load(root / "rrf10")
    result = compare([a, b], labels=["rrf60", "rrf10"], permutations=200)
    assert {c.metric for c in result.metrics} == {"recall@10", "ndcg@10"}
    (skipped,) = result.skipped
    assert (skipped.system, skipped.stage, skipped.metric) == ("rrf10", "top10", "recall@100")
    assert "returns at most 10 documents" in skipped.reason
    inner = compare([a, b], labels=["rrf60", "rrf10"], stage="bm25", permutations=200)
    assert {c.metric for c in inner.metrics} == set(METRICS) and not inner.skipped  # it applies there
    with pytest.raises(CompareError, match="nothing to compare: R@100 does not apply"):
        compare([a, b], metrics=["recall@100"], permutations=200)


def test_compare_skips_when_only_one_side_does_not_apply(run, sample, env):
    _, _, root = run
    alone = evaluate(BM25Retriever(k=100, name="bm25"), sample, metrics=METRICS, env=env, warmup=0, progress=False)
    result = compare([alone, Report.load(root / "rrf60")], labels=["bm25", "pool"], permutations=200)
    assert [s.metric for s in result.skipped] == ["recall@100"] and "'pool'" not in result.skipped[0].reason
    assert len(result.metrics) == 2


def test_compare_cli_prints_the_skip_and_refuses_an_empty_comparison(run, capsys):
    _, _, root = run
    assert main(["compare", str(root / "rrf60"), str(root / "rrf10"), "--permutations", "200"]) == 0
    out = capsys.readouterr().out
    assert "skipped: rrf10 R@100: R@100 does not apply" in out and "nDCG@10" in out
    assert main(["compare", str(root / "rrf60"), str(root / "rrf10"), "--metrics", "recall@100"]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_a_sweep_records_null_where_the_output_keeps_too_few(sample, env, tmp_path):
    from rich.console import Console

    result = sweep(pipeline(), sample, stage="top10", param="k", values=[10, 100], metrics=METRICS,
                   env=env, warmup=0, progress=False, out=tmp_path, primary="recall@100")
    small, large = result.points
    assert small.metrics["recall@100"] is None and large.metrics["recall@100"] > 0
    csv_rows = list(csv.DictReader(result.to_csv().splitlines()))
    assert csv_rows[0]["recall@100"] == "" and float(csv_rows[1]["recall@100"]) > 0
    assert "<td>n/a</td>" in result.to_html()
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["metrics"]["recall@100"] is None
    console = Console(width=100, record=True)
    console.print(sweep_table(result))
    assert "n/a" in console.export_text()


def test_a_pinned_metric_that_does_not_apply_fails_with_the_reason(sample, tmp_path):
    from rich.console import Console

    (tmp_path / "pins.yaml").write_text(
        "- {id: top10-r100, dataset: sample, config: top10.yaml, stage: top10, command: none,\n"
        "   metrics: {recall@100: {expected: 0.9, tolerance: 0.01}, recall@10: {expected: 0.0, tolerance: 1.0}}}\n"
    )
    (entry,) = load_file(tmp_path / "pins.yaml")
    outcome = check(entry, work_dir=tmp_path / "work", graph_loader=lambda path: pipeline(),
                    dataset_loader=lambda name: sample)
    assert outcome.status == "failed" and outcome.measured["recall@100"] is None
    assert outcome.failures == ["recall@100: does not apply to stage 'top10', which returns at most 10 documents; "
                                "pin a metric it can reach"]
    console = Console(width=120, record=True)
    console.print(outcome_table([outcome], [entry]))
    line = next(l for l in console.export_text().splitlines() if "recall@100" in l)
    assert "n/a" in line and "OFF" in line
