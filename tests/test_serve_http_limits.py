"""Issue 23, the HTTP half: limits on every method and before the API key, and only documented codes.

Each test is one finding of the issue's probe, replayed with real sockets against uvicorn on
127.0.0.1 configured as `stagegraph serve` configures it (`stagegraph.serve.server.uvicorn_config`:
the guarded protocol of `stagegraph.serve.protocol`, every middleware), with an API key set so
that "before the key" is what is checked:

* finding 4: a 32 MB header is refused (431) after a few KB, quickly; a client sending one header
  line at a time is cut off (408) at the header timeout; many unfinished headers are each refused;
* finding 5: 50 MB bodies on GET, DELETE, HEAD and OPTIONS (and behind a 401) are refused without
  being read to the end;
* finding 7: filters nested ~490 deep, bodies that are not UTF-8 and integers the JSON parser
  refuses get documented codes, and a read-only server answers a PUT with broken JSON 403;
* every code the server's source can send is in docs/serving.md's table of codes.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_support import BM25_ONLY, REPO, ThreadServer, build_collection

from stagegraph.serve.app import create_app
from stagegraph.serve.service import Service
from stagegraph.serve.settings import Limits, ServeSettings

KEY = "sekret-key-23"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT_S = 1.5
MAX_HEADER = 16 * 1024
MB = 1024 * 1024


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("limits") / "c", BM25_ONLY, n=20)


def serving(collection: Path, **settings):
    settings = ServeSettings(header_timeout_s=HEADER_TIMEOUT_S, limits=Limits(max_header_bytes=MAX_HEADER), **settings)
    service = Service.open(BM25_ONLY, collection, settings)
    return service, ThreadServer(create_app(service, api_key=KEY), settings)


@pytest.fixture(scope="module")
def server(collection):
    service, srv = serving(collection)
    with srv:
        yield srv
    service.close()


@pytest.fixture(scope="module")
def read_only_server(collection):
    service, srv = serving(collection, read_only=True)
    with srv:
        yield srv
    service.close()


def connect(server, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closed)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return out
        if not chunk:
            return out
        out += chunk


def status_of(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert found, f"no HTTP answer: {answer[:200]!r}"
    return int(found.group(1))


def body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def stream(sock: socket.socket, head: bytes, total: int, chunk: int = 64 * 1024) -> tuple[int, float]:
    """Send `head`, then up to `total` bytes in chunks until the server stops taking them; (sent, seconds)."""
    started, sent = time.monotonic(), 0
    filler = b"a" * chunk
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(filler[: min(chunk, total - sent)])
            sent += min(chunk, total - sent)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent, time.monotonic() - started


def send_and_answer(server, head: bytes, total: int) -> tuple[int, float, bytes]:
    """Stream `total` bytes after `head` on one thread while another reads the answer."""
    sock = connect(server, timeout=20)
    answers: list[bytes] = []
    reader = threading.Thread(target=lambda: answers.append(read_all(sock)))
    reader.start()
    sent, seconds = stream(sock, head, total)
    reader.join(30)
    sock.close()
    return sent, seconds, answers[0] if answers else b""


# -- finding 4: header size and header time, before the API key ----------------------------------------
def test_finding4_a_32mb_header_is_refused_431_quickly_before_the_key_and_not_read(server):
    head = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Junk: "
    sent, seconds, answer = send_and_answer(server, head, 32 * MB)
    assert status_of(answer) == 431 and body_of(answer)["error"]["code"] == "headers_too_large"
    assert sent < 16 * MB, f"the server took {sent} bytes of a 32 MB header"  # it stopped reading after ~16 KB
    assert seconds < 5


def test_finding4_a_header_just_over_the_limit_is_431_and_just_under_is_served(server):
    under = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nX-Pad: " + \
        b"p" * (MAX_HEADER - 200) + b"\r\nConnection: close\r\n\r\n"
    sock = connect(server)
    sock.sendall(under)
    assert status_of(read_all(sock)) == 200
    sock = connect(server)
    sock.sendall(under.replace(b"X-Pad: ", b"X-Pad: " + b"p" * 400))
    answer = read_all(sock)
    assert status_of(answer) == 431 and b"--max-header-kb" in answer


def test_finding4_slow_headers_are_cut_off_at_the_header_timeout(server):
    sock = connect(server, timeout=20)
    started = time.monotonic()
    sock.sendall(b"GET /v1/info HTTP/1.1\r\n")
    closed_after, answer = None, b""
    for i in range(40):  # one header line every 0.25 s: it would last 10 s; the limit is 1.5 s
        time.sleep(0.25)
        try:
            sock.sendall(b"X-Slow-%d: a\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break
    answer = read_all(sock)
    closed_after = closed_after or time.monotonic() - started
    assert closed_after < HEADER_TIMEOUT_S + 2.0, f"the connection was still open after {closed_after:.1f} s"
    assert answer == b"" or status_of(answer) == 408


def test_finding4_a_connection_that_sends_nothing_is_closed_and_a_partial_header_gets_408(server):
    idle = connect(server, timeout=20)
    started = time.monotonic()
    assert read_all(idle) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2.0
    partial = connect(server, timeout=20)
    partial.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
    answer = read_all(partial)
    assert status_of(answer) == 408 and body_of(answer)["error"]["code"] == "header_timeout"


def test_finding4_many_unfinished_1mb_headers_are_each_refused(server):
    socks = [connect(server, timeout=20) for _ in range(20)]
    results: list[int] = []

    def one(sock: socket.socket) -> None:
        sent, _ = stream(sock, b"GET /v1/info HTTP/1.1\r\nX-Junk: ", MB)
        results.append(sent)

    threads = [threading.Thread(target=one, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    answers = [read_all(s) for s in socks]
    assert all(status_of(a) == 431 for a in answers)
    r = httpx.get(server.url + "/v1/info", headers=AUTH)  # and the server serves on
    assert r.status_code == 200


def test_finding4_header_limits_are_serve_flags_with_documented_defaults():
    import argparse

    from stagegraph.cli.serve import register, settings_of

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    default = settings_of(parser.parse_args(["serve", "bm25", "--collection", "c"]))
    assert (default.limits.max_header_bytes, default.header_timeout_s, default.limits.max_json_depth) == (32 * 1024, 10.0, 64)
    assert default == ServeSettings(), "the flags' defaults are ServeSettings' defaults"
    changed = settings_of(parser.parse_args(["serve", "bm25", "--collection", "c", "--max-header-kb", "8",
                                             "--header-timeout", "2.5", "--max-json-depth", "20"]))
    assert (changed.limits.max_header_bytes, changed.header_timeout_s, changed.limits.max_json_depth) == (8192, 2.5, 20)
    readme = (REPO / "docs" / "serving.md").read_text()
    for row in ("| `--max-header-kb` | 32 |", "| `--header-timeout` | 10 |", "| `--max-json-depth` | 64 |"):
        assert row in readme


# -- finding 5: bodies on every method ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD", "OPTIONS"])
def test_finding5_a_50mb_body_is_refused_413_without_being_read_on(server, method):
    path = "/v1/documents/doc001" if method == "DELETE" else "/v1/info"
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {50 * MB}\r\n\r\n").encode()
    sent, seconds, answer = send_and_answer(server, head, 50 * MB)
    assert status_of(answer) == 413
    if method != "HEAD":
        assert body_of(answer)["error"]["code"] == "body_too_large"
    assert sent < 25 * MB, f"the server took {sent} bytes of a 50 MB {method} body"
    assert seconds < 10


def test_finding5_a_chunked_body_on_get_is_cut_at_the_limit(server):
    head = (f"GET /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    sock = connect(server, timeout=20)
    answers: list[bytes] = []
    reader = threading.Thread(target=lambda: answers.append(read_all(sock)))
    reader.start()
    chunk = b"10000\r\n" + b"c" * 0x10000 + b"\r\n"
    sent = 0
    try:
        sock.sendall(head)
        while sent < 50 * MB:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reader.join(30)
    assert status_of(answers[0]) == 413 and sent < 25 * MB


def test_finding5_a_refusal_before_the_body_never_drains_it_401_without_the_key(server):
    head = f"GET /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * MB}\r\n\r\n".encode()
    sent, seconds, answer = send_and_answer(server, head, 50 * MB)
    assert status_of(answer) == 401
    assert sent < 25 * MB and seconds < 10


def test_finding5_a_small_body_on_get_is_within_the_limit_and_keep_alive_still_works(server):
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        r = client.request("GET", "/v1/info", content=b"{}")
        assert r.status_code == 200
        assert client.get("/healthz").status_code == 200  # the same connection, still usable


# -- finding 7: only documented codes -----------------------------------------------------------------
def nested_filter(depth: int) -> bytes:
    return b'{"query": "x", "filter": ' + b'{"$and": [' * depth + b'{"n": 1}' + b']}' * depth + b'}'


@pytest.mark.parametrize("depth", [70, 490, 5000])
def test_finding7_a_filter_nested_deep_is_422_json_too_deep_not_the_parsers_400(server, depth):
    r = httpx.post(server.url + "/v1/search", content=nested_filter(depth),
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "json_too_deep" and "--max-json-depth" in r.json()["error"]["message"]


def test_finding7_a_body_nested_within_the_limit_reaches_the_route(server):
    r = httpx.post(server.url + "/v1/search", content=nested_filter(20), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code != 400 and r.json().get("error", {}).get("code") != "json_too_deep", r.text


def test_finding7_json_depth_is_counted_outside_strings_only():
    from stagegraph.serve.middleware import json_depth

    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'{"a": "[[[[{{{{\\"]]]"}') == 1
    assert json_depth(b"[]" * 1000) == 1
    assert json_depth(b"") == 0


@pytest.mark.parametrize("body", [b'{"query": "caf\xe9"}', b"\xff\xfe{\x00}\x00", '{"query": "x"}'.encode("utf-16")])
def test_finding7_a_body_that_is_not_utf8_is_400_invalid_json(server, body):
    r = httpx.post(server.url + "/v1/search", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    assert "UTF-8" in r.json()["error"]["message"]


def test_finding7_an_integer_the_json_parser_refuses_is_400_invalid_json(server):
    body = b'{"query": "x", "k": ' + b"7" * 5000 + b"}"
    r = httpx.post(server.url + "/v1/search", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/documents", b'{"documents": [{'),
    ("PUT", "/v1/documents", b"\xff\xff"),
    ("PUT", "/v1/documents", nested_filter(600)),
    ("PUT", "/v1/documents", json.dumps({"documents": [{"id": "a", "text": "b"}]}).encode()),
    ("DELETE", "/v1/documents/doc001", b""),
    ("POST", "/v1/documents", b"{"),
])
def test_finding7_a_read_only_server_answers_every_write_403_whatever_its_body(read_only_server, method, path, body):
    r = httpx.request(method, read_only_server.url + path, content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only", r.text
    assert httpx.get(read_only_server.url + "/v1/documents/doc001", headers=AUTH).status_code == 200  # still there


def test_finding7_a_read_only_server_still_asks_for_the_key_first(read_only_server):
    r = httpx.put(read_only_server.url + "/v1/documents", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 401


def codes_in_source() -> set[str]:
    """Every error code the serve package can send: the string after a status in an ApiError,
    error_response, send_error or a refusal of the protocol layer, and the fixed code tables."""
    codes: set[str] = set()
    for path in (REPO / "stagegraph" / "serve").glob("*.py"):
        text = path.read_text()
        codes |= set(re.findall(r"(?<!: )\b[1-5]\d\d, \"([a-z_]+)\"", text))      # ApiError(422, "code", ...), (413, "code", ...)
        codes |= set(re.findall(r"\b[1-5]\d\d: \"([a-z_]+)\"", text))      # {404: "not_found", ...}
        codes |= set(re.findall(r"code=\"([a-z_]+)\"", text))                 # ErrorDetail(code="overloaded")
        codes |= set(re.findall(r"status_code, \"([a-z_]+)\"\)", text))       # .get(exc.status_code, "http_error")
        codes |= set(re.findall(r"\"([a-z_]+)\" if kind", text))              # "invalid_type" if ... else "invalid_value"
        codes |= set(re.findall(r"else \"([a-z_]+)\"$", text, flags=re.M))
    return codes


def test_finding7_every_code_the_server_can_send_is_in_the_readmes_table():
    readme = (REPO / "docs" / "serving.md").read_text()
    table = readme.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "`" in line]
    documented_codes = {code for row in rows for code in re.findall(r"`([a-z_]+)`", row[1])}
    source = codes_in_source()
    assert {"invalid_json", "json_too_deep", "headers_too_large", "header_timeout", "invalid_http", "body_too_large",
            "read_only", "unauthorized", "internal_error"} <= source, "the scan of the source misses codes"
    assert source - documented_codes == set(), f"codes the server sends that docs/serving.md does not list: {source - documented_codes}"
