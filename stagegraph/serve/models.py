"""The HTTP API's records: one pydantic model per request and per response body.

Requests are strict (a number is not a string, `"10"` is not an int) and refuse unknown fields, so a
misspelt field is an error instead of a silently ignored option. Limits that the operator sets by
flag (`stagegraph.serve.settings.Limits`) are checked by the routes against these models, with the
same error shape (`ErrorBody`). The rerank call follows the Cohere / TEI shape that rerank APIs
share: `{query, documents: [str | {text, ...}], top_n?, return_documents?}` ->
`{results: [{index, relevance_score, document?}]}`. A search hit is the library's own record
(`HitOut` derives from `stagegraph.pipeline.hits.Hit`), not a copy of its fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from stagegraph.collection.context import ContextResult
from stagegraph.pipeline.hits import Hit, StageScore

STRICT = ConfigDict(extra="forbid", strict=True)


# -- errors -----------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="a stable, machine-readable name: invalid_json, unknown_field, k_out_of_range, ...")
    message: str = Field(description="one line: what is wrong and how to fix it")
    field: str | None = Field(None, description="the request field at fault (documents[3].text), when one is")
    request_id: str | None = Field(None, description="on a 500: quote it to the operator, whose log has the traceback")


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- search -----------------------------------------------------------------------------------------
class SearchRequest(BaseModel):
    model_config = STRICT

    query: str = Field(description="a question or keywords (non-empty; at most --max-query-chars characters)")
    k: int = Field(10, description="hits to return, 1 to --max-k")
    filter: dict[str, Any] | None = Field(
        None, description='a metadata filter: {"ext": "md", "year": {"$gte": 2024}} (see stagegraph.corpora.filters)')
    explain: bool = Field(False, description="add each stage's rank and score to every hit")
    allow_partial: bool = Field(False, description="a sharded collection on Ray: answer from the shards that can be "
                                "reached when one cannot (listed in `partial`) instead of failing with 503")
    per_doc: int | None = Field(None, ge=1, description="at most this many chunks of each document among the k hits "
                                "(default: every chunk; 1: one hit per document, its best chunk)")


class ExplainRequest(BaseModel):
    model_config = STRICT

    query: str = Field(description="the query, as in /v1/search")
    doc_id: str = Field(description="the document (or chunk, `doc#n`) whose place to explain")
    k: int = Field(10, description="the top k it is (or is not) in, 1 to --max-k")
    filter: dict[str, Any] | None = Field(None, description="the query's filter, as in /v1/search")


class ExplainResponse(BaseModel):
    generation: int | None = None
    query: str
    doc_id: str
    k: int
    lost_at: str = Field(description="in_top_k, or the step that lost it: never_retrieved, filtered, cut_by:<stage>, "
                         "beyond_depth:<reranker>, demoted_by:<stage>")
    rank_before: int | None = Field(None, description="its rank on the way into that step")
    rank_after: int | None = Field(None, description="its rank on the way out (null: dropped)")
    ranks: dict[str, int | None] = Field(description="every stage's rank of it (null: not in that stage's output)")


class SearchBatchRequest(BaseModel):
    model_config = STRICT

    queries: list[str] = Field(description="at most --max-batch-queries queries, each as in /v1/search")
    k: int = 10
    filter: dict[str, Any] | None = None
    explain: bool = False
    allow_partial: bool = False
    per_doc: int | None = Field(None, ge=1)


class HitOut(Hit):
    """A hit as the API sends it: the library's `Hit` itself (every field inherited, so the wire
    cannot fall behind the record), except that `stages` is sent only with `explain`."""

    stages: dict[str, StageScore] | None = Field(  # type: ignore[assignment]  # optional on the wire only
        None, description="with explain: each stage's rank and score (null: not returned there)")

    @classmethod
    def of(cls, hit: Hit, *, explain: bool) -> HitOut:
        """`hit` for the wire: all its fields, its stage ranks only with `explain`."""
        return cls.model_validate({**dict(hit), "stages": hit.stages if explain else None})


class SearchResponse(BaseModel):
    query: str
    generation: int | None = Field(description="the collection generation that was searched")
    hits: list[HitOut]
    timings_ms: dict[str, float] = Field(description="time in each stage")
    total_ms: float = Field(description="the pipeline, end to end")
    queue_ms: float = Field(description="time the request waited for a worker")
    partial: list[str] | None = Field(None, description="the shards left out (only with allow_partial, when one could "
                                      "not be reached): these hits come from the other shards")
    hint: str | None = Field(None, description="only when a filter was given and nothing was found: why, in one line "
                             "(the values the filter's fields hold, the nearest to the one given; or how many chunks "
                             "pass the filter)")


class SearchBatchResponse(BaseModel):
    generation: int | None
    results: list[SearchResponse]
    timings_ms: dict[str, float] = Field(description="each stage's time for the whole batch")
    total_ms: float
    queue_ms: float


# -- context ----------------------------------------------------------------------------------------
class ContextRequest(BaseModel):
    """`Stack.context` over HTTP (`stagegraph.collection.context`); the tokenizer is the served dense model's."""

    model_config = STRICT

    query: str = Field(description="a question or keywords, as in /v1/search")
    budget_tokens: int = Field(ge=1, le=1_000_000, description="the most tokens the assembled text may count")
    filter: dict[str, Any] | None = Field(None, description="a metadata filter, as in /v1/search")
    mmr_lambda: float | None = Field(None, ge=0.0, le=1.0, description="MMR: 1 = rank order, 0 = most diverse; null: off")
    candidates: int = Field(20, description="the pipeline's top hits considered, 1 to --max-k")
    dedup_threshold: float | None = Field(0.95, gt=0.0, le=1.0, description="cosine at which a hit is a near-duplicate; null: off")
    expand: Literal["none", "neighbours", "section"] = Field("none", description="add neighbouring chunks or the whole section")
    neighbours: int = Field(1, ge=1, le=20, description="with expand=neighbours: chunks on each side")
    separator: str = Field("\n\n", max_length=100, description="between two passages")
    template: str = Field("{text}", min_length=1, max_length=1000, description="each passage's form; placeholders "
                          "{n} {doc_id} {title} {section} {page} {start} {end} {text}")


