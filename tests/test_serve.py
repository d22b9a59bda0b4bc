"""`stagegraph serve` in process: every endpoint, every bad request, auth, limits, deadlines, batching.

A real collection of tiny models (BM25 | dense -> pool -> cross-encoder) is served by the real app,
through FastAPI's test client, and by uvicorn in a thread where a test must hold a worker (a gate
around the real search) to fill the queue, pass a deadline or walk away from a request.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import ThreadServer, build_collection, rerank_config
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

from stagegraph.collection import Collection
from stagegraph.pipeline.hits import Hit, StageScore
from stagegraph.serve.app import create_app
from stagegraph.serve.batching import BatchingScorer
from stagegraph.serve.models import HitOut
from stagegraph.serve.runtime import Slots
from stagegraph.serve.service import Service
from stagegraph.serve.settings import Batching, Limits, ServeSettings

QUERY = "protein cancer cell risk"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    return str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce", max_length=64))


@pytest.fixture(scope="module")
def collection(tmp_path_factory, models):
    return build_collection(tmp_path_factory.mktemp("serve") / "c", rerank_config(*models))


@pytest.fixture(scope="module")
def service(collection, models):
    svc = Service.open(rerank_config(*models), collection,
                       ServeSettings(limits=Limits(max_k=50), batching=Batching(enabled=True)))
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def timings(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, dur = part.strip().split(";dur=")
        out[name] = float(dur)
    return out


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels are exactly `labels` (0 when absent)."""
    for line in metrics_text.splitlines():
        found = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not found or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if have == labels:
            return float(found.group(3))
    return 0.0


