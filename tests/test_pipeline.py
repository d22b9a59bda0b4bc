"""`Pipeline`: composition closed under itself, checked at the operator, printable, YAML, runnable,
searchable with typed provenance."""

import threading

import numpy as np
import pytest
from stubs import StubFuse, StubRerank, StubRetriever, StubSearch, register_stubs, tiny_corpus

from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError, StageError
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import PipelineError, Step
from stagegraph.pipeline.hits import SearchResult
from stagegraph.pipeline.stage import Arity, Environment
from stagegraph.stages.fusion import CandidatePool

register_stubs()


def hybrid():
    return (StubRetriever("a", k=10) | StubRetriever("b", k=10, seed=1)) >> StubFuse("pool", k=8) >> StubRerank("rr", k=5) % 3


# -- composition ----------------------------------------------------------------------------------
def test_every_operator_returns_a_pipeline_with_its_steps():
    pipe = hybrid()
    assert isinstance(pipe, Pipeline)
    assert pipe.names == ["a", "b", "pool", "rr"]
    assert pipe.step("pool").inputs == ("a", "b")
    assert pipe.step("rr").inputs == ("pool",) and pipe.step("rr").cutoff == 3
    assert pipe.output == "rr" and pipe.complete and pipe.arity is Arity.NONE
    assert [[s.name for s in lv] for lv in pipe.levels()] == [["a", "b"], ["pool"], ["rr"]]
    assert isinstance(StubRetriever("x") % 4, Pipeline)


def test_a_pipeline_nests_inside_another_composition():
    rerank_twice = StubRerank("r1", k=6) >> StubRerank("r2", k=4)  # a piece that still needs candidates
    assert isinstance(rerank_twice, Pipeline) and not rerank_twice.complete and rerank_twice.arity is Arity.ONE
    branch = StubRetriever("a", k=10) >> rerank_twice
    outer = (branch | StubRetriever("b", k=10)) >> StubFuse("pool")
    assert outer.names == ["a", "r1", "r2", "b", "pool"]
    assert outer.step("r1").inputs == ("a",) and outer.step("pool").inputs == ("r2", "b")
    env = Environment(tiny_corpus(), progress=False)
    result = outer.execute(Queries.single("x"), env=env, mode="batch")
    assert len(result.stages["r2"].rankings[0]) == 4


def test_the_same_stage_object_in_two_pipelines_keeps_each_pipelines_inputs():
    shared = CandidatePool("wsum", weights={"a": 1.0, "b": 0.0}, k=10, name="pool")
    first = (StubRetriever("a", k=10) | StubRetriever("b", k=10, seed=1)) >> shared
    second = (StubRetriever("b", k=10, seed=1) | StubRetriever("a", k=10)) >> shared  # other input order
    env = Environment(tiny_corpus(), progress=False)
    q = Queries.single("x")
    one, two = first.execute(q, env=env, mode="batch"), second.execute(q, env=env, mode="batch")
    # weights are by branch name, so the pool follows "a" in both, whatever the order of its inputs
    np.testing.assert_array_equal(one.final[0].doc_rows, two.final[0].doc_rows)
    np.testing.assert_array_equal(one.final[0].doc_rows[:9], one.stages["a"].rankings[0].doc_rows[:9])
    assert one.stages["a"].rankings[0].doc_rows[0] != one.stages["b"].rankings[0].doc_rows[0]
    assert first.step("pool").inputs == ("a", "b") and second.step("pool").inputs == ("b", "a")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: (StubRetriever("x") | StubRetriever("x")), "two stages are named 'x'.*unique `name=`"),
        (lambda: StubRetriever("a") >> StubFuse("pool"), "'pool'.*fuses several inputs but gets one"),
        (lambda: (StubRetriever("a") | StubRetriever("b")) >> StubRerank("rr"), "takes one candidate list but gets 2.*CandidatePool"),
        (lambda: StubRetriever("a") >> StubRetriever("b"), "'b'.*retriever and takes no input"),
        (lambda: StubRerank("rr") | StubRetriever("b"), "rr need candidates.*beside the retriever"),
        (lambda: ((StubRetriever("a") | StubRetriever("b")) % 5), "not to parallel branches"),
    ],
)
def test_a_bad_composition_fails_at_the_operator_that_built_it(build, message):
    with pytest.raises(PipelineError, match=message):
        build()


def test_a_piece_is_an_error_to_run_and_says_what_it_lacks():
    env = Environment(tiny_corpus(), progress=False)
    with pytest.raises(PipelineError, match="'rr'.*nothing is upstream.*retriever before it"):
        Pipeline(StubRerank("rr")).execute(Queries.single("x"), env=env)
    with pytest.raises(PipelineError, match="ends in 2 stages"):
        (StubRetriever("a") | StubRetriever("b")).warm_up(env)


