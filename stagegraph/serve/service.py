"""`Service`: what the routes call; the stack, its workers, its writes and its answers, without HTTP.

`Service.open(config, collection, settings)` opens the collection's `Stack` (every index and model
loaded, a cross-encoder's scorer wrapped for micro-batching as each generation is warmed), runs
one search and one rerank pair so the first request pays no start-up cost, and pins torch's and
FAISS's threads to `cores // workers` for the process. Then:

* `search`, `search_batch`, `rerank` run on the search runtime's workers (`stagegraph.serve.runtime`)
  and return the response body already serialised, with the times for `Server-Timing`;
* `upsert` and `delete` run on the write runtime's one thread, through the collection's single
  writer (its file lock, then a generation built, fsync'ed and published); each answers once the
  change is durable, or with `wait` once the stack has moved to the new generation (searchable);
* `document`, `info`, `readiness` answer from what is in memory.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stagegraph.collection.collection import Collection
from stagegraph.collection.generation import read_current
from stagegraph.collection.layout import CollectionError
from stagegraph.collection.sources import HTTP
from stagegraph.collection.sharded import open_collection
from stagegraph.collection.stack import Stack
from stagegraph.collection.writer import as_document
from stagegraph.pipeline.partial import PartUnavailable, search_report
from stagegraph.corpora.validate import (
    DocumentError,
    FieldBudget,
    check_record,
    clean_text,
    normalize_id,
    text_problem,
)
from stagegraph.pipeline import threads
from stagegraph.serve.batching import install
from stagegraph.serve.errors import ApiError
from stagegraph.serve.metrics import Metrics
from stagegraph.serve.models import (
    ChunkOut,
    ContextRequest,
    ContextResponse,
    DocumentOut,
    ExplainRequest,
    ExplainResponse,
    HitOut,
    Info,
    Ready,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    SearchBatchRequest,
    SearchBatchResponse,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    WriteResponse,
)
from stagegraph.serve.runtime import Job, Runtime, Slots
from stagegraph.serve.settings import ServeSettings
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

log = logging.getLogger("stagegraph.serve")
_SURROGATE = re.compile("[\ud800-\udfff]")

VERSIONED = ("stagegraph", "fastapi", "starlette", "uvicorn", "pydantic", "prometheus-client", "numpy", "torch",
             "faiss-cpu", "sentence-transformers", "transformers")


@dataclass
class Done:
    """A worker's answer: the serialised body and the times (ms) for the Server-Timing header."""

    body: bytes
    timings: dict[str, float] = field(default_factory=dict)
    status: int = 200


