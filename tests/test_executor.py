"""Online and batch execution: per-stage timings, warm-up, parallel branches, cut-offs."""

import numpy as np
import pytest
from stubs import StubFuse, StubRerank, StubRetriever, StubSearch, tiny_corpus

from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError, StageError
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import StageBase


def _queries(n=12):
    return Queries([f"q{i}" for i in range(n)], [f"query text {i}" for i in range(n)])


def _graph(sleep_ms=0.0):
    a = StubRetriever("a", k=10, sleep_ms=sleep_ms)
    b = StubRetriever("b", k=10, seed=1, sleep_ms=sleep_ms)
    return (a | b) >> StubFuse("pool", k=8) >> StubRerank("rr", k=5) % 3


def test_online_and_batch_give_the_same_rankings():
    env = Environment(tiny_corpus(), progress=False)
    online = _graph().execute(_queries(), env=env, mode="online", warmup=2)
    batch = _graph().execute(_queries(), env=env, mode="batch")
    for name in ["a", "b", "pool", "rr"]:
        for x, y in zip(online.stages[name].rankings, batch.stages[name].rankings):
            np.testing.assert_array_equal(x.doc_rows, y.doc_rows)
            np.testing.assert_array_equal(x.scores, y.scores)
    assert all(len(r) == 3 for r in online.final)  # rr's k=5 then `% 3`


def test_online_times_every_stage_per_query_and_leaves_warmup_out():
    env = Environment(tiny_corpus(), progress=False)
    result = _graph().execute(_queries(12), env=env, mode="online", warmup=4)
    assert result.warmup_queries == 4
    for stage in result.stages.values():
        assert stage.latencies_ns.shape == (12,)
        assert (stage.latencies_ns > 0).all()
        summary = stage.latency
        assert summary.n == 12
        np.testing.assert_allclose(summary.p50, np.median(stage.latencies_ns) / 1e6)
    assert result.end_to_end.n == 12


def test_warm_up_runs_once_before_timing():
    graph = _graph()
    env = Environment(tiny_corpus(), progress=False)
    graph.execute(_queries(5), env=env, mode="online", warmup=2)
    retriever = graph.step("a").stage
    assert retriever.warmed == 1
    assert retriever.calls == 5 + 2  # measured queries plus warm-up queries


def test_parallel_branches_run_concurrently_in_online_mode():
    env = Environment(tiny_corpus(), progress=False)
    result = _graph(sleep_ms=20).execute(_queries(6), env=env, mode="online", warmup=0)
    branch_sum = result.stages["a"].latencies_ns + result.stages["b"].latencies_ns
    # Sequential branches would take a + b; concurrent ones take about max(a, b).
    assert np.median(result.end_to_end_ns) < 0.8 * np.median(branch_sum)


def test_batch_mode_reports_throughput_not_percentiles():
    env = Environment(tiny_corpus(), progress=False)
    result = _graph().execute(_queries(), env=env, mode="batch")
    for stage in result.stages.values():
        assert stage.latency is None
        assert stage.throughput_qps > 0
    assert result.end_to_end is None


class _BrokenConfig(StageConfig):
    pass


class _Broken(StageBase):
    type_name = "broken"
    Config = _BrokenConfig
    arity = Arity.NONE

    def __init__(self):
        self.config = _BrokenConfig(name="broken")

    def run(self, queries, inputs):
        return [Ranking.empty()]  # one ranking, whatever the batch size


def test_a_stage_returning_the_wrong_number_of_rankings_is_named():
    env = Environment(tiny_corpus(), progress=False)
    with pytest.raises(StageError, match="'broken' returned 1 rankings for 3 queries"):
        Pipeline(_Broken()).execute(_queries(3), env=env, mode="batch")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="online' or 'batch"):
        _graph().execute(_queries(2), env=Environment(tiny_corpus()), mode="fast")


class _Waiting(StubSearch):
    lock = __import__("threading").Lock()

    def run(self, queries, inputs):
        import time

        with self.lock:
            time.sleep(0.025)
        return super().run(queries, inputs)


class _SharedResource(StubRetriever):
    """A branch that needs a resource its neighbour also holds (a core, a GIL, a lock) for 25 ms."""

    def bind(self, env):
        return _Waiting(self, len(env.corpus))


def test_a_branch_slowed_by_its_neighbour_is_reported_as_run_and_alone():
    env = Environment(tiny_corpus(), progress=False)
    pipe = (_SharedResource("a") | _SharedResource("b", seed=1)) >> StubFuse("pool")
    result = pipe.execute(_queries(8), env=env, mode="online", timing="isolated")
    a, b = result.stages["a"], result.stages["b"]
    slower_as_run = np.maximum(a.latencies_ns, b.latencies_ns) / 1e6
    slower_alone = np.maximum(a.isolated_ns, b.isolated_ns) / 1e6
    # side by side, one branch waits for the other: ~50 ms as run; alone, each takes ~25 ms
    # (medians: on a loaded machine a thread may start so late that it finds the resource free)
    assert np.median(slower_as_run) >= 49, slower_as_run
    assert np.median(slower_alone) < np.median(slower_as_run) - 15, (slower_alone, slower_as_run)
    assert np.median(result.end_to_end_ns) / 1e6 >= 49  # end to end stays the concurrent run
    concurrent_only = pipe.execute(_queries(3), env=env, mode="online")
    assert concurrent_only.stages["a"].isolated_ns is None


def test_unknown_timing_is_refused():
    with pytest.raises(InputError, match="timing must be 'concurrent' or 'isolated'"):
        _graph().execute(_queries(2), env=Environment(tiny_corpus()), mode="online", timing="sequential")


def test_the_executor_alone_binds_each_stage_once_and_releases_it():
    from stagegraph.pipeline.executor import execute

    released = []

    class Closing(StubSearch):
        def close(self):
            released.append(self.stage.name)

    class Retriever(StubRetriever):
        def bind(self, env):
            self.warmed += 1
            return Closing(self, len(env.corpus))

    a, b = Retriever("a"), Retriever("b", seed=1)
    pipe = (a | b) >> StubFuse("pool")
    result = execute(pipe.steps, _queries(3), Environment(tiny_corpus(), progress=False), mode="online", warmup=1)
    assert len(result.final) == 3 and (a.warmed, b.warmed) == (1, 1) and (a.calls, b.calls) == (4, 4)
    assert sorted(released) == ["a", "b"]
