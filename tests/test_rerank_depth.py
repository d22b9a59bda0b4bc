"""Per-query rerank depth: the stopping rule, the stage that follows it, and its calibration on held-out queries."""

import numpy as np
import pytest
from stubs import StubRetriever
from test_rerank import make_spread_cross_encoder

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.errors import StageError
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.blend import BlendSpec
from stagegraph.stages.rerank.cross_encoder import CrossEncoderConfig, CrossEncoderReranker, finish
from stagegraph.stages.rerank.depth import AdaptiveDepth, block_ends, calibrate, should_stop, stop_depth

WORDS = "the cell protein gene cancer retrieval search query document index dense sparse vector rank score".split()
RULE = AdaptiveDepth(block=10, min_depth=10, margin=0.0)


def test_block_ends_start_at_min_depth_and_end_at_depth():
    assert block_ends(100, 10, 10) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert block_ends(35, 10, 15) == [15, 25, 35]
    assert block_ends(7, 10, 10) == [7]
    assert block_ends(0, 10, 10) == [0]


def test_the_rule_stops_after_a_block_that_cannot_reach_the_top_k():
    falling = np.linspace(10, 0, 100)  # every block worse than the one before: stop after the second
    assert stop_depth(falling, 100, 10, RULE, 0.0) == 20
    assert stop_depth(falling, 100, 10, RULE, 3.0) == 100  # a large margin keeps scoring
    late = falling.copy()
    late[45] = 20.0  # a strong candidate at upstream rank 46 is not reached: the second block stopped the rule
    assert stop_depth(late, 100, 10, RULE, 0.0) == 20
    rising = falling.copy()
    rising[10:20] = 11.0  # a block that enters the top 10 keeps the rule going
    assert stop_depth(rising, 100, 10, RULE, 0.0) == 30
    # the block's best is compared with the k-th best so far, minus margin x spread
    scores = np.array([5.0] * 10 + [4.0] * 10 + [0.0] * 10)
    spread = scores[:20].std()
    assert should_stop(scores, 10, 20, 10, margin=(5.0 - 4.0) / spread - 1e-6)
    assert not should_stop(scores, 10, 20, 10, margin=(5.0 - 4.0) / spread + 1e-6)
    assert stop_depth(np.arange(5.0), 100, 10, RULE, 0.0) == 5  # fewer candidates than the first block


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return str(make_spread_cross_encoder(tmp_path_factory.mktemp("depth") / "ce", seed=4))


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(80)]
    return Corpus([f"d{i}" for i in range(80)], [""] * 80, texts)


QUERIES = Queries([f"q{i}" for i in range(5)], ["dense protein", "cancer gene study", "rank fusion", "sparse index", "cell score"])


@pytest.fixture(scope="module")
def scored(tiny_ce, corpus, tmp_path_factory):
    """The first stage's top 60 per query and every candidate's model score, in upstream order."""
    env = Environment(corpus, work_dir=tmp_path_factory.mktemp("work"), progress=False)
    upstream = StubRetriever("first", k=60)
    upstream.warm_up(env)
    pools = upstream.run(QUERIES, [])
    full = CrossEncoderReranker(tiny_ce, max_length=64, depth=60, k=60, blend=1.0)
    full.warm_up(env)
    scores = [np.array([dict(zip(r.doc_rows.tolist(), r.provenance[full.name].model_score.tolist()))[x]
                        for x in p.doc_rows.tolist()]) for p, r in zip(pools, full.run(QUERIES, [pools]))]
    return pools, scores