class Service:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.slots = Slots(settings.worker_count)
        self.search_pool = Runtime("search", threads=settings.in_progress_count, queue=settings.queue,
                                   slots=self.slots, metrics=self.metrics)
        self.write_pool = Runtime("write", threads=1, queue=settings.write_queue, slots=self.slots,
                                  metrics=self.metrics, hold_slot=False, cancel_running=False)
        self.stack: Stack | None = None
        self.searcher: Any = None
        self.draining = False
        self._pinned = False
        self._stages: list[dict[str, Any]] = []

    # -- opening and closing --------------------------------------------------------------------
    @classmethod
    def open(cls, config: Any, collection: str | Path, settings: ServeSettings | None = None, *,
             pin_threads: bool = True, searcher: Any = None) -> Service:
        """`searcher`: where a sharded collection's retrievers run (`stagegraph.scale.shards.ShardedSearch`:
        its `bind` binds each generation, `health()` feeds /readyz, `register` /metrics, `close()`)."""
        service = cls(settings or ServeSettings())
        service.searcher = searcher
        if searcher is not None:
            searcher.register(service.metrics.registry)
        service.stack = Stack(config, open_collection(collection), prepare=service._prepare,
                              on_refresh=service.metrics.generation.set, watch=service.settings.watch_s or None,
                              guard=service.slots.hold, bind=searcher.bind if searcher is not None else None)
        try:
            service._warm()
        except BaseException:
            service.stack.close()
            raise
        if service.reranker() is None and service.settings.in_progress is None:
            service.search_pool.thread_count = service.settings.worker_count  # no pairs to batch: no extra threads
        if pin_threads:
            threads.pin(service.settings.threads)
            service._pinned = True
        service.metrics.generation.set(service.stack.generation)
        return service

    def _prepare(self, runner: Any) -> None:
        """Called by the stack with each new generation's runner, before searches see it."""
        b = self.settings.batching
        install(runner, self.slots, enabled=b.enabled, max_tokens=b.max_tokens, max_wait_s=b.max_wait_ms / 1000.0,
                in_progress=lambda: self.search_pool.running, on_batch=self._on_batch)
        self._stages = [_describe(step, runner.fingerprints[step.name]) for step in runner.steps]

    def _on_batch(self, requests: int, pairs: int) -> None:
        self.metrics.rerank_pairs.inc(pairs)
        self.metrics.rerank_batch.observe(requests)

    def _warm(self) -> None:
        assert self.stack is not None
        if self.stack.runner is None:  # an empty collection: nothing bound yet, the stages described as they are
            self._stages = [_describe(step, _fingerprint(step.stage)) for step in self.stack.pipeline.steps]
        if self.stack.collection.generation.live_chunks:
            self.stack.search("warm up", k=1)
        reranker = self.reranker()
        if reranker is not None:
            reranker.predict([("warm up", "warm up")])

    def start(self) -> None:
        self.draining = False
        self.search_pool.start()
        self.write_pool.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Stop taking work: queued jobs get 503, running ones finish within `timeout`."""
        self.draining = True
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        ok = self.search_pool.stop(timeout)
        return self.write_pool.stop(max(0.0, end - time.monotonic())) and ok

    def close(self) -> None:
        """Drain, close the stack (the collection's reader lease goes), unpin the threads."""
        if not self.draining:
            self.drain()
        if self.stack is not None:
            self.stack.close()
            self.stack = None
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None
        if self._pinned:
            threads.pin(None)
            self._pinned = False

    # -- the pipeline's parts -------------------------------------------------------------------
    def reranker(self) -> Any:
        """The pipeline's last cross-encoder stage as the current generation bound it (None when it has
        none; the stage value itself, which loads its model once, while the collection is empty)."""
        assert self.stack is not None
        found = [s for s in self.stack.pipeline.steps if isinstance(s.stage, CrossEncoderReranker)]
        if not found:
            return None
        runner = self.stack.runner
        return runner.bound(found[-1]) if runner is not None else found[-1].stage

    # -- checks before queueing -----------------------------------------------------------------
    def check_query(self, query: str, field: str) -> None:
        if not query.strip():
            raise ApiError(422, "empty_query", "the query is empty; give a question or keywords", field)
        check_text(query, field)
        limit = self.settings.limits.max_query_chars
        if len(query) > limit:
            raise ApiError(422, "query_too_long", f"the query has {len(query)} characters; the limit is {limit} "
                           "(--max-query-chars)", field)

    def check_k(self, k: int) -> None:
        limit = self.settings.limits.max_k
        if not 1 <= k <= limit:
            raise ApiError(422, "k_out_of_range", f"k must be between 1 and {limit} (--max-k), got {k}", "k")

    def check_search(self, body: SearchRequest) -> None:
        self.check_query(body.query, "query")
        self.check_k(body.k)

    def check_batch(self, body: SearchBatchRequest) -> None:
        limit = self.settings.limits.max_batch_queries
        if not body.queries:
            raise ApiError(422, "empty_batch", "queries is empty; give at least one query", "queries")
        if len(body.queries) > limit:
            raise ApiError(422, "too_many_queries", f"{len(body.queries)} queries; the limit is {limit} "
                           "(--max-batch-queries); split the batch", "queries")
        for i, query in enumerate(body.queries):
            self.check_query(query, f"queries[{i}]")
        self.check_k(body.k)

    def check_context(self, body: ContextRequest) -> None:
        self.check_query(body.query, "query")
        limit = self.settings.limits.max_k
        if not 1 <= body.candidates <= limit:
            raise ApiError(422, "k_out_of_range", f"candidates must be between 1 and {limit} (--max-k), got "
                           f"{body.candidates}", "candidates")

    def check_rerank(self, body: RerankRequest) -> None:
        limits = self.settings.limits
        self.check_query(body.query, "query")
        if not body.documents:
            raise ApiError(422, "empty_documents", "documents is empty; give the passages to rerank", "documents")
        if len(body.documents) > limits.max_rerank_documents:
            raise ApiError(422, "too_many_documents", f"{len(body.documents)} documents; the limit is "
                           f"{limits.max_rerank_documents} (--max-rerank-documents); split the call", "documents")
        for i, doc in enumerate(body.documents):
            text = doc if isinstance(doc, str) else doc.text
            check_unicode(doc if isinstance(doc, str) else _document_fields(doc), f"documents[{i}]")
            if len(text) > limits.max_document_chars:
                raise ApiError(422, "document_too_long", f"documents[{i}] has {len(text)} characters; the limit is "
                               f"{limits.max_document_chars} (--max-document-chars); cut it into passages",
                               f"documents[{i}]")
        if body.top_n is not None and body.top_n < 1:
            raise ApiError(422, "top_n_out_of_range", f"top_n must be at least 1, got {body.top_n}", "top_n")
        if self.reranker() is None:
            raise ApiError(404, "no_reranker", "the served pipeline has no cross_encoder stage, so /v1/rerank has no "
                           "model; serve a pipeline with one, e.g. `stagegraph serve hybrid-rerank --collection DIR "
                           "--reranker MODEL`")

    def check_writes(self, count: int | None = None) -> None:
        if self.settings.read_only:
            raise ApiError(403, "read_only", "this server runs with --read-only: writes are off; restart it without "
                           "--read-only (and with an API key) to write")
        limit = self.settings.limits.max_write_documents
        if count is not None and count > limit:
            raise ApiError(422, "too_many_documents", f"{count} documents; the limit is {limit} "
                           "(--max-write-documents); send them in several calls", "documents")

    def check_documents(self, body: UpsertRequest) -> list[dict[str, Any]]:
        """The documents as the writer takes them (ids NFC, text and titles cleaned, metadata within
        `settings.metadata`), or a 422 `invalid_document` naming the first that breaks a rule and its
        field, before anything is queued or written."""
        out = []
        for i, doc in enumerate(body.documents):
            try:
                out.append(check_record(doc.model_dump(), self.settings.metadata))
            except DocumentError as exc:
                raise document_error(i, exc) from None
        return out

    # -- work (on the runtimes' threads) ---------------------------------------------------------
    def _observe(self, timings_ms: dict[str, float]) -> None:
        for name, ms in timings_ms.items():
            self.metrics.stage_seconds.labels(name).observe(ms / 1000.0)

    def search(self, job: Job, body: SearchRequest) -> Done:
        queue_ms = job.queue_s * 1000.0
        with _partial(body.allow_partial) as report:
            result = self.stack.search(body.query, k=_fetch(body), filter=body.filter)
        result = _folded(result, body)
        self._observe(result.timings_ms)
        response = _response(result, body.explain, queue_ms, report.missing)
        return Done(response.model_dump_json(exclude_none=True).encode(),
                    {"queue": queue_ms, **result.timings_ms, "compute": job.compute_s * 1000.0})

    def explain(self, job: Job, body: ExplainRequest) -> Done:
        trace = self.stack.explain(body.query, body.doc_id, k=body.k, filter=body.filter)
        response = ExplainResponse(generation=self.stack.generation, query=body.query, doc_id=body.doc_id, k=body.k,
                                   lost_at=trace.lost_at, rank_before=trace.rank_before, rank_after=trace.rank_after,
                                   ranks=trace.ranks)
        return Done(response.model_dump_json().encode(), {"queue": job.queue_s * 1000.0, "compute": job.compute_s * 1000.0})

    def search_batch(self, job: Job, body: SearchBatchRequest) -> Done:
        queue_ms = job.queue_s * 1000.0
        with _partial(body.allow_partial) as report:
            results = [_folded(r, body) for r in self.stack.search_batch(body.queries, k=_fetch(body), filter=body.filter)]
        n = len(results)
        stage_ms = {name: ms * n for name, ms in (results[0].timings_ms.items() if results else ())}
        response = SearchBatchResponse(
            generation=results[0].generation if results else self.stack.generation,
            results=[_response(r, body.explain, queue_ms, report.missing) for r in results], timings_ms=stage_ms,
            total_ms=(results[0].total_ms * n) if results else 0.0, queue_ms=queue_ms,
        )
        return Done(response.model_dump_json(exclude_none=True).encode(),
                    {"queue": queue_ms, **stage_ms, "compute": job.compute_s * 1000.0})

    def context(self, job: Job, body: ContextRequest) -> Done:
        queue_ms = job.queue_s * 1000.0
        options = body.model_dump(exclude={"query", "budget_tokens", "filter"})
        result = self.stack.context(body.query, body.budget_tokens, filter=body.filter, **options)
        self._observe(result.timings_ms)
        response = ContextResponse(**dict(result), queue_ms=queue_ms)
        return Done(response.model_dump_json().encode(),
                    {"queue": queue_ms, **result.timings_ms, "compute": job.compute_s * 1000.0})

    def rerank(self, job: Job, body: RerankRequest, request_id: str) -> Done:
        queue_ms = job.queue_s * 1000.0
        stage = self.reranker()
        texts = [clean_text(d if isinstance(d, str) else d.text) for d in body.documents]  # as a document's text is
        t0 = time.perf_counter()
        scores = np.asarray(stage.predict([(body.query, t) for t in texts]), dtype=np.float64)
        ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.stage_seconds.labels(stage.name).observe(ms / 1000.0)
        order = np.lexsort((np.arange(len(texts)), -scores))
        if body.top_n is not None:
            order = order[: body.top_n]
        results = []
        for i in order.tolist():
            document = None
            if body.return_documents:
                doc = body.documents[i]
                document = {"text": doc} if isinstance(doc, str) else _document_fields(doc)
            results.append(RerankResult(index=i, relevance_score=float(scores[i]), document=document))
        response = RerankResponse(id=request_id, model=stage.model_name, results=results,
                                  timings_ms={"queue": queue_ms, stage.name: ms})
        return Done(response.model_dump_json(exclude_none=True).encode(),
                    {"queue": queue_ms, stage.name: ms, "compute": job.compute_s * 1000.0})

    def upsert(self, job: Job, documents: list[dict[str, Any]], wait: bool) -> Done:
        collection = self.stack.collection
        with _writer(collection, self.settings.lock_timeout_s, self.settings.metadata) as w:
            collection.refresh()  # the generation this writer starts from: its fields count against the limit
            budget = FieldBudget(collection.generation.fields(), self.settings.metadata)
            checked = []
            for i, record in enumerate(documents):
                try:
                    doc = as_document(record, self.settings.metadata)
                    budget.admit(doc.id, doc.metadata)
                except DocumentError as exc:
                    raise document_error(i, exc) from None
                checked.append(doc)
            with self.slots.hold():
                w.upsert(checked, source=HTTP)  # issue 22.6: HTTP writes are of source "http"
                generation = w.commit()
            changes, published = dict(w.changes), w.published
        collection.refresh()
        return self._publish(job, generation.number, changes, published, wait, "upsert")

    def delete(self, job: Job, doc_id: str, wait: bool) -> Done:
        collection = self.stack.collection
        doc_id = _known_id(doc_id)
        with _writer(collection, self.settings.lock_timeout_s) as w:
            if w.delete([doc_id], missing_ok=True):
                raise ApiError(404, "not_found", f"no document {doc_id!r} in the collection", "doc_id")
            with self.slots.hold():
                generation = w.commit()
            changes, published = dict(w.changes), w.published
        collection.refresh()
        return self._publish(job, generation.number, changes, published, wait, "delete")

    def _publish(self, job: Job, number: int, changes: dict[str, int], published: bool, wait: bool, op: str) -> Done:
        """The write is durable: answer now (unless `wait`), then move the stack to it and answer."""
        if published:
            self.metrics.writes.labels(op).inc()
        searchable = self.stack.generation >= number
        answer = WriteResponse(generation=number, published=published, searchable=searchable, **changes)
        if not wait and not searchable:
            job.resolve(Done(answer.model_dump_json().encode()))
        if not searchable:
            with self.slots.hold():
                self.stack.refresh()
            self.metrics.generation.set(self.stack.generation)
        answer.searchable = True
        return Done(answer.model_dump_json().encode())

    # -- answers from memory --------------------------------------------------------------------
    def document(self, doc_id: str) -> DocumentOut:
        generation = self.stack.collection.generation  # the newest durable one this process knows
        doc_id = _known_id(doc_id)
        entry = generation.document(doc_id)
        if entry is None:
            raise ApiError(404, "not_found", f"no document {doc_id!r} in the collection (generation "
                           f"{generation.number})", "doc_id")
        chunks = generation.chunks_of(doc_id)
        return DocumentOut(id=entry.id, title=entry.title, metadata=entry.metadata, generation=generation.number,
                           chunks=[ChunkOut(id=c.id, index=c.index, text=c.text) for c in chunks])

    def readiness(self) -> Ready:
        if self.stack is None or self.draining:
            return Ready(ready=False, reason="shutting down" if self.draining else "starting")
        if self.searcher is None:
            return Ready(ready=True, generation=self.stack.generation)
        shards = self.searcher.health()
        down = [s["shard"] for s in shards if not s["live"]]
        return Ready(ready=not down, generation=self.stack.generation, shards=shards,
                     reason=f"shard(s) {', '.join(map(str, down))} have no live replica" if down else None)

    def info(self) -> Info:
        s = self.settings
        stack = self.stack
        manifest = stack.current.manifest  # what searches read now
        return Info(
            version=_version("stagegraph"),
            pipeline=stack.pipeline.to_config(),
            stages=self._stages,
            collection={"name": stack.collection.layout.root.name, "generation": stack.generation,
                        "newest_generation": read_current(stack.collection.layout),  # on disk, whoever wrote it
                        "documents": manifest.documents, "chunks": manifest.chunks, "created": manifest.created},
            read_only=s.read_only, workers=s.worker_count, threads_per_worker=s.threads,
            in_progress=self.search_pool.thread_count, queue=s.queue, deadline_ms=s.deadline_ms,
            batching=s.batching.model_dump(), limits={**s.limits.model_dump(), "metadata": s.metadata.model_dump()},
            versions={"python": platform.python_version(), **{n: v for n in VERSIONED if (v := _version(n))}},
        )


def _writer(collection: Collection, timeout: float, limits: Any = None):
    """The collection's writer; another process holding the lock is a 503 to retry, not the client's fault."""
    writer = collection.writer(timeout=timeout, limits=limits)

    class _Guard:
        def __enter__(self):
            try:
                return writer.__enter__()
            except CollectionError as exc:
                if "another writer holds" in str(exc):
                    raise ApiError(503, "writer_busy", "another writer holds the collection's lock; retry later",
                                   headers={"Retry-After": "5"}) from None
                raise

        def __exit__(self, *exc):
            return writer.__exit__(*exc)

    return _Guard()


def check_text(text: str, field: str) -> None:
    """422 `invalid_text` for a query holding a lone surrogate or a control character (passages to rerank
    are cleaned for scoring instead, as a document's text is; `check_unicode` refuses lone surrogates in them)."""
    problem = text_problem(text)
    if problem is not None:
        raise ApiError(422, "invalid_text", f"{field} holds {problem}; send text without them", field)


def check_unicode(value: Any, field: str) -> None:
    """422 `invalid_text` for a lone surrogate in any string of `value` (a rerank document, whose fields
    are sent back as given, and a lone surrogate cannot be written as UTF-8)."""
    stack = [(value, field)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                raise ApiError(422, "invalid_text", f"{where} holds a lone surrogate U+{ord(found.group()):04X} at "
                               f"character {found.start()}; send valid Unicode", where)
        elif isinstance(item, dict):
            stack += [(k, where) for k in item] + [(v, f"{where}.{k}") for k, v in item.items() if isinstance(k, str)]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{n}]") for n, v in enumerate(item)]


def document_error(index: int, exc: DocumentError) -> ApiError:
    """A document of a PUT that breaks a rule, as a 422 naming it and its field (documents[3].metadata.n)."""
    return ApiError(422, "invalid_document", f"documents[{index}]: {exc}", f"documents[{index}].{exc.field}")


def _known_id(doc_id: str) -> str:
    """The id as the collection stores it (NFC); one that no document can have stays as given (a 404)."""
    try:
        return normalize_id(doc_id)
    except DocumentError:
        return doc_id


#: with per_doc, hits fetched per hit returned (chunks of one document often fill the top ranks)
FETCH_PER_DOC = 10


def _fetch(body: Any) -> int:
    return body.k if body.per_doc is None else body.k * FETCH_PER_DOC


def _folded(result: Any, body: Any) -> Any:
    """`per_doc` chunks of each document at most, `k` hits at most (`SearchResult.per_document`)."""
    if body.per_doc is None:
        return result
    folded = result.per_document(body.per_doc)
    return folded.model_copy(update={"hits": folded.hits[: body.k]})


@contextlib.contextmanager
def _partial(allow: bool):
    """A search's report (`stagegraph.pipeline.partial`); a shard no replica answers is a 503 to retry."""
    try:
        with search_report(allow_partial=allow) as report:
            yield report
    except PartUnavailable as exc:
        raise ApiError(503, "shard_unavailable", str(exc), headers={"Retry-After": "1"}) from None


def _response(result: Any, explain: bool, queue_ms: float, partial: list[str] | None = None) -> SearchResponse:
    hits = [HitOut.of(h, explain=explain) for h in result.hits]
    return SearchResponse(query=result.query, generation=result.generation, hits=hits, timings_ms=result.timings_ms,
                          total_ms=result.total_ms, queue_ms=queue_ms, partial=partial or None, hint=result.hint)


def _document_fields(doc: RerankDocument) -> dict[str, Any]:
    return {"text": doc.text, **(doc.model_extra or {})}


def _fingerprint(stage: Any) -> str | None:
    """A stage's fingerprint, for information only (None where it cannot be computed yet)."""
    try:
        return stage.fingerprint()
    except Exception:  # noqa: BLE001 - information only: a model not found yet is the binding's error to give
        return None


def _describe(step: Any, fingerprint: str | None) -> dict[str, Any]:
    stage = step.stage
    out: dict[str, Any] = {"name": step.name, "type": getattr(stage, "type_name", type(stage).__name__)}
    model = getattr(getattr(stage, "config", None), "model", None)
    if model:
        out["model"] = str(model)
    if fingerprint is not None:
        out["fingerprint"] = fingerprint
    return out


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
