"""The server's Prometheus metrics, in a registry of its own (`GET /metrics` renders it).

| metric | type | labels | what |
| --- | --- | --- | --- |
| `stagegraph_requests_total` | counter | route, method, status | HTTP requests answered (route is the template, `/v1/documents/{doc_id}`) |
| `stagegraph_request_duration_seconds` | histogram | route | server-side time of a request, end to end |
| `stagegraph_stage_duration_seconds` | histogram | stage | time in each pipeline stage, per search query |
| `stagegraph_queue_wait_seconds` | histogram | pool | time a request waited for a worker (pool: search, write) |
| `stagegraph_compute_duration_seconds` | histogram | pool | time a request held a worker |
| `stagegraph_queue_depth` | gauge | pool | requests admitted and waiting |
| `stagegraph_in_flight_requests` | gauge | | HTTP requests being handled |
| `stagegraph_rejected_total` | counter | reason | overloaded (503), deadline (504), disconnected, draining |
| `stagegraph_rerank_pairs_total` | counter | | (query, document) pairs the cross-encoder scored |
| `stagegraph_rerank_batch_requests` | histogram | | requests whose pairs shared one model call |
| `stagegraph_generation` | gauge | | the collection generation being searched |
| `stagegraph_writes_total` | counter | op | writes published (upsert, delete) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("stagegraph_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("stagegraph_request_duration_seconds", "server-side request time, end to end",
                                         ["route"], buckets=SECONDS, registry=r)
        self.stage_seconds = Histogram("stagegraph_stage_duration_seconds", "time in each pipeline stage per query",
                                       ["stage"], buckets=SECONDS, registry=r)
        self.queue_seconds = Histogram("stagegraph_queue_wait_seconds", "time waiting for a worker", ["pool"],
                                       buckets=SECONDS, registry=r)
        self.compute_seconds = Histogram("stagegraph_compute_duration_seconds", "time holding a worker", ["pool"],
                                         buckets=SECONDS, registry=r)
        self.queue_depth = Gauge("stagegraph_queue_depth", "requests admitted and waiting for a worker", ["pool"], registry=r)
        self.in_flight = Gauge("stagegraph_in_flight_requests", "HTTP requests being handled", registry=r)
        self.rejected = Counter("stagegraph_rejected", "requests refused or dropped, by reason", ["reason"], registry=r)
        self.rerank_pairs = Counter("stagegraph_rerank_pairs", "(query, document) pairs scored by the cross-encoder", registry=r)
        self.rerank_batch = Histogram("stagegraph_rerank_batch_requests", "requests whose pairs shared one model call",
                                      buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.generation = Gauge("stagegraph_generation", "the collection generation being searched", registry=r)
        self.writes = Counter("stagegraph_writes", "writes published", ["op"], registry=r)
        for pool in ("search", "write"):
            self.queue_depth.labels(pool)
        for reason in ("overloaded", "deadline", "disconnected", "draining"):
            self.rejected.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
