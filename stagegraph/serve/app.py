"""The routes: `create_app(service)` is the FastAPI application of one `Service`.

Versioned under `/v1`, OpenAPI at `/docs` (Swagger UI served from local files, `stagegraph.serve.docs`)
and `/openapi.json`:

| route | what |
| --- | --- |
| `POST /v1/search` | `{query, k, filter?, explain?}` -> hits and per-stage timings |
| `POST /v1/search/batch` | `{queries, k, filter?, explain?}` -> one result per query |
| `POST /v1/context` | `{query, budget_tokens, mmr_lambda?, expand?, ...}` -> passages for a prompt, with sources |
| `POST /v1/rerank` | Cohere/TEI shape, scored by the pipeline's cross-encoder |
| `PUT /v1/documents` | upsert documents (`?wait=true`: answer once searchable) |
| `DELETE /v1/documents/{doc_id}` | delete one document (`?wait=true` likewise) |
| `GET /v1/documents/{doc_id}` | the document and its chunks, from the newest durable generation |
| `GET /healthz`, `GET /readyz` | alive; ready (models and collection loaded, not shutting down) |
| `GET /metrics` | Prometheus (`stagegraph.serve.metrics`) |
| `GET /v1/info` | config, generation, models, limits, versions |

Search and rerank answers carry `Server-Timing` (W3C): `queue`, each stage, `compute` (time on a
worker) and `total` (time in the server), in ms. A request may shorten its deadline with
`X-Request-Timeout-Ms`. Every refusal is `{"error": {"code", "message", "field"}}`
(`stagegraph.serve.errors`): 400/413/422 for the client's mistakes, 401 without the key, 403 for
writes on a read-only server, 404, 503 + Retry-After when the queue is full, 504 past the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from functools import partial
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.responses import Response

from stagegraph import __version__
from stagegraph.errors import StagegraphError
from stagegraph.serve.docs import install_docs
from stagegraph.serve.errors import ApiError, api_error_response, error_response, from_exception, validation_error
from stagegraph.serve.middleware import BodyLimit, RequestContext, WriteGate
from stagegraph.serve.models import (
    ContextRequest,
    ContextResponse,
    DocumentOut,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    Health,
    Info,
    Ready,
    RerankRequest,
    RerankResponse,
    SearchBatchRequest,
    SearchBatchResponse,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    WriteResponse,
)
from stagegraph.serve.runtime import ClientGone, DeadlineExceeded, Draining, Overloaded, Runtime
from stagegraph.serve.security import ApiKeyAuth
from stagegraph.serve.service import Done, Service

log = logging.getLogger("stagegraph.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "invalid JSON"), (401, "API key missing or wrong"), (413, "body over --max-body-kb"),
        (422, "a field of the wrong type, unknown, missing or out of its limits"),
        (503, "queue full (Retry-After) or shutting down"), (504, "deadline passed; the work was dropped"),
    )
}
TIMEOUT_HEADER = "x-request-timeout-ms"
_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{_TOKEN.sub('_', name)};dur={ms:.3f}" for name, ms in timings.items())


async def _disconnected(receive: Any) -> None:
    """Completes when the client goes away (the server's receive answers http.disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_app(service: Service, *, api_key: str | None = None) -> FastAPI:
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:  # uvicorn stopped accepting and waited for in-flight requests; now the workers
            await asyncio.to_thread(service.drain)

    middleware = [Middleware(RequestContext, metrics=service.metrics)]
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                                     allow_methods=["GET", "POST", "PUT", "DELETE"],
                                     allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-Timeout-Ms"],
                                     expose_headers=["Server-Timing", "X-Request-Id", "Retry-After"]))
    middleware += [Middleware(ApiKeyAuth, key=api_key), Middleware(WriteGate, check=service.check_writes),
                   Middleware(BodyLimit, max_body_bytes=settings.limits.max_body_bytes,
                              max_json_depth=settings.limits.max_json_depth)]
    app = FastAPI(title="stagegraph", version=__version__, lifespan=lifespan, middleware=middleware,
                  docs_url=None, redoc_url=None,  # /docs: stagegraph.serve.docs (Swagger UI from local files)
                  description="Retrieval pipeline over a collection: search, rerank, documents. See docs/serving.md in the stagegraph repository.")
    install_docs(app)

    # -- errors ---------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return api_error_response(validation_error(exc.errors()))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> Response:
        return api_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's own parse:
            # bytes that are not UTF-8, or JSON nested past the parser's recursion (a filter 490 levels deep)
            return error_response(400, "invalid_json", "the body could not be read as JSON (not UTF-8, or nested too "
                                  "deep: filters allow 16 levels, metadata 8); send one JSON object in UTF-8")
        # FastAPI's other 400 is a body its JSON parser gave up on (e.g. an integer of over 4300 digits)
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {400: f"the body could not be parsed as JSON ({exc.__cause__ or exc.detail})",
                   404: f"no route {request.url.path}; see /docs", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}; see /docs"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(StagegraphError)
    async def _ours(request: Request, exc: StagegraphError) -> Response:
        mapped = from_exception(exc)
        if mapped is not None:
            return api_error_response(mapped)
        raise exc  # a stage failure is not the client's: RequestContext logs it and answers 500

    # -- running work ---------------------------------------------------------------------------
    def timeout_s(request: Request, default_ms: float) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return default_ms / 1000.0
        try:
            asked = float(raw)
        except ValueError:
            asked = -1.0
        if not asked > 0:
            raise ApiError(422, "invalid_header", f"X-Request-Timeout-Ms must be a positive number of ms, got {raw!r}",
                           "X-Request-Timeout-Ms")
        return min(asked, default_ms) / 1000.0

    async def run(pool: Runtime, request: Request, fn: Any, timeout: float) -> Response:
        started = time.perf_counter()
        try:
            job = pool.submit(fn, timeout)
        except Overloaded as exc:
            service.metrics.rejected.labels("overloaded").inc()
            return error_response(503, "overloaded", f"the server is at capacity (at most {pool.queue_size} requests "
                                  f"wait, --queue, and none past its deadline); retry after {exc.retry_after} s",
                                  headers={"Retry-After": str(exc.retry_after),
                                           "Server-Timing": server_timing({"total": (time.perf_counter() - started) * 1000.0})})
        except Draining:
            service.metrics.rejected.labels("draining").inc()
            return error_response(503, "shutting_down", "the server is shutting down; retry on another instance",
                                  headers={"Retry-After": "1"})
        try:
            done: Done = await pool.result(job, partial(_disconnected, request.receive))
        except DeadlineExceeded:
            service.metrics.rejected.labels("deadline").inc()
            return error_response(504, "deadline_exceeded", f"no answer within {timeout * 1000:.0f} ms; the work was "
                                  "dropped (the deadline is --deadline-ms, or X-Request-Timeout-Ms if lower)")
        except ClientGone:
            service.metrics.rejected.labels("disconnected").inc()
            return Response(status_code=499)  # nobody reads it: the client closed the connection
        except Draining:
            service.metrics.rejected.labels("draining").inc()
            return error_response(503, "shutting_down", "the server is shutting down; retry on another instance",
                                  headers={"Retry-After": "1"})
        timings = {**done.timings, "total": (time.perf_counter() - started) * 1000.0}
        return Response(done.body, status_code=done.status, media_type="application/json",
                        headers={"Server-Timing": server_timing(timings)})

    def request_id(request: Request) -> str:
        return request.scope.get("state", {}).get("request_id", "")

    # -- search and rerank ----------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    async def search(body: SearchRequest, request: Request) -> Response:
        """The top k hits for one query (with `explain`, each stage's rank and score)."""
        service.check_search(body)
        return await run(service.search_pool, request, partial(service.search, body=body),
                         timeout_s(request, settings.deadline_ms))

    @app.post("/v1/explain", response_model=ExplainResponse, responses=ERRORS, tags=["search"])
    async def explain(body: ExplainRequest, request: Request) -> Response:
        """Why one document is not (or is) in a query's top k: every stage's rank of it and the step that lost it."""
        service.check_search(body)
        return await run(service.search_pool, request, partial(service.explain, body=body),
                         timeout_s(request, settings.deadline_ms))

    @app.post("/v1/search/batch", response_model=SearchBatchResponse, responses=ERRORS, tags=["search"])
    async def search_batch(body: SearchBatchRequest, request: Request) -> Response:
        """Many queries in one call, run as one batch (stage times are the batch's)."""
        service.check_batch(body)
        return await run(service.search_pool, request, partial(service.search_batch, body=body),
                         timeout_s(request, settings.deadline_ms))

    @app.post("/v1/context", response_model=ContextResponse, responses=ERRORS, tags=["search"])
    async def context(body: ContextRequest, request: Request) -> Response:
        """The chunks to put in an LLM prompt, packed into a token budget, each with its source (Stack.context)."""
        service.check_context(body)
        return await run(service.search_pool, request, partial(service.context, body=body),
                         timeout_s(request, settings.deadline_ms))

    @app.post("/v1/rerank", response_model=RerankResponse, responses={**ERRORS, 404: {"model": ErrorBody}}, tags=["rerank"])
    async def rerank(body: RerankRequest, request: Request) -> Response:
        """Cohere/TEI-shaped reranking of the given documents by the pipeline's cross-encoder."""
        service.check_rerank(body)
        return await run(service.search_pool, request, partial(service.rerank, body=body, request_id=request_id(request)),
                         timeout_s(request, settings.deadline_ms))

    # -- the rerank shapes other clients send: Cohere v2 (/v2/rerank), TEI (/rerank); see rerank_compat
    from stagegraph.serve.rerank_compat import add_routes as add_rerank_compat_routes

    add_rerank_compat_routes(app, service, run=run, timeout_s=timeout_s, request_id=request_id, errors=ERRORS)

    # -- documents ------------------------------------------------------------------------------
    writes_doc = not settings.read_only

    @app.put("/v1/documents", response_model=WriteResponse, responses={**ERRORS, 403: {"model": ErrorBody}},
             tags=["documents"], include_in_schema=writes_doc)
    async def upsert(body: UpsertRequest, request: Request,
                     wait: bool = Query(False, description="answer once the change is searchable")) -> Response:
        """Add or replace documents (chunked as ingest does); the answer means durable."""
        service.check_writes(len(body.documents))
        docs = service.check_documents(body)
        return await run(service.write_pool, request, partial(service.upsert, documents=docs, wait=wait),
                         settings.write_timeout_s)

    @app.delete("/v1/documents/{doc_id:path}", response_model=WriteResponse,
                responses={**ERRORS, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
                tags=["documents"], include_in_schema=writes_doc)
    async def delete(doc_id: str, request: Request, wait: bool = Query(False)) -> Response:
        """Delete one document and its chunks."""
        service.check_writes()
        return await run(service.write_pool, request, partial(service.delete, doc_id=doc_id, wait=wait),
                         settings.write_timeout_s)

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentOut, responses={404: {"model": ErrorBody}},
             tags=["documents"])
    async def document(doc_id: str) -> DocumentOut:
        """A document and its chunks, from the newest durable generation."""
        return service.document(doc_id)

    # -- operations -----------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Alive (no key needed)."""
        return Health()

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["operations"])
    async def readyz() -> Response:
        """Models and collection loaded and not shutting down (no key needed)."""
        ready = service.readiness()
        return Response(ready.model_dump_json(exclude_none=True), status_code=200 if ready.ready else 503,
                        media_type="application/json")

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/v1/info", response_model=Info, tags=["operations"])
    async def info() -> Info:
        """The config, collection generation, models, limits and versions being served."""
        return service.info()

    return app
