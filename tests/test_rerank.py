"""The cross-encoder rerank stage in a graph: faithful to the naive loop, cached, batch = online."""

import json

import numpy as np
import pytest
from stubs import StubRetriever
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer, rerank_corpus, rerank_pools, rerank_queries

from stagegraph.pipeline.compose import Pipeline
from stagegraph.errors import StageError
from stagegraph.pipeline.stage import Environment
from stagegraph.pipeline.registry import stage_class
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
from stagegraph.stages.rerank.blend import METADATA_FILE, BlendSpec, blend_scores
from stagegraph.stages.rerank.model import pad_batches, tokenize_pairs



def make_spread_cross_encoder(path, std=0.1, seed=0):
    """The tiny cross-encoder with larger random weights, so its scores spread out (few near-ties)."""
    import torch
    from transformers import BertForSequenceClassification

    make_tiny_cross_encoder(path, max_length=128)
    model = BertForSequenceClassification.from_pretrained(str(path))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and "LayerNorm" not in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * std)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return make_spread_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")


@pytest.fixture(scope="module")
def corpus():
    return rerank_corpus()


def _queries():
    return rerank_queries()


def _env(corpus, tmp_path):
    return Environment(corpus, work_dir=tmp_path, progress=False)


def test_order_equals_the_naive_predict_loop(tiny_ce, corpus, tmp_path):
    from sentence_transformers import CrossEncoder

    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=20, k=20, score_cache="off", batch_size=4)
    stage.warm_up(_env(corpus, tmp_path))
    ours = stage.run(queries, [upstream])
    naive_model = CrossEncoder(str(tiny_ce), max_length=64)
    for text, pool, got in zip(queries.texts, upstream, ours):
        rows = pool.doc_rows[:20]
        scores = naive_model.predict([(text, corpus.doc_text(int(r))) for r in rows], batch_size=32)
        assert len(np.unique(scores)) == len(scores)  # no ties: the order is fully defined
        expected = rows[np.argsort(-scores, kind="stable")]
        np.testing.assert_array_equal(got.doc_rows, expected)
        np.testing.assert_allclose(np.sort(got.scores)[::-1], np.sort(scores)[::-1], rtol=0, atol=1e-6)
        assert set(got.doc_rows) <= set(rows.tolist())  # nothing below `depth` is reranked in


def test_k_and_depth_cut_and_its_own_trace(tiny_ce, corpus, tmp_path):
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=10, k=4, score_cache="off", blend=0.5)
    stage.warm_up(_env(corpus, tmp_path))
    upstream = rerank_pools(len(corpus), 3)
    out = stage.run(_queries(), [upstream])
    for text, pool, ranking in zip(_queries().texts, upstream, out):
        assert len(ranking) == 4
        assert set(ranking.doc_rows) <= set(pool.doc_rows[:10].tolist())
        assert np.all(np.diff(ranking.scores) <= 0)
        own = ranking.provenance[stage.name]  # the model's own score and the upstream one it blended with
        np.testing.assert_array_equal(own.rank, [1, 2, 3, 4])
        np.testing.assert_array_equal(own.score, ranking.scores)
        upstream_of = dict(zip(pool.doc_rows.tolist(), pool.scores.tolist()))
        np.testing.assert_allclose(own.blended_with, [upstream_of[r] for r in ranking.doc_rows.tolist()])
        model = stage.predict([(text, corpus.doc_text(int(r))) for r in ranking.doc_rows])
        np.testing.assert_allclose(own.model_score, model, atol=1e-5)
    assert stage.stats.pairs == 30 and stage.stats.scored == 30


