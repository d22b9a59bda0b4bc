"""A schema fuzzer over the whole HTTP API (issue 23, point 6): schemathesis generates requests from
the server's own OpenAPI schema, valid and invalid, and sends them over real HTTP to a server
configured as `stagegraph serve` configures it (`uvicorn_config`: the guarded protocol, every
middleware) on 127.0.0.1. Every answer must be no 5xx, a status the schema documents for that
route, the documented content type and a body that matches the documented schema.

Bounded: `EXAMPLES` examples per endpoint and method (hypothesis stops there; no deadline, since
the machine is shared), a BM25 | dense -> pool -> cross-encoder pipeline of tiny models over 40
documents. A write server (writes included) and the read-only one share the schema's routes.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks as sc  # noqa: E402
from serve_support import ThreadServer, build_collection, rerank_config  # noqa: E402
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer  # noqa: E402

from stagegraph.serve.app import create_app  # noqa: E402
from stagegraph.serve.service import Service  # noqa: E402
from stagegraph.serve.settings import Limits, ServeSettings  # noqa: E402

EXAMPLES = 50  # per route and mode: 7 routes with input x 50 + 4 without x 1, valid; 6 x 50 invalid: ~654 requests
CHECKS = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
          sc.response_schema_conformance, sc.response_headers_conformance, sc.negative_data_rejection]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    st, ce = str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce", max_length=64))
    config = rerank_config(st, ce)
    collection = build_collection(root / "c", config)
    settings = ServeSettings(workers=1, limits=Limits(max_k=50, max_write_documents=20), write_timeout_s=30)
    service = Service.open(config, collection, settings)
    try:
        with ThreadServer(create_app(service), settings) as server:
            yield server
    finally:
        service.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


#: every route of the API (the test below fails when the schema has one more or one fewer)
OPERATIONS = [("POST", "/v1/search"), ("POST", "/v1/explain"), ("POST", "/v1/context"), ("POST", "/v1/search/batch"),
              ("POST", "/v1/rerank"),
              ("POST", "/v2/rerank"), ("POST", "/rerank"), ("PUT", "/v1/documents"),
              ("DELETE", "/v1/documents/{doc_id}"), ("GET", "/v1/documents/{doc_id}"), ("GET", "/healthz"),
              ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/info")]


def test_the_fuzzer_covers_every_route_of_the_schema(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


#: valid requests for every route; invalid ones where a route takes something that can be invalid (a
#: body, a typed query parameter: the others take only a free string or nothing)
RUNS = [("positive", m, p) for m, p in OPERATIONS] + [
    ("negative", m, p) for m, p in OPERATIONS if m in ("POST", "PUT", "DELETE")]
TOTAL: dict[str, int] = {}


@pytest.mark.parametrize(("mode", "method", "path"), RUNS, ids=[f"{mode} {m} {p}" for mode, m, p in RUNS])
def test_every_endpoint_answers_fuzzed_requests_without_5xx_and_as_its_schema_says(api_schema, mode, method, path):
    from hypothesis import given
    from schemathesis import GenerationMode

    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE)
    sent: list[int] = []

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call(timeout=60)
        sent.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    fuzz()
    assert sent, "no request was generated"
    TOTAL[f"{mode} {method} {path}"] = len(sent)
    print(f"{mode} {method} {path}: {len(sent)} requests, statuses {sorted(set(sent))}")
