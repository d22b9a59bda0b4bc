"""One rule for choosing the reranker (`stagegraph.pipeline.config.with_reranker`): `reranker=` in
`stagegraph.open`, `--reranker` on the command line, else `$STAGEGRAPH_RERANKER`, else the config's own."""

from __future__ import annotations

import pytest
from serve_support import build_collection, rerank_config
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.pipeline.config import ConfigError, with_reranker


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return (str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce-a", seed=1)),
            str(make_tiny_cross_encoder(root / "ce-b", seed=2)))


def reranker_model(stack) -> str:
    return stack.runner.bound("rerank").stage.config.model


def test_open_takes_reranker_then_the_environment_then_the_config(tmp_path, models, monkeypatch):
    st, ce_a, ce_b = models
    config = rerank_config(st, ce_a)
    root = build_collection(tmp_path / "c", config, n=12)
    monkeypatch.delenv("STAGEGRAPH_RERANKER", raising=False)
    with sg.open(config, collection=root, watch=None) as stack:
        assert reranker_model(stack) == ce_a
        first = stack.search("title", k=3)
    with sg.open(config, collection=root, watch=None, reranker=ce_b) as stack:
        assert reranker_model(stack) == ce_b
        other = stack.search("title", k=3)
    assert [h.cross_encoder_score for h in first.hits] != [h.cross_encoder_score for h in other.hits]  # another model scored
    monkeypatch.setenv("STAGEGRAPH_RERANKER", ce_b)
    with sg.open(config, collection=root, watch=None) as stack:
        assert reranker_model(stack) == ce_b
    with sg.open(config, collection=root, watch=None, reranker=ce_a) as stack:  # the argument wins
        assert reranker_model(stack) == ce_a


def test_a_reranker_for_a_pipeline_without_one_is_refused_and_the_environment_ignored(monkeypatch):
    bm25 = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 10}]}
    with pytest.raises(ConfigError, match="has no cross_encoder stage to use it; use a config with one"):
        with_reranker(bm25, "some/model")
    monkeypatch.setenv("STAGEGRAPH_RERANKER", "some/model")
    assert with_reranker(bm25) == bm25
