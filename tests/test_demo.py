"""`stagegraph demo` end to end on the bundled sample: every stage for real, checked against its pins.

This is the main job on a fresh machine, so it runs in CI. With the hub unreachable (as here) the
demo fine-tunes its small cross-encoder for a fixed, seeded number of steps (a few minutes on 2
cores), runs the default pipeline in online mode and must reproduce the figures pinned in
configs/demo-expectations.yaml; with the chapter's cross-encoder on disk it uses that instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_models import make_tiny_cross_encoder

from stagegraph.configs import CONFIGS_DIR
from stagegraph.demo import DEFAULT_RERANKER, run_demo

PINS = CONFIGS_DIR / "demo-expectations.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-work")
    out = tmp_path_factory.mktemp("demo-out")
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("STAGEGRAPH_MODELS", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")  # the chapter's model cannot be had: the fine-tune path
        result = run_demo(work_dir=work, out=out, progress=False, say=said.append)
    return result, said, work


@pytest.mark.slow
def test_without_the_chapters_model_the_demo_fine_tunes_and_says_why(demo):
    result, said, work = demo
    assert result.source == "fine-tuned now"
    assert any(f"The chapter's cross-encoder {DEFAULT_RERANKER} is not on this machine and HF_HUB_OFFLINE is set"
               in line for line in said), said
    assert (Path(result.reranker) / "stagegraph_reranker.json").is_file()
    assert Path(result.reranker).is_relative_to(work)
    meta = json.loads((Path(result.reranker) / "stagegraph_reranker.json").read_text())
    assert meta["train"]["max_steps"] == 113 and meta["train"]["time_budget_s"] is None  # the same model anywhere


@pytest.mark.slow
def test_demo_reports_the_funnel_and_latency_of_every_stage(demo):
    result, _, _ = demo
    report = json.loads((Path(result.out) / "report.json").read_text())
    assert report["dataset"] == "sample" and report["split"] == "test" and report["mode"] == "online"
    assert list(report["stages"]) == ["bm25", "dense", "pool", "rerank"]
    for stage in report["stages"].values():
        assert stage["queries"] == 116 and stage["latency_ms"]["n"] == 116
        assert not stage["cache_hit"]
    # the reranker keeps 10: its R@100 would only measure truncation, so the report says n/a
    assert report["stages"]["rerank"]["not_applicable"] == ["recall@100"]
    assert report["stages"]["pool"]["not_applicable"] == []
    assert (Path(result.out) / "report.html").is_file()


@pytest.mark.slow
def test_the_demos_reranker_lifts_the_pool_and_the_verdict_says_so(demo):
    result, _, _ = demo
    pool = result.report.stages["pool"].metrics["ndcg@10"]
    rerank = result.report.stages["rerank"].metrics["ndcg@10"]
    assert rerank > pool, result.verdict  # fails the day the demo's reranker lowers the pool
    assert result.verdict.startswith("The reranker lifts the pool's nDCG@10") and f"{pool:.3f}" in result.verdict


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


def test_with_the_chapters_model_on_disk_the_demo_uses_it_and_says_so(tmp_path, monkeypatch):
    models = tmp_path / "models"
    make_tiny_cross_encoder(models / DEFAULT_RERANKER, max_length=256)
    monkeypatch.setenv("STAGEGRAPH_MODELS", str(models))
    said: list[str] = []
    work = Path(__file__).resolve().parents[1] / ".stagegraph"  # the sample's indexes, shared with the suite
    result = run_demo(work_dir=work, out=tmp_path / "out", progress=False, say=said.append)
    assert result.source == "pretrained"
    assert Path(result.reranker) == (models / DEFAULT_RERANKER).resolve()
    assert any(line.startswith(f"Using the chapter's cross-encoder {DEFAULT_RERANKER} (models_dir") for line in said)
    assert not any("fine-tune" in line for line in said)
    assert result.report.stages["rerank"].queries == 116
