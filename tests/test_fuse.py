"""CandidatePool on hand-computed cases: every method, normalisation, missing policy, weights and
edge case (ties, a document in one list only, empty lists, a branch returning nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from stagegraph.errors import ConfigError

from stagegraph.corpora.types import Queries
from stagegraph.errors import StageError
from stagegraph.pipeline.ranking import Ranking, with_provenance
from stagegraph.pipeline.stage import Environment, Inputs
from stagegraph.stages.fusion.pool import CandidatePool, CandidatePoolConfig, branch_contributions
from stagegraph.stages.fusion import normalize
from stagegraph.stages.fusion.options import FusionMethod, MissingPolicy, Normalization

Q = Queries.single("q")
NAN = float("nan")


def R(rows, scores) -> Ranking:
    return Ranking.from_scores(np.array(rows, dtype=np.int64), np.array(scores, dtype=np.float32))


# The two lists most cases use: A returns 10, 20, 30; B returns 30, 40.
A = R([10, 20, 30], [3.0, 2.0, 1.0])
B = R([30, 40], [0.9, 0.8])


def fuse(pool: CandidatePool, *rankings: Ranking, names: tuple[str, ...] | None = None) -> Ranking:
    return pool.run(Q, Inputs([[r] for r in rankings], names))[0]


def traced_pool(pool: CandidatePool, names: tuple[str, ...], *rankings: Ranking) -> Ranking:
    """The pool's ranking with the provenance the executor attaches (branches traced under `names`)."""
    branches = [with_provenance(n, r, []) for n, r in zip(names, rankings)]
    return with_provenance("pool", fuse(pool, *branches, names=names), branches)


def as_dict(r: Ranking) -> dict[int, float]:
    return dict(zip(r.doc_rows.tolist(), r.scores.tolist()))


def check_ranking(r: Ranking, expected: list[tuple[int, float]]) -> None:
    """Rows in this exact order, with these scores."""
    assert r.doc_rows.tolist() == [row for row, _ in expected]
    np.testing.assert_allclose(r.scores, [s for _, s in expected], rtol=1e-6, atol=1e-7)


# -- RRF ---------------------------------------------------------------------------------------------
def test_rrf_default_k60_sums_reciprocal_ranks_and_breaks_ties_by_row():
    # 30: 1/(60+3) + 1/(60+1); 10: 1/61; 20 and 40 tie at 1/62 -> lower row first.
    check_ranking(fuse(CandidatePool(), A, B), [(30, 1 / 63 + 1 / 61), (10, 1 / 61), (20, 1 / 62), (40, 1 / 62)])


def test_rrf_k_and_weights():
    # rrf_k = 0: 1/rank. Weights (2, 1): 10: 2/1 = 2; 20: 2/2 = 1; 30: 2/3 + 1/1; 40: 1/2.
    check_ranking(fuse(CandidatePool("rrf", rrf_k=0, weights=[2, 1]), A, B), [(10, 2.0), (30, 5 / 3), (20, 1.0), (40, 0.5)])


def test_rrf_ignores_scores_and_is_symmetric_in_branch_order():
    a, b = R([1, 2], [100.0, 1.0]), R([2, 1], [0.2, 0.1])
    # both documents score 1/61 + 1/62: a tie, broken by row, whichever order the branches come in
    for pair in ((a, b), (b, a)):
        check_ranking(fuse(CandidatePool(), *pair), [(1, 1 / 61 + 1 / 62), (2, 1 / 61 + 1 / 62)])


def test_ties_inside_a_branch_rank_by_row():
    tied = R([7, 3, 5], [1.0, 1.0, 1.0])  # ranks: 3 -> 1, 5 -> 2, 7 -> 3
    r = fuse(CandidatePool("rrf", rrf_k=0), tied, R([], []))
    check_ranking(r, [(3, 1.0), (5, 0.5), (7, 1 / 3)])


# -- score-based methods, min-max + zero (the defaults) ------------------------------------------------
# min-max: A -> 10: 1, 20: .5, 30: 0;  B -> 30: 1, 40: 0.
def test_combsum_minmax_zero():
    check_ranking(fuse(CandidatePool("combsum"), A, B), [(10, 1.0), (30, 1.0), (20, 0.5), (40, 0.0)])


