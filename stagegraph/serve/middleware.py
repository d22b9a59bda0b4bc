"""The ASGI layers every request passes before its route: request id, metrics, last-resort 500, body limit.

* `RequestContext` (outermost): gives each request an id (`X-Request-Id` on every response),
  counts it in flight, records its route template, status and time in the metrics, and turns an
  exception nothing else handled into a 500 whose body holds only the request id; the traceback is
  logged here, with that id, and never sent.
* `WriteGate`: a write to the documents on a read-only server is 403 before its body is read.
* `BodyLimit`: reads a request body, on every method, up to `max_body_bytes` (refusing a larger
  `Content-Length` at once, and a larger streamed body as soon as it passes the limit) with 413,
  refuses a body that is not UTF-8 (400) or nests deeper than `max_json_depth` (422, counted without
  recursion, so the JSON parser's own recursion limit is never what answers), then replays it to the
  app; after the body, `receive` is the server's own again, so a route can still see the client
  disconnect.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.datastructures import MutableHeaders

from stagegraph.serve.errors import ApiError, api_error_response, error_response, send_error

log = logging.getLogger("stagegraph.serve")


class RequestContext:
    def __init__(self, app: Any, metrics: Any):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last resort: log it, answer a bare 500
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            if not status["sent"]:
                response = error_response(500, "internal_error",
                                          f"the server failed on this request; the operator's log has request id {request_id}",
                                          request_id=request_id)
                await response(scope, receive, send_with_id)
            status["code"] = 500
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - started)


WRITE_METHODS = frozenset({"PUT", "DELETE", "PATCH", "POST"})


def is_document_write(scope: dict) -> bool:
    path = scope.get("path", "")
    return scope.get("method") in WRITE_METHODS and (path == "/v1/documents" or path.startswith("/v1/documents/"))


class WriteGate:
    """Refuses a write to the documents before its body is read (`check` raises the `ApiError`, e.g. 403
    `read_only`), so on a `--read-only` server a PUT with a broken or huge body is 403 like any other."""

    def __init__(self, app: Any, check: Callable[[], None]):
        self.app = app
        self.check = check

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_document_write(scope):
            try:
                self.check()
            except ApiError as exc:
                await api_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN, _CLOSE = np.zeros(256, np.int8), np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE[[ord("]"), ord("}")]] = 1


def json_depth(body: bytes) -> int:
    """How deep `body`'s arrays and objects nest (`{"a": [1]}` is 2), counted without parsing it (so
    without recursion): brackets outside strings, as a running sum. Exact for valid JSON."""
    brackets = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = _OPEN[brackets].astype(np.int32) - _CLOSE[brackets]
    return int(np.cumsum(steps).max(initial=0))


class BodyLimit:
    """Every method's body: at most `max_body_bytes` (413 `body_too_large`), UTF-8 (400 `invalid_json`),
    nested at most `max_json_depth` deep (422 `json_too_deep`), all checked before any parser sees it."""

    def __init__(self, app: Any, max_body_bytes: int, max_json_depth: int = 64):
        self.app = app
        self.limit = int(max_body_bytes)
        self.max_depth = int(max_json_depth)

    def _too_large(self, size: str) -> tuple[int, str, str]:
        return (413, "body_too_large",
                f"the body is {size}; the limit is {self.limit} bytes (--max-body-kb); send fewer or shorter documents")

    def _malformed(self, body: bytes) -> tuple[int, str, str] | None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return (400, "invalid_json", f"the body is not UTF-8 (byte {exc.start}); send JSON as UTF-8 "
                    "with Content-Type: application/json")
        depth = json_depth(body)
        if depth > self.max_depth:
            return (422, "json_too_deep", f"the body nests {depth} levels deep; the limit is {self.max_depth} "
                    "(--max-json-depth)")
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # every method: a GET, HEAD, DELETE or OPTIONS body is held to the same limit
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(scope, receive, send, 400, "invalid_header", "Content-Length is not a number",
                                     "Content-Length", headers={"Connection": "close"})
                    return
                if declared > self.limit:
                    await send_error(scope, receive, send, *self._too_large(f"{declared} bytes"),
                                     headers={"Connection": "close"})
                    return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await send_error(scope, receive, send, *self._too_large(f"over {self.limit} bytes"),
                                 headers={"Connection": "close"})
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False
        whole = b"".join(chunks)
        problem = self._malformed(whole) if whole else None
        if problem is not None:
            await send_error(scope, receive, send, *problem)
            return

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
