"""`stagegraph demo` end to end on the bundled sample: every stage for real, checked against its pins.

This is the main job on a fresh machine, so it runs in CI: it fine-tunes the demo's small
cross-encoder (a few minutes on 2 cores), runs the default graph in online mode and checks the
figures pinned in configs/demo-expectations.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stagegraph.demo import run_demo

PINS = Path(__file__).resolve().parents[1] / "configs" / "demo-expectations.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-work")
    out = tmp_path_factory.mktemp("demo-out")
    said: list[str] = []
    result = run_demo(work_dir=work, out=out, progress=False, say=said.append)
    return result, said, work


@pytest.mark.slow
def test_demo_trains_its_reranker_on_first_use_and_says_so(demo):
    result, said, work = demo
    assert result.trained
    assert any("No pretrained cross-encoder can be downloaded" in line for line in said)
    assert (Path(result.reranker) / "stagegraph_reranker.json").is_file()
    assert Path(result.reranker).is_relative_to(work)


@pytest.mark.slow
def test_demo_reports_the_funnel_and_latency_of_every_stage(demo):
    result, _, _ = demo
    report = json.loads((Path(result.out) / "report.json").read_text())
    assert report["dataset"] == "sample" and report["split"] == "test" and report["mode"] == "online"
    assert list(report["stages"]) == ["bm25", "dense", "pool", "rerank"]
    for stage in report["stages"].values():
        assert stage["queries"] == 116
        assert stage["latency_ms"]["p50"] > 0 and stage["latency_ms"]["p99"] >= stage["latency_ms"]["p95"]
        assert not stage["cache_hit"]
    pool, rerank = report["stages"]["pool"]["metrics"], report["stages"]["rerank"]["metrics"]
    assert rerank["recall@100"] <= pool["recall@100"] + 1e-9  # a reranker only permutes its pool
    assert (Path(result.out) / "report.html").is_file()


@pytest.mark.slow
def test_demo_says_plainly_whether_the_reranker_lowers_the_pool(demo):
    result, _, _ = demo
    if result.rerank_gain < -0.005:
        assert result.verdict.startswith("WARNING: the reranker LOWERS the pool's nDCG@10")
    else:
        assert "WARNING" not in result.verdict and f"{result.report.stages['pool'].metrics['ndcg@10']:.3f}" in result.verdict
    # The blend chosen on held-out training queries keeps the reranker from wrecking the pool.
    assert result.rerank_gain >= -0.02, result.verdict


@pytest.mark.slow
def test_demo_figures_match_their_pins(demo):
    result, _, _ = demo
    pins = yaml.safe_load(PINS.read_text())
    checked = 0
    for entry in pins:
        stage = result.report.stages[entry["stage"]]
        for metric, pin in entry["metrics"].items():
            got = stage.metrics[metric]
            assert abs(got - pin["expected"]) <= pin["tolerance"], (entry["id"], metric, got, pin)
            checked += 1
    assert checked >= 8
