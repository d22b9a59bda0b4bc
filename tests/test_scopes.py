"""Composition keeps what it is given: a nested pipeline's filter, name and executor survive.

A tenant filter that silently disappears when a pipeline is composed into another is a security
bug, so each path a filter can take is run with real BM25 over documents of two tenants: Python
composition, nesting twice, wrapping, YAML, and the HTTP server.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import build_collection
from stubs import StubRerank

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import PipelineError
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.fusion.pool import CandidatePool
from stagegraph.stages.retrieve.bm25 import BM25Retriever

WORDS = "cell protein cancer gene wing shock pressure flow".split()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Environment:
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=8)) for _ in range(60)]
    metadata = [{"tenant": "a" if i % 3 == 0 else "b", "year": 2019 + i % 7} for i in range(60)]
    corpus = Corpus([f"d{i}" for i in range(60)], [""] * 60, texts, metadata=metadata)
    return Environment(corpus, work_dir=tmp_path_factory.mktemp("w"), progress=False)


def tenants(env: Environment, rankings) -> set[str]:
    return {env.corpus.metadata[int(r)]["tenant"] for ranking in rankings for r in ranking.doc_rows}


QUERIES = Queries(["q1", "q2", "q3"], ["cell protein", "wing shock", "cancer flow gene"])


def test_a_nested_pipelines_filter_survives_composition(env):
    inner = Pipeline(BM25Retriever(k=20), filter={"tenant": "a"}, name="tenant_a")
    composed = inner >> StubRerank("r", k=5)
    assert composed.step("bm25").filter == {"tenant": "a"} and composed.step("bm25").scope == "tenant_a"
    result = composed.execute(QUERIES, env=env, mode="batch")
    assert tenants(env, result.stages["bm25"].rankings) == {"a"}
    assert tenants(env, result.final) == {"a"}
    # without the scope the same retriever returns both tenants: the filter is what excludes b
    assert tenants(env, Pipeline(BM25Retriever(k=20)).execute(QUERIES, env=env, mode="batch").final) == {"a", "b"}


def test_nested_filters_and_the_query_filter_are_all_applied(env):
    inner = Pipeline(BM25Retriever(k=20), filter={"tenant": "a"})
    outer = Pipeline(inner >> StubRerank("r", k=5), filter={"year": {"$gte": 2022}})
    queries = QUERIES.with_filter({"year": {"$lte": 2023}})
    final = outer.execute(queries, env=env, mode="online").final
    years = {env.corpus.metadata[int(r)]["year"] for ranking in final for r in ranking.doc_rows}
    assert tenants(env, final) == {"a"} and years <= {2022, 2023} and years


def test_wrapping_a_filtered_pipeline_ands_the_filters_never_replaces_them(env):
    inner = Pipeline(BM25Retriever(k=20), filter={"tenant": "a"})
    wrapped = Pipeline(inner, filter={"year": 2025})
    assert wrapped.filter == {"$and": [{"tenant": "a"}, {"year": 2025}]}
    final = wrapped.execute(QUERIES, env=env, mode="batch").final
    rows = [int(r) for ranking in final for r in ranking.doc_rows]
    assert rows and all(env.corpus.metadata[r] == {"tenant": "a", "year": 2025} for r in rows)


def test_branches_keep_their_own_filters_beside_each_other(env):
    a = Pipeline(BM25Retriever(k=10, name="a"), filter={"tenant": "a"})
    b = Pipeline(BM25Retriever(k=10, name="b"), filter={"tenant": "b"})
    result = ((a | b) >> CandidatePool(k=20)).execute(QUERIES, env=env, mode="online")
    assert tenants(env, result.stages["a"].rankings) == {"a"} and tenants(env, result.stages["b"].rankings) == {"b"}


def test_scopes_round_trip_through_yaml_and_count_in_the_fingerprint(env):
    composed = Pipeline(BM25Retriever(k=20), filter={"tenant": "a"}, name="tenant_a") >> StubRerank("r", k=5)
    config = composed.to_config()
    assert config["pipeline"][0] == {"pipeline": [BM25Retriever(k=20).to_config()], "filter": {"tenant": "a"},
                                     "name": "tenant_a"}
    from stubs import register_stubs

    register_stubs()
    back = Pipeline.from_yaml(composed.to_yaml())
    assert back.step("bm25").filter == {"tenant": "a"} and back.fingerprint() == composed.fingerprint()
    assert tenants(env, back.execute(QUERIES, env=env, mode="batch").final) == {"a"}
    unfiltered = Pipeline(BM25Retriever(k=20)) >> StubRerank("r", k=5)
    assert unfiltered.fingerprint() != composed.fingerprint()  # a cached unfiltered ranking is never served
    assert "filter={'tenant': 'a'}" in str(composed)


def test_a_nested_filter_that_cannot_apply_is_refused_when_bound(env):
    from stagegraph.corpora.filters import FilterError

    composed = Pipeline(BM25Retriever(k=20), filter={"colour": "red"}) >> StubRerank("r", k=5)
    with pytest.raises(FilterError, match="colour"):
        composed.bind(env)


def test_a_nested_executor_travels_and_two_different_ones_are_refused():
    ray = Pipeline(BM25Retriever(), executor="ray")
    assert (ray >> StubRerank("r")).executor.type == "ray"
    other = Pipeline(BM25Retriever(name="b2"), executor={"type": "ray", "address": "127.0.0.1:1"})
    with pytest.raises(PipelineError, match=r"different executors .*give the composition one: Pipeline\(a >> b, executor=\.\.\.\)"):
        (ray | other) >> CandidatePool()


def test_the_server_applies_a_nested_filter_from_its_config(tmp_path):
    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import ServeSettings

    config = {"pipeline": [{"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}], "filter": {"kind": "even"},
                            "name": "evens"}]}
    root = build_collection(tmp_path / "c", config)
    service = Service.open(config, root, ServeSettings(), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            answer = client.post("/v1/search", json={"query": "protein cancer cell", "k": 10})
            assert answer.status_code == 200
            hits = answer.json()["hits"]
            assert hits and all(h["metadata"]["kind"] == "even" for h in hits)
            both = client.post("/v1/search", json={"query": "protein cancer cell", "k": 10, "filter": {"kind": "odd"}})
            assert both.status_code == 200 and both.json()["hits"] == []  # even and odd: nothing, never the odd ones
    finally:
        service.close()