def test_combmnz_multiplies_by_number_of_branches_that_found_it():
    check_ranking(fuse(CandidatePool("combmnz"), A, B), [(30, 2.0), (10, 1.0), (20, 0.5), (40, 0.0)])


def test_max():
    check_ranking(fuse(CandidatePool("max"), A, B), [(10, 1.0), (30, 1.0), (20, 0.5), (40, 0.0)])


def test_wsum_weights():
    check_ranking(fuse(CandidatePool("wsum", weights=[1, 3]), A, B), [(30, 3.0), (10, 1.0), (20, 0.5), (40, 0.0)])


def test_weights_by_branch_name():
    pool = CandidatePool("wsum", weights={"dense": 3, "bm25": 1})
    check_ranking(fuse(pool, A, B, names=("bm25", "dense")), [(30, 3.0), (10, 1.0), (20, 0.5), (40, 0.0)])


def test_weighted_max_and_combmnz():
    # max of w*v: 10: 2*1; 20: 2*.5; 30: max(0, 1); 40: 0
    check_ranking(fuse(CandidatePool("max", weights=[2, 1]), A, B), [(10, 2.0), (20, 1.0), (30, 1.0), (40, 0.0)])
    # CombMNZ: (2*0 + 1*1) * 2 = 2 for 30; 10: 2; 20: 1; 40: 0
    check_ranking(fuse(CandidatePool("combmnz", weights=[2, 1]), A, B), [(10, 2.0), (30, 2.0), (20, 1.0), (40, 0.0)])


# -- missing-document policies (raw scores, so the policies differ) ------------------------------------
def test_missing_zero_raw_scores():
    check_ranking(fuse(CandidatePool("combsum", normalization="none"), A, B), [(10, 3.0), (20, 2.0), (30, 1.9), (40, 0.8)])


def test_missing_min_uses_that_branchs_minimum():
    # min of A = 1, min of B = 0.8 (Pyserini's rule)
    pool = CandidatePool("combsum", normalization="none", missing="min")
    check_ranking(fuse(pool, A, B), [(10, 3.8), (20, 2.8), (30, 1.9), (40, 1.8)])


def test_missing_skip_scores_on_present_branches():
    # sum over present branches rescaled by total/present weight: 10: 3 * 2/1; 20: 2 * 2; 30: 1 + .9; 40: .8 * 2
    pool = CandidatePool("combsum", normalization="none", missing="skip")
    check_ranking(fuse(pool, A, B), [(10, 6.0), (20, 4.0), (30, 1.9), (40, 1.6)])
    # weighted (1, 3), W = 4: 10: 3 * 4/1; 20: 2 * 4/1; 30: 1 + 2.7; 40: 2.4 * 4/3
    pool = CandidatePool("wsum", normalization="none", missing="skip", weights=[1, 3])
    check_ranking(fuse(pool, A, B), [(10, 12.0), (20, 8.0), (30, 3.7), (40, 3.2)])


def test_missing_skip_vs_zero_for_max_with_negative_scores():
    # z-scores: A -> 10: +1.2247, 20: 0, 30: -1.2247; B -> 30: +1, 40: -1
    z = 1.5**0.5
    zero = fuse(CandidatePool("max", normalization="zscore"), A, B)
    check_ranking(zero, [(10, z), (30, 1.0), (20, 0.0), (40, 0.0)])  # 40: max(0 for A's absence, -1)
    skip = fuse(CandidatePool("max", normalization="zscore", missing="skip"), A, B)
    check_ranking(skip, [(10, z), (30, 1.0), (20, 0.0), (40, -1.0)])


def test_missing_min_equals_zero_after_minmax():
    a = fuse(CandidatePool("combsum", missing="min"), A, B)
    b = fuse(CandidatePool("combsum", missing="zero"), A, B)
    assert as_dict(a) == as_dict(b)


def test_missing_skip_combmnz():
    # min-max values; 10: 1*2/1*1 = 2; 20: .5*2 = 1; 30: (0 + 1) * 2 = 2; 40: 0
    check_ranking(fuse(CandidatePool("combmnz", missing="skip"), A, B), [(10, 2.0), (30, 2.0), (20, 1.0), (40, 0.0)])