# -- the endpoints --------------------------------------------------------------------------------
def test_search_answers_as_the_stack_does_with_stage_timings_and_server_timing(client, service):
    r = client.post("/v1/search", json={"query": QUERY, "k": 3, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = service.stack.search(QUERY, k=3)
    assert [h["id"] for h in body["hits"]] == [h.id for h in direct.hits]
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    assert body["generation"] == service.stack.generation == Collection.open(service.stack.collection.layout.root).generation.number
    hit = body["hits"][0]
    assert hit["text"] and hit["doc_id"] and hit["id"].startswith(hit["doc_id"] + "#") and "n" in hit["metadata"]
    assert set(hit["stages"]) == {"bm25", "dense", "pool", "rerank"} and hit["stages"]["rerank"]["rank"] == 1
    assert hit["cross_encoder_score"] is not None
    assert set(body["timings_ms"]) == {"bm25", "dense", "pool", "rerank"}
    header = timings(r.headers["server-timing"])
    assert set(header) == {"queue", "bm25", "dense", "pool", "rerank", "compute", "total"}
    assert header["total"] >= header["compute"] >= header["rerank"] > 0
    assert r.headers["x-request-id"]


def test_search_without_explain_has_no_stage_ranks_and_a_filter_restricts_hits(client):
    r = client.post("/v1/search", json={"query": QUERY, "k": 5, "filter": {"kind": "even", "n": {"$lt": 20}}})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert hits and all("stages" not in h for h in hits)
    assert all(h["metadata"]["kind"] == "even" and h["metadata"]["n"] < 20 for h in hits)


def rounded(value):
    """JSON-like `value` with every float to 5 significant digits (scores from two runs of a model)."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_a_hit_is_sent_as_the_librarys_record_every_field_and_stages_only_with_explain(client, service):
    direct = service.stack.search(QUERY, k=3).hits
    for explain in (True, False):
        sent = client.post("/v1/search", json={"query": QUERY, "k": 3, "explain": explain}).json()["hits"]
        record = [h.model_dump(mode="json", exclude_none=True, exclude=None if explain else {"stages"}) for h in direct]
        assert [sorted(h) for h in sent] == [sorted(h) for h in record]  # the same fields: none lost, none added
        assert rounded(sent) == rounded(record)


def test_the_wire_hit_carries_every_field_of_the_library_hit():
    """A Hit with every field set goes on the wire unchanged. Adding a field to Hit fails the first
    assert until the sample sets it, and then the second until the wire carries it."""
    hit = Hit(id="d1#0", doc_id="d1", rank=1, score=2.5, title="T", text="heat flow", metadata={"ext": "md"},
              stages={"bm25": StageScore(rank=3, score=7.25)}, cross_encoder_score=0.75)
    assert hit.model_fields_set == set(Hit.model_fields)
    assert HitOut.of(hit, explain=True).model_dump() == hit.model_dump()
    assert HitOut.of(hit, explain=False).model_dump() == {**hit.model_dump(), "stages": None}
    assert set(HitOut.model_fields) == set(Hit.model_fields)


def test_batch_search_gives_one_result_per_query_like_single_searches(client):
    queries = [QUERY, "heat flow wing pressure", "dense vector rank fusion"]
    r = client.post("/v1/search/batch", json={"queries": queries, "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["query"] for x in results] == queries
    for q, result in zip(queries, results):
        single = client.post("/v1/search", json={"query": q, "k": 4}).json()
        assert [h["doc_id"] for h in result["hits"]] == [h["doc_id"] for h in single["hits"]]
    assert "server-timing" in r.headers


def test_rerank_has_the_cohere_shape_and_the_pipelines_scores(client, service):
    docs = ["protein cancer cell study", {"text": "heat flow wing", "source": "b.md"}, "cell cells protein gene risk"]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "return_documents": True, "model": "rerank-v3"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = service.reranker().predict([(QUERY, d if isinstance(d, str) else d["text"]) for d in docs])
    assert sorted(x["index"] for x in body["results"]) == [0, 1, 2]
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(float(expected[x["index"]]), abs=1e-5)
        assert x["document"] == (docs[x["index"]] if isinstance(docs[x["index"]], dict) else {"text": docs[x["index"]]})
    assert body["model"] == service.reranker().model_name and body["id"] == r.headers["x-request-id"]
    assert set(timings(r.headers["server-timing"])) == {"queue", "rerank", "compute", "total"}
    top = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "top_n": 1}).json()["results"]
    assert len(top) == 1 and "document" not in top[0] and top[0]["index"] == body["results"][0]["index"]


def test_documents_put_get_delete_durable_and_searchable(tmp_path, models):
    root = build_collection(tmp_path / "c", rerank_config(*models), n=12)
    svc = Service.open(rerank_config(*models), root, ServeSettings(), pin_threads=False)
    try:
        with TestClient(create_app(svc)) as c:
            before = svc.stack.generation
            new = {"id": "notes/new.md", "title": "marker", "text": "marker protein cancer marker", "metadata": {"n": 99}}
            r = c.put("/v1/documents?wait=true", json={"documents": [new]})
            assert r.status_code == 200, r.text
            assert r.json() == {"generation": before + 1, "published": True, "searchable": True, "added": 1,
                                "updated": 0, "unchanged": 0, "deleted": 0}
            only_new = {"query": "marker", "k": 5, "filter": {"n": 99}}
            hits = c.post("/v1/search", json=only_new).json()
            assert hits["generation"] == before + 1 and [h["doc_id"] for h in hits["hits"]] == ["notes/new.md"]
            got = c.get("/v1/documents/notes/new.md").json()
            assert got["title"] == "marker" and got["metadata"]["n"] == 99 and got["chunks"][0]["text"] == new["text"]
            # the same again changes nothing; without wait the answer comes once durable
            again = c.put("/v1/documents", json={"documents": [new]}).json()
            assert again["published"] is False and again["unchanged"] == 1 and again["generation"] == before + 1
            changed = c.put("/v1/documents", json={"documents": [{**new, "text": "marker heat flow"}]}).json()
            assert changed["updated"] == 1 and changed["generation"] == before + 2
            with Collection.open(root) as other:  # durable: another reader sees it at once
                assert other.generation.number == before + 2 and other.generation.document("notes/new.md") is not None
            r = c.delete("/v1/documents/notes/new.md?wait=true")
            assert r.status_code == 200 and r.json()["deleted"] == 1
            assert c.get("/v1/documents/notes/new.md").status_code == 404
            assert c.post("/v1/search", json=only_new).json()["hits"] == []
            missing = c.delete("/v1/documents/notes/new.md")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    finally:
        svc.close()


def test_operations_endpoints(client, service):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "generation": service.stack.generation}
    info = client.get("/v1/info").json()
    assert [s["name"] for s in info["stages"]] == ["bm25", "dense", "pool", "rerank"]
    assert info["stages"][3]["model"] == service.reranker().model_name and info["stages"][3]["fingerprint"]
    assert info["collection"]["generation"] == service.stack.generation and info["collection"]["documents"] == 40
    assert "/" not in info["collection"]["name"] and info["versions"]["fastapi"] and info["versions"]["stagegraph"]
    import torch

    from stagegraph.pipeline.threads import usable_cores

    assert info["workers"] * info["threads_per_worker"] <= usable_cores()  # never more threads than cores
    assert torch.get_num_threads() == info["threads_per_worker"]  # pinned for the process
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/search/batch", "/v1/rerank", "/v1/documents", "/v1/documents/{doc_id}", "/healthz",
            "/readyz", "/metrics", "/v1/info"} <= set(paths)


def _page_urls(page: str) -> list[str]:
    """Every URL a page loads or links: src= and href= attributes, and the url: of Swagger UI's init."""
    return re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)


def test_docs_is_swagger_ui_from_this_server_not_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "cdn" not in page.text.lower()
    urls = _page_urls(page.text)
    assert {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/openapi.json"} <= set(urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # on this server, never elsewhere
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 100, url
    assert client.get("/docs/static/swagger-ui-bundle.js").headers["content-type"].startswith(
        ("application/javascript", "text/javascript"))
    assert "/docs/static" not in str(client.get("/openapi.json").json()["paths"])  # the assets are not API routes


def test_without_swagger_uis_files_docs_links_the_schema_and_says_what_to_install(service, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # `import fastapi_offline` fails: not installed
    with TestClient(create_app(service)) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "SwaggerUIBundle" not in page.text
        assert "stagegraph[serve]" in page.text and "fastapi-offline" in page.text and "Serving over HTTP" in page.text
        urls = _page_urls(page.text)
        assert urls == ["/openapi.json"], urls
        assert c.get(urls[0]).json()["openapi"].startswith("3.")
        assert c.get("/docs/static/swagger-ui.css").status_code == 404


def test_metrics_count_requests_stages_and_pairs(client, service):
    before = client.get("/metrics").text
    pairs = counter(before, "stagegraph_rerank_pairs_total")
    ok = counter(before, "stagegraph_requests_total", route="/v1/search", method="POST", status="200")
    for _ in range(3):
        assert client.post("/v1/search", json={"query": QUERY, "k": 2}).status_code == 200
    client.post("/v1/search", json={"query": ""})
    client.post("/v1/rerank", json={"query": QUERY, "documents": ["a", "b", "c", "d"]})
    after = client.get("/metrics").text
    assert counter(after, "stagegraph_requests_total", route="/v1/search", method="POST", status="200") == ok + 3
    assert counter(after, "stagegraph_requests_total", route="/v1/search", method="POST", status="422") >= 1
    assert counter(after, "stagegraph_rerank_pairs_total") == pairs + 3 * 10 + 4  # depth 10 per search, 4 documents
    assert counter(after, "stagegraph_stage_duration_seconds_count", stage="dense") >= 3
    for name in ("stagegraph_request_duration_seconds_bucket", "stagegraph_queue_wait_seconds_bucket",
                 "stagegraph_queue_depth", "stagegraph_in_flight_requests", "stagegraph_rejected_total",
                 "stagegraph_rerank_batch_requests_bucket", "stagegraph_generation"):
        assert name in after


# -- bad requests ---------------------------------------------------------------------------------
BAD = [
    ("/v1/search", b'{"query": "x", "k": ', 400, "invalid_json", None),
    ("/v1/search", b"[1, 2]", 422, "invalid_body", None),
    ("/v1/search", json.dumps({"query": 7}), 422, "invalid_type", "query"),
    ("/v1/search", json.dumps({"query": "x", "k": "10"}), 422, "invalid_type", "k"),
    ("/v1/search", json.dumps({"query": "x", "explain": "yes"}), 422, "invalid_type", "explain"),
    ("/v1/search", json.dumps({"query": "x", "top": 3}), 422, "unknown_field", "top"),
    ("/v1/search", json.dumps({"k": 3}), 422, "missing_field", "query"),
    ("/v1/search", json.dumps({"query": ""}), 422, "empty_query", "query"),
    ("/v1/search", json.dumps({"query": "   "}), 422, "empty_query", "query"),
    ("/v1/search", json.dumps({"query": "x" * 2049}), 422, "query_too_long", "query"),
    ("/v1/search", json.dumps({"query": "x", "k": 0}), 422, "k_out_of_range", "k"),
    ("/v1/search", json.dumps({"query": "x", "k": -3}), 422, "k_out_of_range", "k"),
    ("/v1/search", json.dumps({"query": "x", "k": 51}), 422, "k_out_of_range", "k"),
    ("/v1/search", json.dumps({"query": "x", "filter": {"colour": "red"}}), 422, "invalid_filter", "filter"),
    ("/v1/search", json.dumps({"query": "x", "filter": {"n": {"$near": 3}}}), 422, "invalid_filter", "filter"),
    ("/v1/search", json.dumps({"query": "x", "filter": "kind=even"}), 422, "invalid_type", "filter"),
    ("/v1/search/batch", json.dumps({"queries": []}), 422, "empty_batch", "queries"),
    ("/v1/search/batch", json.dumps({"queries": ["a"] * 33}), 422, "too_many_queries", "queries"),
    ("/v1/search/batch", json.dumps({"queries": ["a", ""]}), 422, "empty_query", "queries[1]"),
    ("/v1/search/batch", json.dumps({"queries": ["a", 3]}), 422, "invalid_type", "queries[1]"),
    ("/v1/rerank", json.dumps({"query": "x", "documents": ["a"] * 257}), 422, "too_many_documents", "documents"),
    ("/v1/rerank", json.dumps({"query": "x", "documents": ["a", "b" * 20_001]}), 422, "document_too_long", "documents[1]"),
    ("/v1/rerank", json.dumps({"query": "x", "documents": []}), 422, "empty_documents", "documents"),
    ("/v1/rerank", json.dumps({"query": "x", "documents": ["a", {"title": "no text"}]}), 422, "invalid_type", "documents"),
    ("/v1/rerank", json.dumps({"query": "x", "documents": ["a"], "top_n": 0}), 422, "top_n_out_of_range", "top_n"),
    ("/v1/rerank", json.dumps({"query": "", "documents": ["a"]}), 422, "empty_query", "query"),
    ("/v1/rerank", json.dumps({"query": "x", "texts": ["a"]}), 422, "unknown_field", "texts"),
    ("/v1/search", b'{"query": "' + b"x" * (1024 * 1024) + b'"}', 413, "body_too_large", None),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "field"), BAD, ids=[f"{c}-{i}" for i, (_, _, _, c, _) in enumerate(BAD)])
def test_a_bad_request_is_a_clean_4xx_and_the_next_good_one_works(client, path, body, status, code, field):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error.get("field") == field and error["message"]
    assert "Traceback" not in r.text
    good = client.post("/v1/search", json={"query": QUERY, "k": 2})
    assert good.status_code == 200 and len(good.json()["hits"]) == 2


def test_bad_writes_and_routes_are_4xx_too(client):
    cases = [
        (client.put("/v1/documents", json={"documents": []}), 422, "invalid_value"),
        (client.put("/v1/documents", json={"documents": [{"id": "a"}]}), 422, "missing_field"),
        (client.put("/v1/documents", json={"documents": [{"id": "a", "text": "t", "path": "/etc/passwd"}]}), 422, "unknown_field"),
        (client.put("/v1/documents", json={"documents": [{"id": "", "text": "t"}]}), 422, "invalid_value"),
        (client.put("/v1/documents?wait=maybe", json={"documents": [{"id": "a", "text": "t"}]}), 422, "invalid_type"),
        (client.get("/v1/nothing"), 404, "not_found"),
        (client.get("/v1/search"), 405, "method_not_allowed"),
        (client.post("/v1/search", content=b'{"query": "x"}', headers={"content-type": "text/plain"}), 422, "invalid_body"),
        (client.post("/v1/search", json={"query": "x"}, headers={"x-request-timeout-ms": "soon"}), 422, "invalid_header"),
    ]
    for r, status, code in cases:
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_a_document_id_is_a_key_never_a_path(client, service):
    for path in ("/v1/documents/..%2F..%2F..%2Fetc%2Fpasswd", "/v1/documents/%2Fetc%2Fpasswd", "/v1/documents/pyproject.toml"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/documents/doc003").json()["id"] == "doc003"


def test_an_internal_failure_is_a_500_with_a_request_id_and_the_traceback_only_in_the_log(service, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        monkeypatch.setattr(service.stack, "search", broken)
        with caplog.at_level(logging.ERROR, logger="stagegraph.serve"):
            r = c.post("/v1/search", json={"query": QUERY})
        monkeypatch.undo()
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["code"] == "internal_error" and error["request_id"] == r.headers["x-request-id"]
        assert "secret" not in r.text and "Traceback" not in r.text
        logged = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)
        assert error["request_id"] in logged and any(rec.exc_info for rec in caplog.records)
        assert c.post("/v1/search", json={"query": QUERY}).status_code == 200


# -- security -------------------------------------------------------------------------------------
def test_the_api_key_is_required_everywhere_but_health_and_readiness(service):
    with TestClient(create_app(service, api_key="s3cret-key")) as c:
        body = {"query": QUERY, "k": 1}
        assert c.post("/v1/search", json=body).status_code == 401
        wrong = c.post("/v1/search", json=body, headers={"authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/search", json=body, headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.post("/v1/search", json=body, headers={"x-api-key": "s3cret-key"}).status_code == 200
        for path in ("/metrics", "/v1/info", "/docs", "/openapi.json", "/v1/documents/doc001"):
            assert c.get(path).status_code == 401, path
        assert c.put("/v1/documents", json={"documents": [{"id": "x", "text": "y"}]}).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    with TestClient(create_app(service)) as c:  # without a key everything is open
        assert c.post("/v1/search", json=body).status_code == 200 and c.get("/metrics").status_code == 200


def test_read_only_refuses_every_write_and_changes_nothing(service):
    read_only = Service(ServeSettings(read_only=True))
    read_only.stack = service.stack
    read_only._stages = service._stages
    before = service.stack.collection.generation.number
    with TestClient(create_app(read_only)) as c:
        r = c.put("/v1/documents?wait=true", json={"documents": [{"id": "x", "text": "marker"}]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "read_only"
        assert c.delete("/v1/documents/doc001").status_code == 403
        assert c.post("/v1/search", json={"query": QUERY}).status_code == 200
        assert "put" not in c.get("/openapi.json").json()["paths"].get("/v1/documents", {})
    assert service.stack.collection.generation.number == before and service.stack.collection.generation.document("doc001") is not None


def test_no_cors_unless_an_origin_is_given(service):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    with TestClient(create_app(service)) as c:
        r = c.options("/v1/search", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.post("/v1/search", json={"query": QUERY}, headers={"origin": "https://app.example"}).headers
    allowed = Service(ServeSettings(cors_origins=["https://app.example"]))
    allowed.stack, allowed._stages = service.stack, service._stages
    with TestClient(create_app(allowed, api_key="k")) as c:
        r = c.options("/v1/search", headers=preflight)  # a preflight carries no key, and passes
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/v1/search", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_command_line_refuses_a_key_argument_and_warns_when_exposed(tmp_path, capsys, monkeypatch):
    from stagegraph.cli.app import main
    from stagegraph.serve.security import exposure_warning

    assert main(["serve", "bm25", "--collection", str(tmp_path), "--api-key", "s3cret"]) == 2
    err = capsys.readouterr().err
    assert "--api-key is refused" in err and "$STAGEGRAPH_API_KEY" in err
    monkeypatch.setenv("STAGEGRAPH_API_KEY", "  ")
    assert main(["serve", "bm25", "--collection", str(tmp_path)]) == 2
    assert "empty" in capsys.readouterr().err
    assert exposure_warning("0.0.0.0", False, False) and exposure_warning("::", False, True)
    assert exposure_warning("127.0.0.1", False, False) is None and exposure_warning("::1", False, False) is None
    assert exposure_warning("0.0.0.0", True, False) is None


# -- load: the queue, deadlines, disconnects (uvicorn in a thread, a gate holding the one worker) ---
class Gate:
    """Wraps the stack's real search: counts calls, and holds each until `open` (when closed)."""

    def __init__(self, search):
        self.search = search
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.entered.release()
        assert self.opened.wait(30)
        return self.search(*args, **kwargs)


@pytest.fixture
def gated(service, monkeypatch):
    one = Service(ServeSettings(workers=1, in_progress=1, queue=1, deadline_ms=20_000))
    one.stack, one._stages = service.stack, service._stages
    gate = Gate(service.stack.search)
    monkeypatch.setattr(service.stack, "search", gate)
    with ThreadServer(create_app(one)) as server:
        yield one, gate, server
        gate.opened.set()


def test_a_full_queue_answers_503_with_retry_after_at_once_and_recovers(gated):
    one, gate, server = gated
    results = {}

    def call(name):
        results[name] = httpx.post(server.url + "/v1/search", json={"query": QUERY, "k": 2}, timeout=30)

    first = threading.Thread(target=call, args=("running",))
    first.start()
    assert gate.entered.acquire(timeout=10)  # the one worker is busy
    second = threading.Thread(target=call, args=("queued",))
    second.start()
    deadline = time.monotonic() + 10
    while one.search_pool.waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.perf_counter()
    refused = httpx.post(server.url + "/v1/search", json={"query": QUERY}, timeout=30)
    assert refused.status_code == 503 and time.perf_counter() - started < 1.0
    assert refused.json()["error"]["code"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
    gate.opened.set()
    first.join(30)
    second.join(30)
    assert results["running"].status_code == 200 and results["queued"].status_code == 200
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.post(server.url + "/v1/search", json={"query": QUERY}).status_code == 200
    assert 'stagegraph_rejected_total{reason="overloaded"} 1.0' in httpx.get(server.url + "/metrics").text


def test_past_its_deadline_a_queued_request_is_504_and_never_runs(gated):
    one, gate, server = gated
    holder = threading.Thread(target=lambda: httpx.post(server.url + "/v1/search", json={"query": QUERY}, timeout=30))
    holder.start()
    assert gate.entered.acquire(timeout=10)
    started = time.perf_counter()
    late = httpx.post(server.url + "/v1/search", json={"query": QUERY}, headers={"x-request-timeout-ms": "300"}, timeout=30)
    waited = time.perf_counter() - started
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded" and 0.25 < waited < 3
    gate.opened.set()
    holder.join(30)
    deadline = time.monotonic() + 10
    while one.search_pool.dropped < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gate.calls == 1 and one.search_pool.completed == 1  # the late one was dropped, not run


def test_a_client_that_disconnects_cancels_its_queued_work(gated):
    one, gate, server = gated
    holder = threading.Thread(target=lambda: httpx.post(server.url + "/v1/search", json={"query": QUERY}, timeout=30))
    holder.start()
    assert gate.entered.acquire(timeout=10)
    body = json.dumps({"query": QUERY}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while one.search_pool.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 10  # the socket is closed: the server notices and cancels
    while 'reason="disconnected"} 1.0' not in httpx.get(server.url + "/metrics").text:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    gate.opened.set()
    holder.join(30)
    while one.search_pool.dropped < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gate.calls == 1


def test_a_deadline_during_the_first_stages_stops_the_run_before_the_reranker(service, monkeypatch):
    one = Service(ServeSettings(workers=1, in_progress=1))
    one.stack, one._stages = service.stack, service._stages
    pool = service.stack.runner.bound("pool")  # the pool bound to the collection (it orders ties by chunk key)
    reranker = service.reranker()
    slow_run = pool.run

    def slow(queries, inputs):
        time.sleep(0.4)
        return slow_run(queries, inputs)

    monkeypatch.setattr(pool, "run", slow)
    pairs = reranker.stats.pairs
    with TestClient(create_app(one)) as c:
        r = c.post("/v1/search", json={"query": QUERY}, headers={"x-request-timeout-ms": "150"})
        assert r.status_code == 504
        deadline = time.monotonic() + 10
        while one.search_pool.abandoned < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert reranker.stats.pairs == pairs  # the rerank level never ran


# -- micro-batching -------------------------------------------------------------------------------
class Recording:
    """The reranker's real scorer, recording how many pairs each model call got."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.max_length = inner.max_length

    def score(self, queries, docs, progress=False):
        self.calls.append(len(queries))
        return self.inner.score(queries, docs)


def test_concurrent_requests_share_model_calls_with_the_same_scores(service):
    real = service.reranker().scoring.scorer.inner
    recording = Recording(real)
    slots = Slots(2)
    batcher = BatchingScorer(recording, slots, max_tokens=10_000, max_wait_s=0.5, in_progress=lambda: 4)
    requests = [([f"query {i} protein"] * 5, [f"cell {j} cancer risk {i}" for j in range(5)]) for i in range(4)]
    alone = [real.score(q, d) for q, d in requests]
    out: dict[int, np.ndarray] = {}

    def call(i):
        with slots.hold():
            out[i] = batcher.score(*requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(recording.calls) < 4 and sum(recording.calls) == 20
    assert time.perf_counter() - started < 5
    for i in range(4):
        np.testing.assert_allclose(out[i], alone[i], atol=1e-5)


def test_a_lone_request_does_not_wait_and_a_budget_splits_batches(service):
    real = service.reranker().scoring.scorer.inner
    recording = Recording(real)
    lone = BatchingScorer(recording, Slots(1), max_wait_s=5.0, in_progress=lambda: 1)
    started = time.perf_counter()
    lone.score(["q"] * 3, ["a b", "c d", "e f"])
    assert time.perf_counter() - started < 1.0 and recording.calls == [3]
    tight = BatchingScorer(Recording(real), Slots(4), max_tokens=8, max_wait_s=0.3, in_progress=lambda: 3)
    threads = [threading.Thread(target=tight.score, args=(["q"], [f"doc {i}"])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(tight.inner.calls) == 3 and len(tight.inner.calls) >= 2  # 4-5 tokens each, 8 per call


def test_a_cancelled_request_leaves_the_batch_unscored(service):
    from stagegraph.pipeline.cancel import Cancelled, cancellable

    recording = Recording(service.reranker().scoring.scorer.inner)
    batcher = BatchingScorer(recording, Slots(2), max_wait_s=0.5, in_progress=lambda: 3)
    stop_at = time.monotonic() + 0.1
    with cancellable(lambda: time.monotonic() > stop_at):
        with pytest.raises(Cancelled):
            batcher.score(["q"] * 2, ["a", "b"])
    assert recording.calls == [] and not batcher._queue


def test_micro_batching_in_the_server_scores_what_it_would_alone(service):
    pairs_before = service.reranker().stats.pairs
    queries = [QUERY, "heat flow wing pressure", "dense vector rank fusion", "gene genes study results"]
    alone = {q: [h.id for h in service.stack.search(q, k=5).hits] for q in queries}
    with TestClient(create_app(service)) as c:
        got = {}

        def call(q):
            got[q] = [h["id"] for h in c.post("/v1/search", json={"query": q, "k": 5}).json()["hits"]]

        threads = [threading.Thread(target=call, args=(q,)) for q in queries * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert got == alone
    assert service.reranker().stats.pairs > pairs_before


def test_explain_says_where_a_document_was_lost(client, service):
    """POST /v1/explain: the same trace as the stack's own explain, for a hit and for a document past the top k."""
    hits = client.post("/v1/search", json={"query": "alpha beta", "k": 20}).json()["hits"]
    first, later = hits[0]["id"], hits[-1]["id"]
    answer = client.post("/v1/explain", json={"query": "alpha beta", "doc_id": first, "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lost_at"] == "in_top_k" and body["rank_after"] == 1 and body["generation"] == service.stack.generation
    assert len(hits) > 1
    body = client.post("/v1/explain", json={"query": "alpha beta", "doc_id": later, "k": 1}).json()
    trace = service.stack.explain("alpha beta", later, k=1)
    assert body["lost_at"] == trace.lost_at != "in_top_k" and body["ranks"] == trace.ranks
    assert set(body["ranks"]) == {"bm25", "dense", "pool", "rerank"}
    missing = client.post("/v1/explain", json={"query": "alpha beta", "doc_id": "nope"})
    assert missing.status_code == 422 and "no document or chunk 'nope'" in missing.json()["error"]["message"]
    assert client.post("/v1/explain", json={"query": "", "doc_id": first}).json()["error"]["code"] == "empty_query"