def test_cycle_and_unknown_inputs_in_explicit_steps_are_refused():
    a, p, q = StubRetriever("a"), StubFuse("p"), StubFuse("q")
    with pytest.raises(PipelineError, match="cycle: .*p.*q|cycle: .*q.*p"):
        Pipeline([Step("a", a, ()), Step("p", p, ("a", "q")), Step("q", q, ("a", "p"))])
    with pytest.raises(PipelineError, match="reads from 'ghost'"):
        Pipeline([Step("a", StubRetriever("a"), ()), Step("r", StubRerank("r"), ("ghost",))])


def test_composing_a_non_stage_is_a_type_error_and_cutoff_must_be_positive():
    with pytest.raises(TypeError, match="cannot compose"):
        StubRetriever("a") >> 42
    with pytest.raises(PipelineError, match="positive integer"):
        StubRetriever("a") % 0


def test_print_shows_the_tree_with_settings():
    lines = str((StubRetriever("a", k=7) | StubRetriever("b")) >> StubFuse("pool")).splitlines()
    assert lines[0] == "Pipeline"
    assert lines[1] == "└── pool [stub_fuse: k=10]"  # k is always shown, default or not
    assert "    ├── a [stub_retriever: k=7]" in lines and "    └── b [stub_retriever: k=10]" in lines
    changed = str(StubRetriever("a", seed=3) >> StubRerank("r", flip=True)).splitlines()
    assert changed[1:] == ["└── r [stub_rerank: k=5, flip=True]", "    └── a [stub_retriever: k=10, seed=3]"]


# -- YAML -----------------------------------------------------------------------------------------
def test_yaml_round_trip_gives_the_same_pipeline():
    pipe = hybrid()
    text = pipe.to_yaml()
    back = Pipeline.from_yaml(text)
    assert back.names == pipe.names
    assert [s.inputs for s in back.steps] == [s.inputs for s in pipe.steps]
    assert [s.cutoff for s in back.steps] == [s.cutoff for s in pipe.steps]
    assert back.fingerprint() == pipe.fingerprint()
    assert Pipeline.from_yaml(back.to_yaml()).to_yaml() == text


def test_from_yaml_reads_a_bundled_config_by_name():
    pipe = Pipeline.from_yaml("hybrid-rerank")
    assert pipe.names == ["bm25", "dense", "pool", "rerank"]


# -- using it -------------------------------------------------------------------------------------
def test_search_returns_hits_with_each_stages_rank_and_score_and_timings():
    corpus = tiny_corpus()
    pipe = hybrid().warm_up(corpus, progress=False)
    result = pipe.search("some query", k=2)
    assert isinstance(result, SearchResult) and len(result.hits) == 2
    assert set(result.timings_ms) == {"a", "b", "pool", "rr"} and result.total_ms > 0
    batch = pipe.execute(Queries.single("some query"), mode="batch")
    final = batch.final[0]
    for i, hit in enumerate(result.hits):
        row = int(final.doc_rows[i])
        assert (hit.id, hit.rank, hit.title) == (corpus.ids[row], i + 1, corpus.titles[row])
        assert hit.score == pytest.approx(float(final.scores[i]))
        for step in ["a", "b", "pool"]:
            ranking = batch.stages[step].rankings[0]
            where = np.flatnonzero(ranking.doc_rows == row)
            got = hit.stages[step]
            if len(where):
                assert got.rank == int(where[0]) + 1 and got.score == pytest.approx(float(ranking.scores[where[0]]))
            else:
                assert got.rank is None and got.score is None
    assert result.hits[0].as_candidate()["text"] == result.hits[0].text


def test_run_is_the_stage_contract_and_search_needs_warm_up_and_a_query():
    pipe = hybrid()
    with pytest.raises(InputError, match="not bound to documents.*pipe.bind"):
        pipe.search("x")
    pipe.warm_up(tiny_corpus(), progress=False)
    rankings = pipe.run(["first", "second"])
    assert len(rankings) == 2 and all(len(r) == 3 for r in rankings)
    with pytest.raises(InputError, match="query is empty"):
        pipe.search("   ")
    with pytest.raises(InputError, match="k must be a positive"):
        pipe.search("x", k=0)


def test_concurrent_searches_from_many_threads_agree_with_a_single_thread():
    pipe = hybrid().warm_up(tiny_corpus(), progress=False)
    expected = {q: [h.id for h in pipe.search(q).hits] for q in ("alpha", "beta", "gamma")}
    errors, seen = [], []

    def worker(q):
        try:
            for _ in range(20):
                seen.append((q, [h.id for h in pipe.search(q).hits]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(q,)) for q in expected for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 9 * 20 and all(ids == expected[q] for q, ids in seen)
    pipe.close()


def test_a_stage_raising_inside_the_online_thread_pool_is_named():
    class Boom(StubSearch):
        def run(self, queries, inputs):
            raise ZeroDivisionError("boom")

    class Exploding(StubRetriever):
        def bind(self, env):
            return Boom(self, len(env.corpus))

    pipe = (StubRetriever("a") | Exploding("b")) >> StubFuse("pool")
    env = Environment(tiny_corpus(), progress=False)
    with pytest.raises(StageError, match=r"stage 'b' \(Exploding\) failed: ZeroDivisionError: boom"):
        pipe.execute(Queries.single("x"), env=env, mode="online")
