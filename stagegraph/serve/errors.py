"""Every refusal as one JSON shape, `{"error": {"code", "message", "field"}}`, and its status code.

* `ApiError(status, code, message, field)`: what routes raise for a request that breaks a rule;
* `validation_error(errors)`: FastAPI's validation errors (invalid JSON, wrong types, unknown or
  missing fields) as one `ApiError`, the first error named with its field path (`documents[3].text`);
* `from_exception(exc)`: stagegraph's own errors: a `FilterError` is `invalid_filter`, a
  `DocumentError` (`stagegraph.corpora.validate`) `invalid_document` with the field at fault, any
  other `InputError` (a document the collection refuses) `invalid_input`, each the client's 422, with
  every absolute path in the message replaced by `<path>` (no server path in any response); anything
  else is a 500 whose body carries only a request id (the traceback goes to the server's log, never
  to the client);
* `error_response` / `send_error`: the response, for routes and for the ASGI middlewares.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from stagegraph.corpora.filters import FilterError
from stagegraph.corpora.validate import DocumentError
from stagegraph.errors import InputError
from stagegraph.serve.models import ErrorBody, ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, field: str | None = None, *,
                   request_id: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field, request_id=request_id))
    return Response(body.model_dump_json(exclude_none=True), status_code=status, media_type="application/json",
                    headers=headers)


def api_error_response(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, error.field, headers=error.headers)


async def send_error(scope: dict, receive: Any, send: Any, status: int, code: str, message: str,
                     field: str | None = None, headers: dict[str, str] | None = None) -> None:
    await error_response(status, code, message, field, headers=headers)(scope, receive, send)


def field_path(loc: Sequence[Any]) -> str | None:
    """('body', 'documents', 3, 'text') -> 'documents[3].text'; None for the body as a whole."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(errors: Sequence[dict[str, Any]]) -> ApiError:
    """One of FastAPI's validation errors as an `ApiError` (400 for bad JSON, else 422): bad JSON first,
    then an unknown field, then the first of the rest."""
    if not errors:
        return ApiError(422, "invalid_request", "the request does not match the API; see /docs")
    rank = {"json_invalid": 0, "extra_forbidden": 1}  # a misspelt field explains the "missing" one after it
    e = min(errors, key=lambda err: rank.get(err.get("type", ""), 2))
    kind, loc = e.get("type", ""), tuple(e.get("loc", ()))
    field = field_path(loc)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if kind == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return ApiError(400, "invalid_json", f"the body is not valid JSON{': ' + str(detail) if detail else ''}; "
                        "send one JSON object with Content-Type: application/json")
    if kind == "extra_forbidden":
        return ApiError(422, "unknown_field", f"unknown field {field!r}; see /docs for the fields this endpoint takes{more}", field)
    if kind == "missing":
        if field is None:
            return ApiError(422, "missing_body", "the request needs a JSON body; see /docs")
        return ApiError(422, "missing_field", f"the field {field!r} is required{more}", field)
    if field is None:
        return ApiError(422, "invalid_body", f"the body must be a JSON object ({e.get('msg', '')}); "
                        "send it with Content-Type: application/json", None)
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") or kind == "document_type" else "invalid_value"
    return ApiError(422, code, f"{field}: {e.get('msg', 'invalid value')}{more}", field)


def from_exception(exc: BaseException) -> ApiError | None:
    """The client error an exception of stagegraph's stands for; None when it is not the client's."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, FilterError):
        return ApiError(422, "invalid_filter", redact(exc), "filter")
    if isinstance(exc, DocumentError):
        return ApiError(422, "invalid_document", redact(exc), f"documents.{exc.field}")
    if isinstance(exc, InputError):
        return ApiError(422, "invalid_input", redact(exc))
    return None


# an absolute POSIX path of two or more parts (/srv/data/x), or a Windows one (C:\data), after a space, quote or bracket
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.~/-])(?:/[^\s'"/]+){2,}/?|\b[A-Za-z]:\\[^\s'"]*""")


def redact(exc: BaseException) -> str:
    """The exception's message on one line, with every absolute path in it replaced by `<path>`."""
    return _ABSOLUTE_PATH.sub("<path>", " ".join(str(exc).split()))
