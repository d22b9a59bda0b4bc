"""Composition operators and build-time validation of graphs."""

import pytest
from stubs import StubFuse, StubRerank, StubRetriever

from stagegraph.pipeline.graph import Graph, GraphError, Step


def test_sequence_parallel_and_cutoff_flatten_into_steps():
    graph = Graph((StubRetriever("a") | StubRetriever("b")) >> StubFuse("pool") >> StubRerank("rr") % 3)
    assert graph.names == ["a", "b", "pool", "rr"]
    assert graph.step("pool").inputs == ("a", "b")
    assert graph.step("rr").inputs == ("pool",)
    assert graph.step("rr").cutoff == 3
    assert graph.output == "rr"
    assert [[s.name for s in lv] for lv in graph.levels()] == [["a", "b"], ["pool"], ["rr"]]


def test_fusing_stage_learns_its_input_names():
    pool = StubFuse("pool")
    Graph((StubRetriever("bm25") | StubRetriever("dense")) >> pool)
    assert pool.input_names == ("bm25", "dense")


def test_print_shows_a_tree_with_settings():
    text = str(Graph((StubRetriever("a", k=7) | StubRetriever("b")) >> StubFuse("pool")))
    lines = text.splitlines()
    assert lines[0] == "Graph"
    assert "pool [stub_fuse]" in lines[1]
    assert any("a [stub_retriever: k=7]" in line for line in lines)
    assert any(line.strip().startswith("└── b") for line in lines)


def test_duplicate_names_are_refused_with_the_fix():
    with pytest.raises(GraphError, match="two stages are named 'x'.*unique `name=`"):
        Graph((StubRetriever("x") | StubRetriever("x")) >> StubFuse("pool"))


def test_reranker_without_candidates_is_refused():
    with pytest.raises(GraphError, match="'rr'.*nothing is upstream.*retriever before it"):
        Graph(StubRerank("rr"))


def test_reranker_fed_two_branches_needs_a_pool():
    with pytest.raises(GraphError, match="takes one candidate list but gets 2.*CandidatePool"):
        Graph((StubRetriever("a") | StubRetriever("b")) >> StubRerank("rr"))


def test_fusing_stage_with_one_input_is_refused():
    with pytest.raises(GraphError, match="'pool'.*fuses several inputs but gets 1"):
        Graph(StubRetriever("a") >> StubFuse("pool"))


def test_retriever_fed_by_another_stage_is_refused():
    with pytest.raises(GraphError, match="'b'.*retriever and takes no input"):
        Graph(StubRetriever("a") >> StubRetriever("b"))


def test_graph_must_end_in_one_stage():
    with pytest.raises(GraphError, match="ends in 2 stages"):
        Graph(StubRetriever("a") | StubRetriever("b"))


def test_cycle_in_explicit_steps_is_refused():
    a, p, q = StubRetriever("a"), StubFuse("p"), StubFuse("q")
    steps = [Step("a", a, ()), Step("p", p, ("a", "q")), Step("q", q, ("a", "p"))]
    with pytest.raises(GraphError, match="cycle: .*p.*q|cycle: .*q.*p"):
        Graph(steps)


def test_unknown_input_name_is_refused():
    with pytest.raises(GraphError, match="reads from 'ghost'"):
        Graph([Step("a", StubRetriever("a"), ()), Step("r", StubRerank("r"), ("ghost",))])


def test_cutoff_must_be_positive_and_not_on_branches():
    with pytest.raises(ValueError, match="positive integer"):
        StubRetriever("a") % 0
    with pytest.raises(GraphError, match="not to parallel branches"):
        Graph(((StubRetriever("a") | StubRetriever("b")) % 5) >> StubFuse("p"))


def test_composing_a_non_stage_is_a_type_error():
    with pytest.raises(TypeError, match="cannot compose"):
        StubRetriever("a") >> 42