# -- normalisations -------------------------------------------------------------------------------
def test_rank_normalization():
    # A -> 1, 2/3, 1/3; B -> 1, 1/2
    check_ranking(fuse(CandidatePool("combsum", normalization="rank"), A, B), [(30, 4 / 3), (10, 1.0), (20, 2 / 3), (40, 0.5)])


def test_zscore_normalization():
    z = 1.5**0.5
    check_ranking(fuse(CandidatePool("combsum", normalization="zscore"), A, B), [(10, z), (20, 0.0), (30, 1 - z), (40, -1.0)])


def _rows(*lists):
    """(scores, ranks) matrices for lists given as scores in rank order, NaN-padded to one width."""
    width = max(len(x) for x in lists)
    scores = np.full((len(lists), width), np.nan)
    ranks = np.full((len(lists), width), np.nan)
    for i, x in enumerate(lists):
        scores[i, : len(x)] = x
        ranks[i, : len(x)] = np.arange(1, len(x) + 1)
    return scores, ranks


def test_normalizers_row_by_row_keep_absent_as_nan():
    scores, ranks = _rows([3.0, 2.0, 1.0], [0.9, 0.8])
    np.testing.assert_allclose(normalize.minmax(scores, ranks), [[1, 0.5, 0], [1, 0, NAN]])
    np.testing.assert_allclose(normalize.rank(scores, ranks), [[1, 2 / 3, 1 / 3], [1, 0.5, NAN]])
    z = 1.5**0.5
    np.testing.assert_allclose(normalize.zscore(scores, ranks), [[z, 0, -z], [1, -1, NAN]])
    np.testing.assert_allclose(normalize.none(scores, ranks), scores)


def test_normalizers_on_degenerate_lists():
    for fn in (normalize.none, normalize.minmax, normalize.zscore, normalize.rank):
        assert fn(np.empty((2, 0)), np.empty((2, 0))).shape == (2, 0)
    # no division by zero: a constant list, a single document, a branch with nothing
    with np.errstate(all="raise"):
        scores, ranks = _rows([5.0, 5.0, 5.0], [7.0], [])
        np.testing.assert_array_equal(normalize.minmax(scores, ranks), [[1, 1, 1], [1, NAN, NAN], [NAN] * 3])
        np.testing.assert_array_equal(normalize.zscore(scores, ranks), [[0, 0, 0], [0, NAN, NAN], [NAN] * 3])
        np.testing.assert_allclose(normalize.rank(scores, ranks), [[1, 2 / 3, 1 / 3], [1, NAN, NAN], [NAN] * 3])
    scores, ranks = _rows([0.3, 0.3])  # equal scores that are not exact in binary: still constant for zscore
    np.testing.assert_array_equal(normalize.zscore(scores, ranks), [[0, 0]])


def test_constant_and_single_document_branches_through_the_pool():
    const = R([1, 2], [5.0, 5.0])
    single = R([3], [0.1])
    r = fuse(CandidatePool("combsum"), const, single)
    check_ranking(r, [(1, 1.0), (2, 1.0), (3, 1.0)])
    assert np.isfinite(r.scores).all()


# -- empty lists, one branch empty, cut-off, duplicates --------------------------------------------
def test_all_branches_empty():
    for method in FusionMethod:
        weights = [1, 1] if method is FusionMethod.WSUM else None
        r = traced_pool(CandidatePool(method, weights=weights), ("x", "y"), R([], []), R([], []))
        assert len(r) == 0 and r.scores.dtype == np.float32
        assert set(r.provenance) == {"x", "y", "pool"}


@pytest.mark.parametrize("missing", list(MissingPolicy))
def test_a_branch_returning_nothing(missing):
    # the empty branch adds nothing under every policy (it has no minimum under `min`)
    r = traced_pool(CandidatePool("combsum", normalization="none", missing=missing), ("a", "b"), A, R([], []))
    scale = 2.0 if missing is MissingPolicy.SKIP else 1.0  # skip: the mean over present (A) x total weight
    check_ranking(r, [(10, 3.0 * scale), (20, 2.0 * scale), (30, 1.0 * scale)])
    assert not r.provenance["b"].found.any() and r.provenance["a"].found.all()
    check_ranking(fuse(CandidatePool(), R([], []), B), [(30, 1 / 61), (40, 1 / 62)])


