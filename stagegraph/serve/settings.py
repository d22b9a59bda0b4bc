"""`ServeSettings`: every limit and switch of the HTTP server, with its default, in one record.

The command line (`stagegraph serve`) fills it from flags; tests build it directly. Each limit names
the flag that changes it, and error messages quote that flag, so a refused request says how the
operator can raise the limit. Sizing: `workers` computations run at once, each with
`cores // workers` torch/FAISS threads (pinned for the whole process), so threads x concurrent
executions never exceed the cores; at most `queue` more wait, and the next is refused with 503 at once.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.corpora.validate import MetadataLimits
from stagegraph.pipeline.threads import usable_cores

DEFAULT_API_KEY_ENV = "STAGEGRAPH_API_KEY"
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class Limits(BaseModel):
    """What one request may ask for; beyond it, a 4xx naming the limit and its flag."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(1_048_576, ge=1024, description="--max-body-kb (every method)")
    #: the request line and headers together; beyond it 431 and the connection closed (stagegraph.serve.protocol)
    max_header_bytes: int = Field(32_768, ge=1024, description="--max-header-kb")
    #: nesting of a JSON body ({"a": [1]} is 2); beyond it 422 json_too_deep, before the body is parsed
    max_json_depth: int = Field(64, ge=2, le=512, description="--max-json-depth")
    max_query_chars: int = Field(2048, ge=1, description="--max-query-chars")
    max_k: int = Field(100, ge=1, description="--max-k")
    max_batch_queries: int = Field(32, ge=1, description="--max-batch-queries")
    max_rerank_documents: int = Field(256, ge=1, description="--max-rerank-documents")
    max_document_chars: int = Field(20_000, ge=1, description="--max-document-chars (rerank documents)")
    max_write_documents: int = Field(1000, ge=1, description="--max-write-documents")


class Batching(BaseModel):
    """Micro-batching of cross-encoder pairs from concurrent requests (`stagegraph.serve.batching`)."""

    model_config = ConfigDict(extra="forbid")

    #: off by default: on this project's 2-core machine it did not beat scoring each request's pairs
    #: on their own (docs/serving.md, `benchmarks/serve.py`); a machine with more cores or a GPU may differ
    enabled: bool = False
    #: a model call takes pairs until their (estimated) tokens reach this budget
    max_tokens: int = Field(8192, ge=1)
    #: the first request of a batch waits at most this long for others (less when none can come)
    max_wait_ms: float = Field(2.0, ge=0.0)


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: concurrent CPU executions (None: the usable cores); torch/FAISS threads = cores // workers
    workers: int | None = Field(None, ge=1)
    #: requests in progress at once (None: workers, or 4 x workers with batching so pairs can meet)
    in_progress: int | None = Field(None, ge=1)
    #: admitted requests waiting for a worker; one more gets 503 + Retry-After
    queue: int = Field(64, ge=0)
    write_queue: int = Field(16, ge=0)
    #: a search or rerank not answered within this is dropped with 504 (a request may ask for less)
    deadline_ms: float = Field(10_000.0, gt=0)
    #: a write waiting longer than this to start is dropped with 504 (a started write always finishes)
    write_timeout_s: float = Field(120.0, gt=0)
    lock_timeout_s: float = Field(60.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    #: a request line and headers not complete this long after their first byte (or the connection's
    #: opening) get 408 and the connection closed (stagegraph.serve.protocol)
    header_timeout_s: float = Field(10.0, gt=0)
    read_only: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    api_key_env: str = DEFAULT_API_KEY_ENV
    limits: Limits = Field(default_factory=Limits)
    #: what a PUT's documents may carry (--max-metadata-fields, --max-metadata-depth, --max-metadata-kb, --max-collection-fields)
    metadata: MetadataLimits = Field(default_factory=MetadataLimits)
    batching: Batching = Field(default_factory=Batching)
    #: seconds between looks for a generation another process published (0: only the server's own writes)
    watch_s: float = Field(0.1, ge=0)

    @property
    def cores(self) -> int:
        return usable_cores()

    @property
    def worker_count(self) -> int:
        return self.workers or self.cores

    @property
    def threads(self) -> int:
        """torch/FAISS threads per execution: threads x workers <= cores."""
        return max(1, self.cores // self.worker_count)

    @property
    def in_progress_count(self) -> int:
        if self.in_progress:
            return max(self.in_progress, self.worker_count)
        return self.worker_count * (4 if self.batching.enabled else 1)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names; False for 0.0.0.0, :: and anything else."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