class ContextResponse(ContextResult):
    queue_ms: float = Field(description="time the request waited for a worker")


# -- rerank -----------------------------------------------------------------------------------------
class RerankDocument(BaseModel):
    """A document as an object: `text`, plus any fields of the caller's (returned as given)."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: str


class RerankRequest(BaseModel):
    model_config = STRICT

    query: str
    documents: list[str | RerankDocument] = Field(
        description="strings or objects with a 'text' field; at most --max-rerank-documents, each at most "
                    "--max-document-chars characters (longer pairs are truncated to the model's max_length tokens)")
    top_n: int | None = Field(None, description="return the best top_n (default: all)")
    return_documents: bool = False
    model: str | None = Field(None, description="accepted for Cohere clients; the server's own cross-encoder is used and named")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not (isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("text"), str))):
                    raise PydanticCustomError(
                        "document_type", "documents[{index}] is a {kind}; each document is a string or an object "
                        "with a string 'text' field", {"index": i, "kind": type(item).__name__})
        return value


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="the cross-encoder's score (its activation, as CrossEncoder.predict gives it)")
    document: dict[str, Any] | None = Field(None, description="with return_documents: the document as sent ({text} for a string)")


class RerankResponse(BaseModel):
    id: str = Field(description="the request id")
    model: str = Field(description="the cross-encoder that scored the pairs")
    results: list[RerankResult]
    timings_ms: dict[str, float]


# -- documents --------------------------------------------------------------------------------------
class DocumentIn(BaseModel):
    model_config = STRICT

    id: str = Field(min_length=1, max_length=1024, description="the document id (a key, never a file path)")
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = Field(None, description="the document's precomputed embedding: required in a collection "
                                       "created with --vector-field (one per document, of its width), refused in any other")


class UpsertRequest(BaseModel):
    model_config = STRICT

    documents: list[DocumentIn] = Field(min_length=1, description="at most --max-write-documents; chunked as ingest does")


class WriteResponse(BaseModel):
    generation: int = Field(description="the generation that holds the change (durable when this answer comes)")
    published: bool = Field(description="false when nothing changed (every document was already there as given)")
    searchable: bool = Field(description="true once searches see the change (always, with ?wait=true)")
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


class ChunkOut(BaseModel):
    id: str
    index: int
    text: str


class DocumentOut(BaseModel):
    id: str
    title: str
    metadata: dict[str, Any]
    generation: int
    chunks: list[ChunkOut]


# -- operations -------------------------------------------------------------------------------------
class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    generation: int | None = None
    reason: str | None = None
    shards: list[dict[str, int]] | None = Field(None, description="a sharded collection on Ray: per shard, its "
                                                "replicas and how many answer (ready while each shard has one)")


class Info(BaseModel):
    version: str
    pipeline: dict[str, Any] = Field(description="the pipeline config being served")
    stages: list[dict[str, Any]] = Field(description="each stage: name, type, model and fingerprint where it has them")
    collection: dict[str, Any] = Field(description="name, generation, documents, chunks, created")
    read_only: bool
    workers: int
    threads_per_worker: int
    in_progress: int
    queue: int
    deadline_ms: float
    batching: dict[str, Any]
    limits: dict[str, Any]
    versions: dict[str, str]


# -- the rerank shapes other clients send (stagegraph.serve.rerank_compat) ---------------------------
#: unknown fields are ignored on these two routes (not refused): a newer client adding one keeps working
COMPAT = ConfigDict(extra="ignore", strict=True)


class CohereV2RerankRequest(BaseModel):
    """Cohere's v2 rerank request, as `cohere.ClientV2.rerank` sends it."""

    model_config = COMPAT

    model: str | None = Field(None, description="required by Cohere, accepted here; the server's own cross-encoder is used and named")
    query: str
    documents: list[str] = Field(description="the passages (strings, as Cohere v2 takes them); the same limits as /v1/rerank")
    top_n: int | None = Field(None, description="return the best top_n (default: all)")
    max_tokens_per_doc: int | None = Field(None, description="accepted; pairs are truncated to the model's max_length tokens")
    priority: int | None = Field(None, description="accepted and ignored")


