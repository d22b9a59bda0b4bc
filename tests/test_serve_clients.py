"""The rerank endpoint answers the clients RAG stacks already hold, unchanged: the Cohere SDK's v1 and
v2 clients, LlamaIndex's Cohere and TEI rerankers, each pointed at a real server (uvicorn in a thread)
over a real collection of tiny models. Each test skips, with the reason, where its client is missing;
CI installs the `test` extra, which holds them all."""

from __future__ import annotations

import numpy as np
import pytest
from serve_support import ThreadServer, build_collection, post_json, rerank_config
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

from stagegraph.serve.app import create_app
from stagegraph.serve.rerank_compat import unit_scores
from stagegraph.serve.service import Service
from stagegraph.serve.settings import ServeSettings

QUERY = "protein cancer cell risk"
DOCS = ["protein cancer cell study", "heat flow wing", "cell cells protein gene risk", "shock wave air speed"]
KEY = "interop-test-key"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-clients")
    models = str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce", max_length=64))
    collection = build_collection(root / "c", rerank_config(*models), n=12)
    svc = Service.open(rerank_config(*models), collection, ServeSettings())
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service):
    with ThreadServer(create_app(service, api_key=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def raw(service):
    return np.asarray(service.reranker().predict([(QUERY, d) for d in DOCS]), dtype=np.float64)


def best_first(scores) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_cohere_v1_client(server, raw):
    cohere = pytest.importorskip("cohere", reason="the cohere SDK is not installed (pip install \"stagegraph[cohere]\")")
    client = cohere.Client(api_key=KEY, base_url=server.url)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == best_first(raw)[:3]
    assert [r.relevance_score for r in response.results] == pytest.approx([raw[i] for i in best_first(raw)[:3]], abs=1e-5)


def test_cohere_v2_client_gets_the_v2_shape_with_scores_in_0_1(server, service, raw):
    cohere = pytest.importorskip("cohere", reason="the cohere SDK is not installed (pip install \"stagegraph[cohere]\")")
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=2)
    unit = unit_scores(service.reranker(), raw)
    assert [r.index for r in response.results] == best_first(raw)[:2]
    assert [r.relevance_score for r in response.results] == pytest.approx([unit[i] for i in best_first(raw)[:2]], abs=1e-5)
    assert all(0.0 <= r.relevance_score <= 1.0 for r in response.results)
    assert response.id and response.meta.api_version.version == "2"
    everything = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert sorted(r.index for r in everything.results) == list(range(len(DOCS)))


def test_cohere_v2_client_sees_the_servers_refusals_as_its_own_errors(server):
    cohere = pytest.importorskip("cohere", reason="the cohere SDK is not installed")
    from cohere.core.api_error import ApiError

    with pytest.raises(ApiError) as refused:
        cohere.ClientV2(api_key="wrong", base_url=server.url).rerank(model="m", query=QUERY, documents=DOCS)
    assert refused.value.status_code == 401
    with pytest.raises(ApiError) as refused:
        cohere.ClientV2(api_key=KEY, base_url=server.url).rerank(model="m", query=" ", documents=DOCS)
    assert refused.value.status_code == 422 and refused.value.body["error"]["code"] == "empty_query"


def test_llamaindex_cohere_rerank_pointed_at_the_server(server, raw):
    pytest.importorskip("llama_index.postprocessor.cohere_rerank",
                        reason="llama-index-postprocessor-cohere-rerank is not installed")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    reranker = CohereRerank(api_key=KEY, base_url=server.url, top_n=2, model="rerank-v3.5")
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.0) for i, d in enumerate(DOCS)]
    out = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in best_first(raw)[:2]]


def test_tei_rerank_shape_and_llamaindex_tei_client(server, service, raw):
    headers = {"Authorization": f"Bearer {KEY}"}
    r = post_json(f"{server.url}/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True,
                                           "truncate": True, "truncation_direction": "Right"}, headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == best_first(raw)
    assert [x["score"] for x in body] == pytest.approx([raw[i] for i in best_first(raw)], abs=1e-5)
    assert [x["text"] for x in body] == [DOCS[i] for i in best_first(raw)]
    unit = unit_scores(service.reranker(), raw)
    default = post_json(f"{server.url}/rerank", {"query": QUERY, "texts": DOCS}, headers).json()
    assert [x["score"] for x in default] == pytest.approx([unit[i] for i in best_first(raw)], abs=1e-5)
    assert all(set(x) == {"index", "score"} for x in default)
    bad = post_json(f"{server.url}/rerank", {"query": QUERY, "texts": ["ok", "x" * 10**6]}, headers)
    assert bad.status_code in (413, 422)
    empty = post_json(f"{server.url}/rerank", {"query": QUERY, "texts": []}, headers)
    assert empty.status_code == 422 and empty.json()["error"] == {
        "code": "empty_documents", "message": "texts is empty; give the passages to rerank", "field": "texts"}

    pytest.importorskip("llama_index.postprocessor.tei_rerank", reason="llama-index-postprocessor-tei-rerank is not installed")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    reranker = TextEmbeddingInference(base_url=server.url, top_n=3, auth_token=f"Bearer {KEY}")
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.0) for i, d in enumerate(DOCS)]
    out = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in best_first(raw)[:3]]
    assert [n.score for n in out] == pytest.approx([unit[i] for i in best_first(raw)[:3]], abs=1e-5)


def test_unit_scores_take_the_logistic_of_a_logit_and_keep_a_sigmoids_output():
    import torch

    class Scorer:
        def __init__(self, activation):
            self.activation = activation

    class Scoring:
        def __init__(self, activation):
            self.scorer = Scorer(activation)

    class Bound:
        def __init__(self, activation):
            self.scoring = Scoring(activation)

    logits = np.array([-2.0, 0.0, 3.0])
    assert unit_scores(Bound(torch.nn.Identity()), logits) == pytest.approx(1 / (1 + np.exp(-logits)))
    assert unit_scores(Bound(torch.nn.Sigmoid()), np.array([0.1, 0.9])) == pytest.approx([0.1, 0.9])