def test_batch_and_online_give_identical_rankings(tiny_ce, corpus, tmp_path):
    queries = _queries()
    results = {}
    for mode in ("batch", "online"):
        stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=25, k=10, score_cache="off", name="rerank")
        graph = Pipeline(StubRetriever("first", k=30) >> stage)
        results[mode] = graph.execute(queries, env=_env(corpus, tmp_path), mode=mode, warmup=0).final
    for a, b in zip(results["batch"], results["online"]):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_score_cache_serves_repeats_in_memory_and_on_disk(tiny_ce, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    env = _env(corpus, tmp_path)
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=20, k=5, score_cache="disk")
    stage.warm_up(env)
    first = stage.run(queries, [upstream])
    assert stage.stats.scored == 60
    shallower = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=10, k=5, score_cache="disk")  # new process
    shallower.warm_up(env)
    second = shallower.run(queries, [upstream])
    assert shallower.stats.scored == 0 and shallower.stats.cached == 30
    stage.run(queries, [upstream])
    assert stage.stats.scored == 60 and stage.stats.cached == 60
    # depth 10 keeps the pairs of depth 20 that rank highest among the first 10 candidates
    assert len(second[0]) == 5 and len(first[0]) == 5
    other = CrossEncoderReranker(str(tiny_ce), max_length=32, depth=10, k=5, score_cache="disk")  # no reuse
    other.warm_up(env)
    other.run(queries, [upstream])
    assert other.stats.scored == 30


def test_cached_scores_equal_fresh_scores(tiny_ce, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    env = _env(corpus, tmp_path)
    warm = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=15, k=15, score_cache="disk")
    warm.warm_up(env)
    warm.run(queries, [upstream])
    fresh = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=15, k=15, score_cache="off")
    fresh.warm_up(env)
    from_cache = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=15, k=15, score_cache="disk")
    from_cache.warm_up(env)
    for a, b in zip(fresh.run(queries, [upstream]), from_cache.run(queries, [upstream])):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert from_cache.stats.scored == 0


def test_length_sorted_batches_cover_every_pair_and_pad_little(tiny_ce):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_ce))
    docs = ["cell " * n for n in (3, 60, 5, 40, 2, 61, 30, 4)]
    encoded = tokenize_pairs(tokenizer, ["query"] * len(docs), docs, max_length=48)
    lengths = [len(x) for x in encoded["input_ids"]]
    assert max(lengths) == 48  # truncated to max_length
    seen, widths = [], []
    for positions, arrays in pad_batches(encoded, 3, tokenizer.pad_token_id):
        seen.extend(positions.tolist())
        widths.append(arrays["input_ids"].shape[1])
        assert arrays["input_ids"].shape[1] == max(lengths[p] for p in positions)
        np.testing.assert_array_equal(arrays["attention_mask"].sum(1), [lengths[p] for p in positions])
    assert sorted(seen) == list(range(len(docs)))
    assert widths == sorted(widths, reverse=True)


def test_fingerprint_before_warm_up_ignores_speed_settings(tiny_ce):
    base = CrossEncoderReranker(str(tiny_ce), max_length=64)
    assert base.fingerprint() == CrossEncoderReranker(str(tiny_ce), max_length=64, batch_size=3, device="cpu").fingerprint()
    assert base.fingerprint() != CrossEncoderReranker(str(tiny_ce), max_length=32).fingerprint()
    assert base.fingerprint() != CrossEncoderReranker(str(tiny_ce), max_length=64, depth=5).fingerprint()
    assert CrossEncoderReranker("no/such-model-anywhere").fingerprint()  # computable without the model


def test_missing_model_fails_at_warm_up_with_a_fix(corpus, tmp_path):
    stage = CrossEncoderReranker(str(tmp_path / "nowhere"))
    with pytest.raises(StageError, match="train-reranker"):
        stage.warm_up(_env(corpus, tmp_path))


def test_a_bi_encoder_is_refused_as_not_a_cross_encoder(corpus, tmp_path):
    path = make_tiny_sentence_transformer(tmp_path / "bi")
    with pytest.raises(StageError, match="not a cross-encoder"):
        CrossEncoderReranker(str(path)).warm_up(_env(corpus, tmp_path))


