"""Secure by default: the API key, where the server may listen, and what a request may never do.

* The key is read from an environment variable (`STAGEGRAPH_API_KEY`, or the name given with
  `--api-key-env`), never from the command line, where `ps` shows it to every user. When set it is
  required on every endpoint except `/healthz` and `/readyz`, as `Authorization: Bearer KEY` or
  `X-API-Key: KEY`, and compared in constant time (`hmac.compare_digest` of SHA-256 digests, so not
  even the length leaks). `ApiKeyAuth` checks it before the body is read.
* The server binds 127.0.0.1 unless told otherwise; `exposure_warning` is the line printed when it
  is bound elsewhere without a key.
* Writes are off entirely with `--read-only` (the write routes answer 403 and change nothing).
* CORS is off unless `--cors-origin` names the origins a browser may call from.
* No request names a file path: the collection and the config are fixed when the server starts;
  document ids are keys looked up in the collection's tables, never opened as files.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from stagegraph.errors import InputError
from stagegraph.serve.errors import send_error
from stagegraph.serve.settings import is_loopback

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def read_api_key(variable: str) -> str | None:
    """The key in `$variable`; None when unset. An empty or blank value is an error (a typo'd export)."""
    value = os.environ.get(variable)
    if value is None:
        return None
    if not value.strip():
        raise InputError(f"${variable} is set but empty; export the API key in it, or unset it to run without a key")
    return value.strip()


def exposure_warning(host: str, has_key: bool, read_only: bool) -> str | None:
    if is_loopback(host) or has_key:
        return None
    writes = "" if read_only else " and write"
    return (f"listening on {host} without an API key: anyone who can reach this port can search{writes}; "
            "set $STAGEGRAPH_API_KEY (or bind 127.0.0.1)")


class ApiKeyAuth:
    """ASGI middleware: 401 unless the request carries the key (see the module docstring)."""

    def __init__(self, app: Any, key: str | None):
        self.app = app
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = None
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
        if given is None:
            return False
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self._digest is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.allowed(scope.get("headers", [])):
            await send_error(scope, receive, send, 401, "unauthorized",
                             "this server needs its API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                             headers={"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)
