"""Cascades in a graph: a small cross-encoder's top k reranked by a larger one, checked, timed, cached, in YAML."""

import numpy as np
import pytest
from stubs import StubRetriever, register_stubs
from test_rerank import make_spread_cross_encoder

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import PipelineError
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

WORDS = "the cell protein gene cancer retrieval search query document index dense sparse vector rank score".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    return str(make_spread_cross_encoder(root / "small", seed=1)), str(make_spread_cross_encoder(root / "large", seed=2))


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(11)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(60)]
    return Corpus([f"d{i}" for i in range(60)], [""] * 60, texts)


QUERIES = Queries(["q1", "q2", "q3", "q4"], ["dense protein retrieval", "cancer gene", "rank fusion", "sparse vector index"])


def _cascade(small, large, large_depth=15):
    return (
        StubRetriever("first", k=50)
        >> CrossEncoderReranker(small, max_length=64, depth=40, k=15, blend=1.0, name="small")
        >> CrossEncoderReranker(large, max_length=64, depth=large_depth, k=5, blend=1.0, name="large")
    )


def test_the_large_model_reorders_the_small_models_top_k_and_provenance_keeps_both(models, corpus, tmp_path):
    small, large = models
    pipe = _cascade(small, large)
    run = pipe.execute(QUERIES, env=Environment(corpus, work_dir=tmp_path, progress=False), mode="online", warmup=0)
    first, mid, final = run.stages["first"].rankings, run.stages["small"].rankings, run.stages["large"].rankings
    judge_small = CrossEncoderReranker(small, max_length=64)
    judge_large = CrossEncoderReranker(large, max_length=64)
    for text, f, m, out in zip(QUERIES.texts, first, mid, final):
        # the small model scored the first stage's top 40 and kept its own best 15
        pool = f.doc_rows[:40]
        s = judge_small.predict([(text, corpus.doc_text(int(r))) for r in pool])
        np.testing.assert_array_equal(m.doc_rows, pool[np.lexsort((pool, -s))][:15])
        # the large model reordered exactly those 15 and kept 5
        l_scores = judge_large.predict([(text, corpus.doc_text(int(r))) for r in m.doc_rows])
        np.testing.assert_array_equal(out.doc_rows, m.doc_rows[np.lexsort((m.doc_rows, -l_scores))][:5])
        # provenance: both rerankers' own traces, with their model scores, aligned with the output
        assert {"first", "small", "large"} <= set(out.provenance)
        by_row = dict(zip(pool.tolist(), s.tolist()))
        np.testing.assert_allclose(out.provenance["small"].model_score, [by_row[r] for r in out.doc_rows.tolist()], atol=1e-5)
        np.testing.assert_allclose(out.provenance["large"].model_score,
                                   judge_large.predict([(text, corpus.doc_text(int(r))) for r in out.doc_rows]), atol=1e-5)
        # the large model blended with the small model's scores: its upstream
        np.testing.assert_allclose(out.provenance["large"].blended_with, out.provenance["small"].score, atol=1e-6)
        assert np.all(out.provenance["small"].rank <= 15)
    for name in ("small", "large"):  # each reranker timed on its own, per query
        assert run.stages[name].latencies_ns is not None and len(run.stages[name].latencies_ns) == len(QUERIES)
        assert (run.stages[name].latencies_ns > 0).all()


def test_each_stage_of_a_cascade_is_cached_on_its_own(models, corpus, tmp_path):
    small, large = models
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    cache = StageCache(tmp_path / "cache")
    first = _cascade(small, large).execute(QUERIES, env=env, mode="batch", cache=cache)
    assert not any(s.cache_hit for s in first.stages.values())
    again = _cascade(small, large).execute(QUERIES, env=env, mode="batch", cache=cache)
    assert all(s.cache_hit for s in again.stages.values())
    # only the large stage changed: the small one comes back from the cache, the large one runs
    changed = _cascade(small, large, large_depth=10).execute(QUERIES, env=env, mode="batch", cache=cache)
    assert changed.stages["small"].cache_hit and not changed.stages["large"].cache_hit
    for a, b in zip(first.stages["small"].rankings, changed.stages["small"].rankings):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)


def test_a_cascade_round_trips_through_yaml_and_a_piece_refuses_to_run_alone(models, corpus, tmp_path):
    register_stubs()
    small, large = models
    pipe = _cascade(small, large)
    again = Pipeline.from_yaml(pipe.to_yaml())
    assert again.names == ["first", "small", "large"] and again.fingerprint() == pipe.fingerprint()
    assert [s.stage.config.depth for s in again.steps[1:]] == [40, 15]
    piece = CrossEncoderReranker(small, name="small") >> CrossEncoderReranker(large, name="large", depth=10)
    assert not piece.complete
    with pytest.raises(PipelineError, match="needs candidates"):
        piece.execute(QUERIES, env=Environment(corpus, work_dir=tmp_path, progress=False))
    with pytest.raises(PipelineError, match="two stages are named"):
        StubRetriever("first", k=100) >> CrossEncoderReranker(small) >> CrossEncoderReranker(large, depth=10)


def test_the_example_cascade_config_is_a_complete_two_reranker_pipeline(models):
    from stagegraph.pipeline.config import apply_overrides, load_config

    small, large = models
    config = load_config("configs/cascade-rerank.yaml")
    pipe = Pipeline.from_config(apply_overrides(config, {"small": {"model": small}, "large": {"model": large}}))
    rerankers = [s for s in pipe.steps if s.stage.type_name == "cross_encoder"]
    assert [s.name for s in rerankers] == ["small", "large"] and pipe.output == "large"
    a, b = (s.stage.config for s in rerankers)
    assert (a.depth, a.k, b.depth, b.k) == (100, 30, 30, 10)
    assert rerankers[1].inputs == ("small",) and rerankers[0].inputs == ("pool",)
