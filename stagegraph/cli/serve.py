"""`stagegraph serve CONFIG --collection DIR`: the pipeline over a collection behind an HTTP API.

Loads every index and model, then prints where it listens (127.0.0.1:8000 unless told otherwise);
SIGTERM or Ctrl-C drains it and closes the collection. The API key comes from $STAGEGRAPH_API_KEY
(or the variable `--api-key-env` names), never from an argument. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import sys

from stagegraph.cli.app import Exit, load_pipeline
from stagegraph.cli.limits import add_metadata_limit_args, metadata_limits_of


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a pipeline over a collection as an HTTP API (search, rerank, documents)",
                       description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("config", help="pipeline YAML: a path, or a bundled config such as hybrid-rerank")
    p.add_argument("--collection", required=True, help="the collection directory (`stagegraph ingest`)")
    p.add_argument("--reranker", help="model for every cross-encoder stage (HF id or local path; or $STAGEGRAPH_RERANKER)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    p.add_argument("--workers", type=int, help="concurrent computations (default: the usable cores); "
                   "torch/FAISS threads = cores // workers")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a worker; beyond, 503 (default 64)")
    p.add_argument("--deadline-ms", type=float, default=10_000.0,
                   help="a search or rerank unanswered after this is dropped with 504 (default 10000)")
    p.add_argument("--write-timeout", type=float, default=120.0, help="seconds a write may wait to start (default 120)")
    p.add_argument("--lock-timeout", type=float, default=60.0, help="seconds to wait for another writer (default 60)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    p.add_argument("--batching", choices=["on", "off"], default="off",
                   help="micro-batch cross-encoder pairs of concurrent requests (default off)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="token budget of one batched model call (default 8192)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="most a request waits for company (default 2)")
    p.add_argument("--max-body-kb", type=int, default=1024, help="request body limit, every method (default 1024 KiB)")
    p.add_argument("--max-header-kb", type=int, default=32,
                   help="request line + headers limit; beyond, 431 and the connection closed (default 32 KiB)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="headers not complete this long after their first byte: 408, connection closed (default 10)")
    p.add_argument("--max-json-depth", type=int, default=64, help="nesting of a JSON body; beyond, 422 (default 64)")
    p.add_argument("--max-query-chars", type=int, default=2048, help="longest query (default 2048)")
    p.add_argument("--max-k", type=int, default=100, help="largest k (default 100)")
    p.add_argument("--max-batch-queries", type=int, default=32, help="queries per /v1/search/batch (default 32)")
    p.add_argument("--max-rerank-documents", type=int, default=256, help="documents per /v1/rerank (default 256)")
    p.add_argument("--max-document-chars", type=int, default=20_000, help="longest rerank document (default 20000)")
    p.add_argument("--max-write-documents", type=int, default=1000, help="documents per PUT (default 1000)")
    add_metadata_limit_args(p)
    p.add_argument("--read-only", action="store_true", help="refuse every write (PUT and DELETE answer 403)")
    p.add_argument("--watch", type=float, default=0.1, metavar="SECONDS",
                   help="look this often for a generation another process published, and serve it (default 0.25; 0: off)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browsers call from this origin (repeatable; default: no CORS)")
    p.add_argument("--api-key-env", default="STAGEGRAPH_API_KEY", metavar="NAME",
                   help="the environment variable holding the API key (default STAGEGRAPH_API_KEY)")
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # refused with the reason, see handle()
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="ray: search a sharded collection's shards on Ray actors (docs/scaling.md); "
                        "local (default): in this process")
    p.add_argument("--ray-address", help="the Ray cluster (HOST:PORT of its head; default $RAY_ADDRESS, else a local one)")
    p.add_argument("--replicas", type=int, default=1, help="actors per shard with --executor ray (default 1)")
    p.set_defaults(func=handle)


def settings_of(args: argparse.Namespace):
    from pydantic import ValidationError

    from stagegraph.errors import InputError
    from stagegraph.serve.settings import Batching, Limits, ServeSettings

    try:
        return ServeSettings(
            host=args.host, port=args.port, workers=args.workers, queue=args.queue, deadline_ms=args.deadline_ms,
            write_timeout_s=args.write_timeout, lock_timeout_s=args.lock_timeout, shutdown_timeout_s=args.shutdown_timeout,
            header_timeout_s=args.header_timeout,
            read_only=args.read_only, cors_origins=args.cors_origin, api_key_env=args.api_key_env, watch_s=args.watch,
            batching=Batching(enabled=args.batching == "on", max_tokens=args.batch_tokens, max_wait_ms=args.batch_wait_ms),
            limits=Limits(max_body_bytes=args.max_body_kb * 1024, max_header_bytes=args.max_header_kb * 1024,
                          max_json_depth=args.max_json_depth, max_query_chars=args.max_query_chars, max_k=args.max_k,
                          max_batch_queries=args.max_batch_queries, max_rerank_documents=args.max_rerank_documents,
                          max_document_chars=args.max_document_chars, max_write_documents=args.max_write_documents),
            metadata=metadata_limits_of(args),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"invalid serve setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def handle(args: argparse.Namespace) -> int:
    from stagegraph.errors import InputError
    from stagegraph.serve.security import exposure_warning, read_api_key
    from stagegraph.serve.server import run
    from stagegraph.serve.service import Service

    if args.api_key is not None:
        raise InputError(f"--api-key is refused: command lines are visible to every user (ps); put the key in "
                         f"${args.api_key_env} instead")
    settings = settings_of(args)
    key = read_api_key(settings.api_key_env)
    warning = exposure_warning(settings.host, key is not None, settings.read_only)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    pipeline = load_pipeline(args)
    if args.executor != "ray":
        if args.ray_address or args.replicas != 1:
            raise InputError("--ray-address and --replicas need --executor ray")
        run(Service.open(pipeline, args.collection, settings), api_key=key)
        return Exit.OK
    from stagegraph.collection.sharded import is_sharded
    from stagegraph.scale.cluster import RayCluster
    from stagegraph.scale.shards import ShardedSearch

    if not is_sharded(args.collection):
        raise InputError(f"--executor ray serves a sharded collection, and {args.collection} is not one; shard it into a new "
                         f"directory with `stagegraph collection reshard {args.collection} NEW_DIR --shards N`")
    with RayCluster(args.ray_address) as cluster:
        search = ShardedSearch(cluster, args.collection, pipeline, replicas=args.replicas,
                               deadline_s=settings.deadline_ms / 1000.0)
        try:
            service = Service.open(pipeline, args.collection, settings, searcher=search)
        except BaseException:
            search.close()
            raise
        run(service, api_key=key)
    return Exit.OK