class CohereV2RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="in 0-1, as Cohere's: the model's score where its activation is a sigmoid, "
                                   "else the logistic of its logit (order as /v1/rerank's)")


class CohereApiVersion(BaseModel):
    version: str = "2"


class CohereMeta(BaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)


class CohereV2RerankResponse(BaseModel):
    id: str = Field(description="the request id")
    results: list[CohereV2RerankResult]
    meta: CohereMeta = Field(default_factory=CohereMeta)
    model: str = Field(description="the cross-encoder that scored the pairs")
    timings_ms: dict[str, float]


class TeiRerankRequest(BaseModel):
    """text-embeddings-inference's `POST /rerank` request."""

    model_config = COMPAT

    query: str
    texts: list[str] = Field(description="the passages; the same limits as /v1/rerank's documents")
    raw_scores: bool = Field(False, description="true: the model's own output (as /v1/rerank); false: in 0-1 (TEI's default)")
    return_text: bool = False
    truncate: bool | None = Field(None, description="accepted; pairs are always truncated to the model's max_length tokens")
    truncation_direction: str | None = Field(None, description="accepted; truncation keeps the start of the passage")


class TeiRank(BaseModel):
    index: int = Field(description="position of the text in the request")
    score: float
    text: str | None = Field(None, description="with return_text: the text as sent")
