"""The connection layer under the app: limits on a request's header block, before any route or key.

uvicorn's httptools protocol reads a request line and headers of any size, for as long as the client
takes, and an early answer (401, 413, 404) on a keep-alive connection lets it read the rest of the
body to the end and throw it away. `guarded_protocol(max_header_bytes, header_timeout_s)` is
uvicorn's `HttpToolsProtocol` with those holes closed; `stagegraph serve` runs it (`server.uvicorn_config`):

* **header size**: a request line plus headers over `max_header_bytes` (`--max-header-kb`) is
  answered 431 `headers_too_large` and the connection closed as soon as the bytes read pass the
  limit (at most one socket read, 256 KiB, beyond it is ever held);
* **header time**: a header block not complete `header_timeout_s` (`--header-timeout`) after its
  first byte, or after the connection opened, is answered 408 `header_timeout` (closed silently
  when nothing came) -- a client that sends one header line every few seconds is cut off;
* **unread bodies are never drained**: when a response is complete while the request's body is
  still arriving, the connection is closed instead of reading the body to its end;
* uvicorn's own plain-text refusals become the API's JSON shape: a request the HTTP parser rejects
  is 400 `invalid_http`, and uvicorn's connection cap is 503 `overloaded`.

These checks run before the ASGI app, so before the API key: an unauthenticated client cannot make
the server hold more than the limits either. Each refusal is logged at INFO, never echoed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stagegraph.serve.models import ErrorBody, ErrorDetail

log = logging.getLogger("stagegraph.serve")

REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


def raw_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 error response (JSON body, `Connection: close`) as bytes, for the transport itself."""
    body = ErrorBody(error=ErrorDetail(code=code, message=message)).model_dump_json(exclude_none=True).encode()
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS[status]), b"content-type: application/json",
             b"content-length: %d" % len(body), b"connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def overloaded(scope: dict, receive: Any, send: Any) -> None:
    """uvicorn's connection cap (`limit_concurrency`) in the API's shape."""
    body = ErrorBody(error=ErrorDetail(code="overloaded", message="the server has too many open connections; retry "
                                       "after 1 s")).model_dump_json(exclude_none=True).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def guarded_protocol(max_header_bytes: int, header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the limits of the module docstring."""
    from uvicorn.protocols.http.flow_control import service_unavailable
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        limit = int(max_header_bytes)
        timeout = float(header_timeout_s)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_headers = False      # between a request's first byte (or the connection's start) and its last header
            self._header_bytes = 0        # bytes read while in the header block (a lower bound past a message start)
            self._header_timer: asyncio.TimerHandle | None = None
            self._refused = False

        # -- the header block's clock and size ------------------------------------------------------
        def _begin_headers(self) -> None:
            self._in_headers, self._header_bytes = True, 0
            self._cancel_timer()
            self._header_timer = self.loop.call_later(self.timeout, self._headers_too_slow)

        def _cancel_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, status: int, code: str, message: str) -> None:
            self._refused, self._in_headers = True, False
            self._cancel_timer()
            log.info("refused a connection from %s: %d %s", self.client, status, code)
            if not self.transport.is_closing():
                self.transport.write(raw_error(status, code, message))
                self.transport.close()

        def _too_large(self) -> None:
            self._refuse(431, "headers_too_large", f"the request line and headers pass {self.limit} bytes "
                         "(--max-header-kb); send shorter headers")

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self._in_headers or self.transport.is_closing():
                return
            if self._header_bytes == 0 and self.cycle is None:
                self._refused = True  # a connection that never sent a byte: nothing to answer
                self.transport.close()
                return
            self._refuse(408, "header_timeout", f"the request headers did not arrive within {self.timeout:g} s "
                         "(--header-timeout)")

        # -- uvicorn's protocol ----------------------------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._begin_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            counting = self._in_headers  # begun before this read: every byte up to the last header is a header byte
            super().data_received(data)
            if counting and self._in_headers and not self._refused:
                self._header_bytes += len(data)
                if self._header_bytes > self.limit:
                    self._too_large()

        def send_400_response(self, msg: str) -> None:
            if self._refused:
                return
            self._refuse(400, "invalid_http", "the request is not valid HTTP/1.1")

        # the parser's callbacks: after a refusal, the rest of what was read is ignored
        def on_message_begin(self) -> None:
            if self._refused:
                return
            super().on_message_begin()
            if not self._in_headers:  # the next request on a kept-alive connection
                self._begin_headers()

        def on_url(self, url: bytes) -> None:
            if not self._refused:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limit:
                self._too_large()
                return
            self._in_headers = False
            self._cancel_timer()
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            super()._start_asgi_task(cycle, overloaded if app is service_unavailable else app)

        def on_response_complete(self) -> None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not self.pipeline and not self.transport.is_closing():
                self.transport.close()  # answered before the body ended (401, 413, 404): never drain it
                return
            super().on_response_complete()

    return GuardedHttpToolsProtocol