def test_registered_for_yaml_with_a_model_field(tiny_ce):
    cls = stage_class("cross_encoder")
    assert cls is CrossEncoderReranker
    stage = cls.from_config(cls.Config(model=str(tiny_ce), depth=50, k=5, name="rerank"))
    assert stage.model_name == str(tiny_ce) and stage.config.depth == 50 and stage.name == "rerank"
    again = cls.from_config(cls.Config(**{k: v for k, v in stage.to_config().items() if k != "type"}))
    assert again.fingerprint() == stage.fingerprint()


def test_blend_zero_keeps_the_upstream_order_and_metadata_sets_alpha(tiny_ce, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=10, k=10, blend=0.0, score_cache="off")
    stage.warm_up(_env(corpus, tmp_path))
    for pool, ranking in zip(upstream, stage.run(queries, [upstream])):
        np.testing.assert_array_equal(ranking.doc_rows, pool.doc_rows[:10])
    import shutil

    copy = tmp_path / "with-meta"
    shutil.copytree(tiny_ce, copy)
    (copy / METADATA_FILE).write_text(json.dumps({"blend": {"alpha": 0.25, "upstream": "score"}}))
    saved = CrossEncoderReranker(str(copy))
    assert saved.blend == BlendSpec(alpha=0.25, upstream="score")
    assert saved.fingerprint() != CrossEncoderReranker(str(tiny_ce)).fingerprint()
    assert CrossEncoderReranker(str(copy), blend=1.0).blend.alpha == 1.0


def test_blend_scores_mixes_normalised_signals():
    ce = np.array([0.0, 10.0, 5.0])
    up = np.array([3.0, 2.5, 1.0])  # upstream order; min-max [1, 0.75, 0], rank prior [1, 0.5, 0]
    half = blend_scores(ce, up, BlendSpec(alpha=0.5, upstream="score"))
    np.testing.assert_allclose(half, [0.5, 0.875, 0.25])
    by_rank = blend_scores(ce, up, BlendSpec(alpha=0.5, upstream="rank"))
    np.testing.assert_allclose(by_rank, [0.5, 0.75, 0.25])
    np.testing.assert_array_equal(blend_scores(ce, up, BlendSpec(alpha=1.0)), ce.astype(np.float32))


def test_onnx_fp32_order_equals_torch_and_int8_runs(tiny_ce, corpus, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    env = _env(corpus, tmp_path)
    runs = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=20, k=20, backend=backend, score_cache="off")
        stage.warm_up(env)
        runs[backend] = stage.run(queries, [upstream])
    for t, o in zip(runs["torch"], runs["onnx"]):
        np.testing.assert_array_equal(t.doc_rows, o.doc_rows)
        np.testing.assert_allclose(t.scores, o.scores, atol=1e-5)
    # int8 changes the scores a little (it is the quantised model that ran) but keeps their order nearly
    # intact: per query, the int8 score of each candidate against its fp32 score
    for t, q in zip(runs["torch"], runs["onnx-int8"]):
        fp32 = dict(zip(t.doc_rows.tolist(), t.provenance["cross_encoder"].model_score.tolist()))
        int8 = dict(zip(q.doc_rows.tolist(), q.provenance["cross_encoder"].model_score.tolist()))
        rows = sorted(fp32)
        a, b = np.array([fp32[r] for r in rows]), np.array([int8[r] for r in rows])
        assert np.abs(a - b).max() > 0
        assert np.corrcoef(a, b)[0, 1] > 0.95, np.corrcoef(a, b)[0, 1]
    assert sorted(p.name for p in (tmp_path / "onnx").rglob("*.onnx")) == ["model-v1-int8-per-channel.onnx", "model-v1.onnx"]
    assert CrossEncoderReranker(str(tiny_ce), backend="onnx-int8").fingerprint() != CrossEncoderReranker(str(tiny_ce)).fingerprint()


def test_score_cache_is_off_by_default_so_online_latency_measures_the_model(tiny_ce, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=10, k=5)
    stage.warm_up(_env(corpus, tmp_path))
    stage.run(queries, [upstream])
    stage.run(queries, [upstream])
    assert stage.stats.cached == 0 and stage.stats.scored == 60