def test_pool_is_cut_to_k_after_fusion():
    r = traced_pool(CandidatePool(k=2), ("a", "b"), A, B)
    assert r.doc_rows.tolist() == [30, 10]
    assert all(len(t.score) == len(t.rank) == 2 for t in r.provenance.values())


def test_duplicate_row_in_a_branch_counts_once_at_its_best_rank():
    dup = Ranking(np.array([5, 5, 6]), np.array([3.0, 2.0, 1.0], dtype=np.float32))
    r = traced_pool(CandidatePool("rrf", rrf_k=0), ("a", "b"), dup, R([], []))
    check_ranking(r, [(5, 1.0), (6, 0.5)])
    assert as_dict(Ranking(r.doc_rows, r.provenance["a"].score)) == {5: 3.0, 6: 1.0}


def test_three_branches():
    c = R([40, 50], [7.0, 6.0])
    r = fuse(CandidatePool("combmnz", normalization="rank"), A, B, c)
    # rank-normalised: A 1, 2/3, 1/3; B 1, 1/2; C 1, 1/2. 40: (1/2 + 1) * 2 = 3; 30: (1/3 + 1) * 2 = 8/3
    check_ranking(r, [(40, 3.0), (30, 8 / 3), (10, 1.0), (20, 2 / 3), (50, 0.5)])


# -- provenance -------------------------------------------------------------------------------------
def test_provenance_keeps_each_branchs_raw_score_and_rank():
    r = traced_pool(CandidatePool(), ("bm25", "dense"), A, B)  # order 30, 10, 20, 40
    np.testing.assert_array_equal(r.provenance["bm25"].score, np.array([1.0, 3.0, 2.0, NAN], dtype=np.float32))
    np.testing.assert_array_equal(r.provenance["bm25"].rank, [3, 1, 2, NAN])
    np.testing.assert_array_equal(r.provenance["dense"].score, np.array([0.9, NAN, NAN, 0.8], dtype=np.float32))
    np.testing.assert_array_equal(r.provenance["dense"].rank, [1, NAN, NAN, 2])
    np.testing.assert_array_equal(r.provenance["pool"].rank, [1, 2, 3, 4])
    np.testing.assert_array_equal(r.provenance["pool"].score, r.scores)


def test_a_branch_named_like_a_reranker_field_cannot_collide():
    # the old string-keyed features had "upstream" and "cross_encoder" entries: a branch of that name was
    # overwritten. Provenance is keyed by step name only.
    r = traced_pool(CandidatePool(), ("upstream", "cross_encoder"), A, B)
    assert set(r.provenance) == {"upstream", "cross_encoder", "pool"}
    assert r.provenance["upstream"].found.tolist() == [True, True, True, False]


def test_branch_contributions_counts_documents_only_one_branch_found():
    names = ("bm25", "dense")
    rankings = [traced_pool(CandidatePool(), names, A, B), traced_pool(CandidatePool(), names, A, R([10], [1.0]))]
    # q1: 10, 20 only bm25; 40 only dense; 30 both.  q2: 20, 30 only bm25; 10 both.
    assert branch_contributions(rankings, ["bm25", "dense"]) == {"bm25": 4, "dense": 1}
    with pytest.raises(KeyError, match="no trace of branch"):
        branch_contributions(rankings, ["bm25", "splade"])


def test_pool_in_a_pipeline_traces_every_branch_by_its_step_name():
    from stagegraph.pipeline.compose import Pipeline
    from stubs import StubRetriever, tiny_corpus

    graph = Pipeline((StubRetriever("lex", k=5, seed=1) | StubRetriever("sem", k=5, seed=2)) >> CandidatePool(k=8))
    env = Environment(tiny_corpus(), progress=False)
    result = graph.execute(Queries(["q1", "q2"], ["x", "y"]), env=env, mode="batch")
    pooled = result.stages["pool"].rankings
    assert all(len(p) <= 8 for p in pooled)
    assert set(pooled[0].provenance) == {"lex", "sem", "pool"}
    for p, lex in zip(pooled, result.stages["lex"].rankings):
        found = dict(zip(lex.doc_rows.tolist(), lex.scores.tolist()))
        for row, score in zip(p.doc_rows.tolist(), p.provenance["lex"].score.tolist()):
            assert math.isnan(score) if row not in found else score == pytest.approx(found[row])


