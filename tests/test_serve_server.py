"""`stagegraph serve` as a process: uvicorn on an ephemeral loopback port, spoken to over HTTP.

Many searches while writes land (no errors, each answer one generation's), SIGTERM with requests in
flight (they finish, nothing new is accepted, the collection is closed), and SIGKILL between and
inside writes (after a restart every acknowledged write is there). BM25-only collections keep each
start to a few seconds.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time

import httpx
import pytest
from serve_support import BM25_ONLY, SubprocessServer, build_collection
from tiny_models import WORDS

from stagegraph.collection import Collection

CONFIG = "bm25"  # the bundled BM25 config: the same stage as BM25_ONLY's, so the collection's index serves it


def marker_doc(i: int, words: int = 12) -> dict:
    rng = random.Random(i)
    return {"id": f"live-{i:03d}", "text": "marker " + " ".join(rng.choice(WORDS) for _ in range(words)),
            "metadata": {"n": 1000 + i}}


@pytest.fixture
def collection(tmp_path):
    return build_collection(tmp_path / "c", BM25_ONLY, n=30)


def test_many_concurrent_searches_while_writes_land_each_see_one_generation(collection):
    server = SubprocessServer(CONFIG, "--collection", str(collection), "--workers", "2")
    try:
        base = httpx.get(server.url + "/v1/info").json()["collection"]["generation"]
        answers: list[tuple[int, int, set[str]]] = []
        errors: list[str] = []
        done = threading.Event()
        writes: list[tuple[str, str, int]] = []

        def searcher() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not done.is_set():
                    r = client.post("/v1/search", json={"query": "marker", "k": 100})
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    body = r.json()
                    answers.append((r.status_code, body["generation"], {h["doc_id"] for h in body["hits"]}))

        def writer() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for i in range(6):
                    r = client.put("/v1/documents?wait=true", json={"documents": [marker_doc(i)]})
                    assert r.status_code == 200 and r.json()["searchable"], r.text
                    writes.append(("add", f"live-{i:03d}", r.json()["generation"]))
                r = client.delete("/v1/documents/live-002?wait=true")
                assert r.status_code == 200, r.text
                writes.append(("delete", "live-002", r.json()["generation"]))
                time.sleep(0.3)  # some searches on the last generation too

        threads = [threading.Thread(target=searcher) for _ in range(8)]
        for t in threads:
            t.start()
        write_thread = threading.Thread(target=writer)
        write_thread.start()
        write_thread.join(120)
        done.set()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert [g for _, _, g in writes] == list(range(base + 1, base + 8))
        expected = {base: set()}
        live: set[str] = set()
        for kind, doc_id, generation in writes:
            (live.add if kind == "add" else live.discard)(doc_id)
            expected[generation] = set(live)
        seen = {g for _, g, _ in answers}
        assert len(answers) > 50 and len(seen) >= 3, (len(answers), seen)
        for _, generation, doc_ids in answers:  # exactly that generation's marker documents, never a mix
            assert doc_ids == expected[generation], generation
    finally:
        code, out, err = server.stop()
    assert code == 0, err[-2000:]


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_closes_the_collection(collection):
    server = SubprocessServer(CONFIG, "--collection", str(collection), "--workers", "1", "--shutdown-timeout", "60")
    big = [marker_doc(i, words=300) for i in range(300)]
    results: dict[str, httpx.Response] = {}

    def call(name: str, method: str, path: str, body: dict) -> None:
        try:
            results[name] = httpx.request(method, server.url + path, content=json.dumps(body),
                                          headers={"content-type": "application/json"}, timeout=120)
        except httpx.HTTPError as exc:  # reported below
            results[name] = exc

    calls = [threading.Thread(target=call, args=("write", "PUT", "/v1/documents?wait=true", {"documents": big}))]
    calls += [threading.Thread(target=call, args=(f"search{i}", "POST", "/v1/search/batch",
                                                  {"queries": ["marker heat flow"] * 32, "k": 100})) for i in range(4)]
    for t in calls:
        t.start()
    deadline = time.monotonic() + 30
    while True:  # every request accepted (answered, or in flight besides this metrics request)
        text = httpx.get(server.url + "/metrics").text
        in_flight = int(float(re.search(r"^stagegraph_in_flight_requests (\S+)$", text, re.M).group(1))) - 1
        if len(results) + in_flight >= len(calls):
            break
        assert time.monotonic() < deadline, "the requests never got in flight"
        time.sleep(0.01)
    assert "write" not in results and in_flight >= 1  # the write is still running when SIGTERM comes
    server.proc.terminate()
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    for t in calls:
        t.join(120)
    code, out, err = server.wait(timeout=120)  # the one SIGTERM above is all it gets
    assert code == 0, err[-2000:]
    assert "stopped; collection closed" in out
    for name, r in results.items():
        assert isinstance(r, httpx.Response) and r.status_code == 200, (name, r)
    assert results["write"].json()["added"] == 300 and results["write"].json()["searchable"]
    assert not list((collection / "readers").glob("*.lease"))  # the server's reader lease is gone
    with Collection.open(collection) as store:
        assert {d["id"] for d in big} <= set(store.generation.live_ids())


def test_a_restart_after_sigkill_loses_no_acknowledged_write(collection):
    acked: list[str] = []
    for round_ in range(2):
        server = SubprocessServer(CONFIG, "--collection", str(collection))
        stop = threading.Event()

        def writer(start: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                i = start
                while not stop.is_set():
                    try:
                        r = client.put("/v1/documents", json={"documents": [marker_doc(i, words=200)]})
                    except httpx.HTTPError:
                        return  # killed mid-request: not acknowledged
                    if r.status_code == 200:
                        acked.append(f"live-{i:03d}")
                    i += 1

        thread = threading.Thread(target=writer, args=(100 * round_,))
        thread.start()
        deadline = time.monotonic() + 60
        while len(acked) < 6 * (round_ + 1):
            assert time.monotonic() < deadline and thread.is_alive(), "writes were not acknowledged"
            time.sleep(0.01)
        time.sleep(random.Random(round_).uniform(0.0, 0.3))  # land inside a write, or between two
        server.kill()
        stop.set()
        thread.join(30)
    server = SubprocessServer(CONFIG, "--collection", str(collection), "--read-only")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for doc_id in acked:
                assert client.get(f"/v1/documents/{doc_id}").status_code == 200, doc_id
            hits = client.post("/v1/search", json={"query": "marker", "k": 100}).json()["hits"]
            assert set(acked) <= {h["doc_id"] for h in hits}
            refused = client.put("/v1/documents", json={"documents": [marker_doc(999)]})
            assert refused.status_code == 403
    finally:
        code, _, err = server.stop()
    assert code == 0, err[-2000:]
