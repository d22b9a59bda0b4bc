"""The rerank shapes RAG stacks already speak, beside `/v1/rerank` (Cohere v1's shape):

| route | client | request -> response |
| --- | --- | --- |
| `POST /v2/rerank` | `cohere.ClientV2(base_url=URL)`, LlamaIndex's `CohereRerank(base_url=URL)` | `{model, query, documents: [str], top_n?}` -> `{id, results: [{index, relevance_score}], meta}` |
| `POST /rerank` | text-embeddings-inference clients (LlamaIndex's `TextEmbeddingInference(base_url=URL)`) | `{query, texts, raw_scores?, return_text?}` -> `[{index, score, text?}]` |

Both are scored by the served pipeline's cross-encoder, best first, with the checks and limits of
`/v1/rerank` (its error codes; a field is named as the client sent it: `texts[3]` on `/rerank`).
Scores: Cohere v2 documents its `relevance_score` as 0-1, and TEI without `raw_scores` returns 0-1, so
both get the model's score where its activation is already a sigmoid, else the logistic of its logit
(`unit_scores`: the same order as `/v1/rerank`); TEI's `raw_scores: true` gets the model's own output.
Errors keep the server's one shape, `{"error": {code, message, field}}`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import Response

from stagegraph.corpora.validate import clean_text
from stagegraph.serve.errors import ApiError
from stagegraph.serve.models import (
    CohereV2RerankRequest,
    CohereV2RerankResponse,
    CohereV2RerankResult,
    ErrorBody,
    RerankRequest,
    TeiRank,
    TeiRerankRequest,
)
from stagegraph.serve.runtime import Job
from stagegraph.serve.service import Done

__all__ = ["add_routes", "unit_scores"]


def unit_scores(stage: Any, scores: np.ndarray) -> np.ndarray:
    """`scores` in 0-1: as they are when the model's activation is a sigmoid, else their logistic."""
    scoring = getattr(stage, "scoring", None)
    if scoring is None:
        getter = getattr(stage, "_scoring", None)
        scoring = getter() if callable(getter) else None
    activation = getattr(getattr(scoring, "scorer", None), "activation", None)
    if activation is not None and type(activation).__name__ == "Sigmoid":
        return scores
    return 1.0 / (1.0 + np.exp(-scores))


def _check(service: Any, query: str, texts: list[str], top_n: int | None, field: str) -> None:
    """`/v1/rerank`'s checks, the documents' field named as this route's client sent it."""
    try:
        service.check_rerank(RerankRequest.model_construct(query=query, documents=texts, top_n=top_n,
                                                           return_documents=False, model=None))
    except ApiError as exc:
        if field != "documents" and exc.field and exc.field.startswith("documents"):
            exc.field = field + exc.field[len("documents"):]
            exc.message = exc.message.replace("documents", field)
        raise


def _score(service: Any, job: Job, query: str, texts: list[str]) -> tuple[Any, np.ndarray, dict[str, float]]:
    stage = service.reranker()
    t0 = time.perf_counter()
    scores = np.asarray(stage.predict([(query, clean_text(t)) for t in texts]), dtype=np.float64)
    ms = (time.perf_counter() - t0) * 1000.0
    service.metrics.stage_seconds.labels(stage.name).observe(ms / 1000.0)
    return stage, scores, {"queue": job.queue_s * 1000.0, stage.name: ms}


def _order(scores: np.ndarray, top_n: int | None) -> list[int]:
    order = np.lexsort((np.arange(len(scores)), -scores))
    return (order[:top_n] if top_n is not None else order).tolist()


def rerank_v2(service: Any, job: Job, body: CohereV2RerankRequest, request_id: str) -> Any:
    stage, scores, timings = _score(service, job, body.query, body.documents)
    unit = unit_scores(stage, scores)
    response = CohereV2RerankResponse(
        id=request_id, model=stage.model_name, timings_ms=timings,
        results=[CohereV2RerankResult(index=i, relevance_score=float(unit[i])) for i in _order(scores, body.top_n)])
    return Done(response.model_dump_json().encode(), {**timings, "compute": job.compute_s * 1000.0})


def rerank_tei(service: Any, job: Job, body: TeiRerankRequest) -> Any:
    stage, scores, timings = _score(service, job, body.query, body.texts)
    sent = scores if body.raw_scores else unit_scores(stage, scores)
    ranks = [TeiRank(index=i, score=float(sent[i]), text=body.texts[i] if body.return_text else None)
             for i in _order(scores, None)]
    payload = b"[" + b",".join(r.model_dump_json(exclude_none=True).encode() for r in ranks) + b"]"
    return Done(payload, {**timings, "compute": job.compute_s * 1000.0})


def add_routes(app: FastAPI, service: Any, *, run: Callable[..., Any], timeout_s: Callable[[Request, float], float],
               request_id: Callable[[Request], str], errors: dict[int | str, dict[str, Any]]) -> None:
    """Add `/v2/rerank` and `/rerank` to `app`, run on the search pool like `/v1/rerank`."""
    from functools import partial

    responses = {**errors, 404: {"model": ErrorBody}}
    deadline_ms = service.settings.deadline_ms

    @app.post("/v2/rerank", response_model=CohereV2RerankResponse, responses=responses, tags=["rerank"])
    async def rerank_cohere_v2(body: CohereV2RerankRequest, request: Request) -> Response:
        """Cohere's v2 rerank (`cohere.ClientV2(base_url=...)`), scored by the pipeline's cross-encoder."""
        _check(service, body.query, body.documents, body.top_n, "documents")
        return await run(service.search_pool, request, partial(rerank_v2, service, body=body, request_id=request_id(request)),
                         timeout_s(request, deadline_ms))

    @app.post("/rerank", response_model=list[TeiRank], responses=responses, tags=["rerank"])
    async def rerank_tei_route(body: TeiRerankRequest, request: Request) -> Response:
        """text-embeddings-inference's rerank, scored by the pipeline's cross-encoder."""
        _check(service, body.query, body.texts, None, "texts")
        return await run(service.search_pool, request, partial(rerank_tei, service, body=body),
                         timeout_s(request, deadline_ms))