# -- configuration and validation -------------------------------------------------------------------
def test_defaults_are_resolved_into_the_config_so_reports_show_them():
    assert CandidatePool().to_config() == {
        "type": "pool", "method": "rrf", "k": 100, "rrf_k": 60, "normalization": "none", "weights": None, "missing": "zero"
    }
    cfg = CandidatePool("combmnz").to_config()
    assert cfg["normalization"] == "minmax" and cfg["missing"] == "zero" and cfg["rrf_k"] is None
    assert CandidatePool().fingerprint() == CandidatePool("rrf", rrf_k=60, missing="zero", normalization="none").fingerprint()
    assert CandidatePool().fingerprint() != CandidatePool(rrf_k=10).fingerprint()
    assert CandidatePool("combsum").fingerprint() != CandidatePool("combsum", missing="min").fingerprint()
    config = CandidatePoolConfig(method="wsum", weights={"a": 1.0, "b": 2.0}, name="p")
    rebuilt = CandidatePool.from_config(config)
    assert rebuilt.config == config and rebuilt.name == "p"
    assert str(config.method) == "wsum" and config.missing is MissingPolicy.ZERO
    assert config.normalization is Normalization.MINMAX


def test_registered_as_pool():
    from stagegraph.pipeline.registry import stage_class

    assert stage_class("pool") is CandidatePool


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "borda"}, "borda.* is not a valid FusionMethod"),
        ({"method": "rrf", "normalization": "minmax"}, "does not apply to rrf"),
        ({"method": "rrf", "missing": "min"}, "does not apply to rrf"),
        ({"method": "combsum", "rrf_k": 10}, "rrf_k applies to method rrf only"),
        ({"method": "combsum", "weights": [1, 2]}, "use method: wsum"),
        ({"method": "wsum"}, "wsum needs weights"),
        ({"method": "wsum", "weights": [1, -1]}, ">= 0"),
        ({"method": "wsum", "weights": [0, 0]}, "all 0"),
        ({"method": "wsum", "weights": []}, "empty"),
        ({"method": "combsum", "missing": "average"}, "missing"),
        ({"k": 0}, "k"),
    ],
)
def test_invalid_configs_are_rejected_with_a_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        CandidatePool(**kwargs)
    # the same one line a YAML entry gets: the stage type, the field, the fix; no pydantic URL
    assert str(caught.value).startswith("stage type 'pool' is invalid: ") and "pydantic" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_weights_are_checked_against_the_inputs_at_run_time():
    with pytest.raises(StageError, match="has 3 weights but 2 inputs"):
        fuse(CandidatePool("wsum", weights=[1, 2, 3]), A, B)
    pool = CandidatePool("wsum", weights={"bm25": 1, "splade": 2})
    with pytest.raises(StageError, match=r"unknown: \['splade'\].*no weight for: \['dense'\]"):
        fuse(pool, A, B, names=("bm25", "dense"))


def test_inputs_must_align_with_queries():
    with pytest.raises(StageError, match="input 1 has 2 rankings for 1 queries"):
        CandidatePool().run(Q, [[A], [B, B]])
    with pytest.raises(StageError, match="no inputs"):
        CandidatePool().run(Q, [])


def test_pool_order_equals_ranking_from_scores_on_tied_random_lists():
    # The pool sorts once itself; it must give exactly Ranking.from_scores's order (score desc, row asc).
    rng = np.random.default_rng(7)
    for trial in range(30):
        lists = [
            R(rng.choice(60, size=n, replace=False), rng.integers(0, 4, size=n).astype(np.float32))
            for n in rng.integers(0, 40, size=3)
        ]
        for settings in ({"method": "rrf"}, {"method": "combsum", "normalization": "none"}):
            whole = fuse(CandidatePool(**settings, k=1000), *lists)  # every pooled document, any order
            expected = Ranking.from_scores(whole.doc_rows, whole.scores, k=25)
            got = fuse(CandidatePool(**settings, k=25), *lists)
            assert got.doc_rows.tolist() == expected.doc_rows.tolist(), (trial, settings)
            np.testing.assert_array_equal(got.scores, expected.scores)
            union = np.unique(np.concatenate([r.doc_rows for r in lists]))
            assert sorted(whole.doc_rows.tolist()) == union.tolist()
