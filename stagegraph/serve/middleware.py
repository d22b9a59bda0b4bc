"""The ASGI layers every request passes before its route: request id, metrics, last-resort 500, body limit.

* `RequestContext` (outermost): gives each request an id (`X-Request-Id` on every response),
  counts it in flight, records its route template, status and time in the metrics, and turns an
  exception nothing else handled into a 500 whose body holds only the request id; the traceback is
  logged here, with that id, and never sent.
* `BodyLimit`: reads a request body up to `max_body_bytes` (refusing a larger `Content-Length` at
  once, and a larger streamed body as soon as it passes the limit) with 413, then replays it to the
  app; after the body, `receive` is the server's own again, so a route can still see the client
  disconnect.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders

from stagegraph.serve.errors import error_response, send_error

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


class BodyLimit:
    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.limit = int(max_body_bytes)

    def _too_large(self, size: str) -> tuple[int, str, str]:
        return (413, "body_too_large",
                f"the body is {size}; the limit is {self.limit} bytes (--max-body-kb); send fewer or shorter documents")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(scope, receive, send, 400, "invalid_header", "Content-Length is not a number")
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

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
