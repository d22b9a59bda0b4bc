"""Running the app under uvicorn: bind, say where, serve until SIGTERM/SIGINT, drain, close.

`run(service, api_key=...)` binds the socket itself (so `--port 0` gets an ephemeral port and the
line it prints names the real one), prints `stagegraph serve: listening on http://HOST:PORT` only
after every model and index is loaded (the service was opened before), and serves. On SIGTERM or
SIGINT uvicorn stops accepting connections, lets requests in flight finish for up to
`shutdown_timeout_s` (then cancels them), the app's lifespan drains the workers, and `run` closes
the stack, which releases the collection's reader lease. The signal is taken over for the
duration, so the process then returns normally (exit 0) instead of dying by it.

`uvicorn_config` is the one place uvicorn is configured: the guarded protocol of
`stagegraph.serve.protocol` (header size and time limits, no draining of unread bodies) runs under
every request, before the app and its API key.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from stagegraph.serve.service import Service
from stagegraph.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (IPv4 or IPv6, as `host` reads)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def uvicorn_config(app: Any, settings: ServeSettings, **overrides: Any) -> Any:
    """The uvicorn configuration `run` serves `app` with: the guarded HTTP protocol
    (`stagegraph.serve.protocol`: header size and time limits before the app), keep-alive, the
    connection cap, graceful shutdown. Tests start in-thread servers from it too."""
    import uvicorn

    # uvicorn's own cap on open connections and tasks (its 503 comes before any parsing): a guard for the
    # process's file descriptors, well above what the runtimes admit (admission is theirs: --queue)
    limit = 1024 + settings.in_progress_count + settings.queue + settings.write_queue
    try:
        from stagegraph.serve.protocol import guarded_protocol

        http: Any = guarded_protocol(settings.limits.max_header_bytes, settings.header_timeout_s)
    except ImportError:  # no httptools (it comes with the serve extra): h11 caps the header size, not its time
        http = "h11"
    options = dict(log_level="warning", access_log=False, lifespan="on", server_header=False, http=http,
                   h11_max_incomplete_event_size=settings.limits.max_header_bytes,
                   timeout_graceful_shutdown=settings.shutdown_timeout_s, timeout_keep_alive=5,
                   limit_concurrency=limit)
    return uvicorn.Config(app, **{**options, **overrides})


def run(service: Service, *, api_key: str | None = None, say: Callable[[str], None] = print) -> int:
    import uvicorn

    from stagegraph.serve.app import create_app

    settings = service.settings
    app = create_app(service, api_key=api_key)
    sock = bind(settings.host, settings.port)
    server = uvicorn.Server(uvicorn_config(app, settings))
    caught: list[int] = []

    def remember(signum: int, frame: Any) -> None:  # uvicorn re-raises the signal it handled: absorb it
        caught.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        say(f"stagegraph serve: listening on {url_of(sock)} (generation {service.stack.generation}, "
            f"{settings.worker_count} workers x {settings.threads} threads, queue {settings.queue}, "
            f"micro-batching {'on' if settings.batching.enabled else 'off'}"
            f"{', read-only' if settings.read_only else ''}{', API key required' if api_key else ''})")
        sys.stdout.flush()
        server.run(sockets=[sock])
    finally:  # the signals stay absorbed until the collection is closed: a second SIGTERM cannot cut the close short
        sock.close()
        try:
            service.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    say("stagegraph serve: stopped; collection closed")
    return 0