@pytest.mark.parametrize("margin", [-0.5, 1.0])
def test_the_stage_scores_what_the_rule_says_and_ranks_like_the_fixed_stage_at_that_depth(tiny_ce, corpus, scored, tmp_path, margin):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    pools, scored = scored
    stage = CrossEncoderReranker(tiny_ce, max_length=64, depth=60, k=10, blend=0.5,
                                 adaptive_depth={"block": 10, "min_depth": 10, "margin": margin})
    stage.warm_up(env)
    out = stage.run(QUERIES, [pools])
    expected = [stop_depth(s, 60, 10, stage.config.adaptive_depth, margin) for s in scored]
    assert stage.last_depths == expected
    assert stage.stats.scored == sum(expected)  # the candidates below the stop were never scored
    if margin < 0:  # random scores: blocks keep entering the top 10 at margin 0; a negative margin stops early
        assert sum(expected) < 60 * len(QUERIES)
    for pool, s, n, got in zip(pools, scored, expected, out):
        want = finish(pool.top(n), s[:n], BlendSpec(alpha=0.5, upstream="rank"), 10, stage.name)
        np.testing.assert_array_equal(got.doc_rows, want.doc_rows)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    batch = (StubRetriever("first", k=60) >> stage).execute(QUERIES, env=env, mode="batch").final
    online = (StubRetriever("first", k=60) >> stage).execute(QUERIES, env=env, mode="online", warmup=0).final
    for a, b in zip(batch, online):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)


def test_per_query_depth_is_off_by_default_and_calibrated_margin_needs_a_trained_model(tiny_ce, corpus, tmp_path):
    assert CrossEncoderConfig().adaptive_depth is None
    stage = CrossEncoderReranker(tiny_ce, adaptive_depth={"margin": "calibrated"})
    with pytest.raises(StageError, match="adaptive_depth margin 'calibrated' needs a model trained by train-reranker"):
        stage.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    assert stage.fingerprint() != CrossEncoderReranker(tiny_ce).fingerprint()


def test_calibration_picks_the_cheapest_margin_within_tolerance():
    rng = np.random.default_rng(0)
    scores = [np.sort(rng.normal(size=50))[::-1] + rng.normal(scale=0.5, size=50) for _ in range(30)]

    def quality(depths):  # deeper is better, with diminishing returns
        return float(np.mean([1 - np.exp(-d / 15) for d in depths]))

    policy = AdaptiveDepth(block=10, min_depth=10)
    tight = calibrate(scores, quality, 50, 10, policy, tolerance=0.0)
    loose = calibrate(scores, quality, 50, 10, policy, tolerance=0.2)
    assert tight.ndcg >= tight.full_ndcg - 1e-12 and loose.ndcg >= loose.full_ndcg - 0.2
    assert loose.mean_depth <= tight.mean_depth and loose.margin <= tight.margin
    for cal in (tight, loose):  # the figures saved are those of the margin chosen
        depths = [stop_depth(s, 50, 10, policy, cal.margin) for s in scores]
        assert cal.mean_depth == pytest.approx(np.mean(depths), abs=0.01)
        assert cal.ndcg == pytest.approx(quality(depths), abs=1e-4)


def test_heldout_check_saves_a_margin_and_a_calibration_set_that_the_stage_reads(tiny_ce, corpus, tmp_path):
    import json
    import shutil

    from stagegraph.stages.rerank.blend import METADATA_FILE
    from stagegraph.training.heldout import calibration_set, rerank_dev

    rng = np.random.default_rng(1)
    qrels = Qrels({q: {f"d{j}": 1 for j in rng.choice(80, 3, replace=False)} for q in QUERIES.ids})
    pools = [Ranking.from_scores(np.arange(80), rng.random(80)) for _ in QUERIES.ids]
    report = rerank_dev(tiny_ce, QUERIES, qrels, pools, corpus, depth=40, max_length=64, work_dir=tmp_path, progress=False)
    assert report.adaptive is not None and report.adaptive.max_depth == 40 and report.query_ids == QUERIES.ids
    assert report.adaptive.ndcg >= report.adaptive.full_ndcg - report.adaptive.tolerance
    cal = calibration_set(QUERIES, qrels, pools, corpus, n_queries=3, depth=7)
    assert len(cal.queries) == 3 and all(len(q.docs) == 7 == len(q.grades) for q in cal.queries)
    assert cal.queries[0].docs[0] == corpus.doc_text(int(pools[0].doc_rows[0]))
    assert sum(cal.queries[0].judged) == 3
    model = tmp_path / "with-margin"
    shutil.copytree(tiny_ce, model)
    (model / METADATA_FILE).write_text(json.dumps({"adaptive_depth": report.adaptive.model_dump(mode="json")}))
    stage = CrossEncoderReranker(str(model), max_length=64, depth=40, adaptive_depth={"margin": "calibrated"})
    stage.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    assert stage.bound.scoring.margin == report.adaptive.margin
