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


def test_with_the_chapters_model_on_disk_the_demo_uses_it_and_a_second_run_says_it_reused_the_indexes(
        tmp_path, monkeypatch):
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
    assert sorted(result.built + result.reused) == ["the BM25 index", "the dense index"]  # which: as the suite left it
    assert ("Built now and cached in" in " ".join(said)) == bool(result.built)
    # a second run on the same work directory: it says it reused what the first built, claims no
    # building or training, and its closing time is its own
    again: list[str] = []
    second = run_demo(work_dir=work, out=tmp_path / "again", progress=False, say=again.append)
    assert second.built == [] and second.reused == ["the BM25 index", "the dense index"]
    assert f"Reused from an earlier run (cached in {work}): the BM25 index and the dense index." in again, again
    assert not any(word in line.lower() for line in again for word in ("built now", "fine-tun", "training")), again
    assert second.finished == (f"Demo finished in {second.seconds:.0f} s; nothing was built or trained "
                               "(the BM25 index and the dense index came from an earlier run).")


def test_with_the_demos_model_cached_it_says_it_reuses_it_instead_of_fine_tuning(tmp_path, monkeypatch):
    """The fine-tune route's first message on a later run: the model of the earlier run, not 'fine-tunes now'."""
    from stagegraph.demo import demo_reranker, fine_tuned_path, pretrained_reranker
    from stagegraph.stages.rerank.blend import METADATA_FILE

    monkeypatch.delenv("STAGEGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first: list[str] = []
    assert pretrained_reranker(first.append) is None
    assert "so the demo fine-tunes a small one instead, now (later runs reuse it)" in first[0]
    cached = fine_tuned_path(tmp_path)
    cached.mkdir(parents=True)
    (cached / METADATA_FILE).write_text("{}")  # what `cached_reranker` looks for: a model fine-tuned earlier
    said: list[str] = []
    path, source = demo_reranker(tmp_path, progress=False, say=said.append)
    assert (Path(path), source) == (cached, "fine-tuned earlier")
    assert said[0].startswith(f"The chapter's cross-encoder {DEFAULT_RERANKER} is not on this machine and "
                              "HF_HUB_OFFLINE is set, so the demo uses the small one it fine-tuned on an earlier run")
    assert said[1] == f"using the cross-encoder fine-tuned earlier on sample train: {cached}"
    assert not any("fine-tunes" in line or "will be cached" in line for line in said), said
