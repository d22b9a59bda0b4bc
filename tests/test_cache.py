"""The content-addressed stage cache: reuse, invalidation and honest reporting of hits."""

import numpy as np
from stubs import StubFuse, StubRerank, StubRetriever, tiny_corpus

from stagegraph.corpora.types import Queries
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.ranking import Ranking, StepTrace
from stagegraph.pipeline.stage import Environment

QUERIES = Queries([f"q{i}" for i in range(8)], [f"text {i}" for i in range(8)])


def _graph(rerank_flip=False, seed_b=1):
    a, b = StubRetriever("a"), StubRetriever("b", seed=seed_b)
    pool, rr = StubFuse("pool"), StubRerank("rr", flip=rerank_flip)
    return (a | b) >> pool >> rr, (a, b, pool, rr)


def test_changing_only_the_last_stage_reruns_only_that_stage(tmp_path):
    env, cache = Environment(tiny_corpus(), progress=False), StageCache(tmp_path)
    _graph()[0].execute(QUERIES, env=env, mode="online", cache=cache, warmup=0)
    graph, (a, b, pool, rr) = _graph(rerank_flip=True)
    result = graph.execute(QUERIES, env=env, mode="online", cache=cache, warmup=0)
    assert (a.calls, b.calls, pool.calls) == (0, 0, 0)
    assert a.warmed == 0  # a cached stage is not even loaded
    assert rr.calls == len(QUERIES)
    assert [s.cache_hit for s in result.stages.values()] == [True, True, True, False]


def test_a_hit_is_reported_and_never_counted_as_latency(tmp_path):
    env, cache = Environment(tiny_corpus(), progress=False), StageCache(tmp_path)
    first = _graph()[0].execute(QUERIES, env=env, mode="online", cache=cache, warmup=0)
    second = _graph()[0].execute(QUERIES, env=env, mode="online", cache=cache, warmup=0)
    for name, stage in second.stages.items():
        assert stage.cache_hit and stage.latency is None and stage.wall_ns == 0
        for x, y in zip(stage.rankings, first.stages[name].rankings):
            np.testing.assert_array_equal(x.doc_rows, y.doc_rows)
            np.testing.assert_array_equal(x.scores, y.scores)


def test_a_changed_upstream_stage_never_serves_a_stale_result(tmp_path):
    env, cache = Environment(tiny_corpus(), progress=False), StageCache(tmp_path)
    _graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)
    graph, (a, b, pool, rr) = _graph(seed_b=2)
    result = graph.execute(QUERIES, env=env, mode="batch", cache=cache)
    assert a.calls == 0 and b.calls == 1 and pool.calls == 1 and rr.calls == 1
    fresh = _graph(seed_b=2)[0].execute(QUERIES, env=env, mode="batch")
    for x, y in zip(result.final, fresh.final):
        np.testing.assert_array_equal(x.doc_rows, y.doc_rows)


def test_other_queries_or_corpus_are_other_keys(tmp_path):
    cache = StageCache(tmp_path)
    _graph()[0].execute(QUERIES, env=Environment(tiny_corpus(), progress=False), mode="batch", cache=cache)
    graph, (a, *_rest) = _graph()
    graph.execute(QUERIES.select([0, 1]), env=Environment(tiny_corpus(), progress=False), mode="batch", cache=cache)
    assert a.calls == 1
    graph, (a, *_rest) = _graph()
    graph.execute(QUERIES, env=Environment(tiny_corpus(40), progress=False), mode="batch", cache=cache)
    assert a.calls == 1


def test_provenance_round_trips_and_a_damaged_entry_is_a_miss(tmp_path):
    cache = StageCache(tmp_path)
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    rankings = [
        Ranking(np.array([3, 1]), f32(2.0, 1.0), {
            "bm25": StepTrace(f32(5.0, np.nan), f32(1, np.nan)),
            "rr": StepTrace(f32(2.0, 1.0), f32(1, 2), model_score=f32(0.9, 0.1), blended_with=f32(5.0, 4.0)),
        }),
        Ranking.empty(),
    ]
    cache.save("ab" * 32, rankings)
    back = cache.load("ab" * 32)
    np.testing.assert_array_equal(back[0].doc_rows, [3, 1])
    np.testing.assert_array_equal(back[0].provenance["bm25"].score, [5.0, np.nan])
    assert back[0].provenance["bm25"].model_score is None
    np.testing.assert_array_equal(back[0].provenance["rr"].model_score, f32(0.9, 0.1))
    np.testing.assert_array_equal(back[0].provenance["rr"].blended_with, [5.0, 4.0])
    assert len(back[1]) == 0
    path = next(tmp_path.rglob("*.npz"))
    path.write_bytes(b"not a zip file")
    assert cache.load("ab" * 32) is None and not path.exists()


def _hits(result):
    return {name: run.cache_hit for name, run in result.stages.items()}


def test_a_new_code_version_of_a_stage_invalidates_it_and_what_is_downstream(tmp_path, monkeypatch):
    env, cache = Environment(tiny_corpus(), progress=False), StageCache(tmp_path)
    _graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)
    monkeypatch.setattr(StubFuse, "version", StubFuse.version + 1)
    result = _graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)
    assert _hits(result) == {"a": True, "b": True, "pool": False, "rr": False}


def test_a_new_release_of_a_library_a_stage_depends_on_invalidates_it(tmp_path, monkeypatch):
    import stagegraph.stages.base as base

    env, cache = Environment(tiny_corpus(), progress=False), StageCache(tmp_path)
    monkeypatch.setattr(StubRerank, "libraries", ("numpy",))
    _graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)
    assert all(_hits(_graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)).values())
    real = base.library_versions
    monkeypatch.setattr(base, "library_versions", lambda names: {**real(names), **({"numpy": "99.0"} if "numpy" in names else {})})
    result = _graph()[0].execute(QUERIES, env=env, mode="batch", cache=cache)
    assert _hits(result) == {"a": True, "b": True, "pool": True, "rr": False}
