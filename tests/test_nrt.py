"""Near-real-time readers: a stack or a server picks up a generation another process published.

The writer is always another process (`python -c` with the real Collection API), as a cron
`stagegraph ingest` would be; the reader is a real `Stack` or the real server over BM25.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from serve_support import BM25_ONLY, build_collection

import stagegraph as sg
from stagegraph.collection.generation import read_current
from stagegraph.serve.app import create_app
from stagegraph.serve.service import Service
from stagegraph.serve.settings import ServeSettings

WRITER = """
import sys
from stagegraph.collection import Collection
c = Collection.open(sys.argv[1])
c.upsert([{"id": sys.argv[2], "text": "zebra quokka " + sys.argv[2], "title": "", "metadata": {}}])
c.close()
"""


def write_elsewhere(root, doc_id: str) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(root), doc_id], check=True, timeout=120)


def wait_for(condition, seconds: float = 10.0) -> float:
    """Seconds until `condition()` held; fails after `seconds` (a liveness bound, not a speed target:
    benchmarks/collection.py measures how soon)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "the reader never picked up the new generation"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_stack_picks_up_a_generation_published_by_another_process(tmp_path):
    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    with sg.open(collection=root, watch=0.05) as stack:
        before = stack.generation
        assert stack.search("zebra quokka", k=3).hits == []
        write_elsewhere(root, "new-doc")
        wait_for(lambda: stack.generation > before)
        result = stack.search("zebra quokka", k=3)
        assert [h.doc_id for h in result.hits] == ["new-doc"] and result.generation == read_current(stack.collection.layout)
        assert stack.current.manifest.documents == 21


def test_without_watching_a_stack_moves_only_on_refresh(tmp_path):
    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    with sg.open(collection=root, watch=None) as stack:
        before = stack.generation
        write_elsewhere(root, "new-doc")
        time.sleep(0.5)
        assert stack.generation == before and stack.search("zebra quokka", k=3).hits == []
        assert stack.refresh() is True and stack.generation == before + 1


def test_a_generation_that_cannot_be_opened_is_logged_once_and_the_old_one_keeps_serving(tmp_path, caplog):
    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    with sg.open(collection=root, watch=0.05) as stack:
        before = stack.generation
        expected = [h.id for h in stack.search("protein cancer", k=5).hits]
        layout = stack.collection.layout
        with caplog.at_level(logging.WARNING, logger="stagegraph.collection"):
            layout.current.write_text(f"{before + 7}\n")  # names a generation that does not exist
            time.sleep(0.6)  # about a dozen looks
        warnings = [r for r in caplog.records if "cannot move to the newest generation" in r.getMessage()]
        assert len(warnings) == 1 and f"still searching generation {before}" in warnings[0].getMessage()
        assert stack.generation == before and [h.id for h in stack.search("protein cancer", k=5).hits] == expected


def test_the_server_serves_an_outside_ingest_and_says_which_generation_it_reads(tmp_path):
    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    service = Service.open(BM25_ONLY, root, ServeSettings(watch_s=0.05), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            before = client.get("/v1/info").json()["collection"]
            assert before["generation"] == before["newest_generation"]
            write_elsewhere(root, "new-doc")
            published = read_current(service.stack.collection.layout)
            assert published == before["generation"] + 1
            wait_for(lambda: client.get("/v1/info").json()["collection"]["generation"] == published)
            info = client.get("/v1/info").json()["collection"]
            assert (info["newest_generation"], info["documents"]) == (published, 21)
            hits = client.post("/v1/search", json={"query": "zebra quokka", "k": 3}).json()
            assert hits["generation"] == published and [h["doc_id"] for h in hits["hits"]] == ["new-doc"]
            document = client.get("/v1/documents/new-doc").json()
            assert document["generation"] == published
            metrics = client.get("/metrics").text
            assert f"stagegraph_generation {float(published)}" in metrics
    finally:
        service.close()


def test_watch_is_a_serve_flag(tmp_path):
    from stagegraph.cli.app import build_parser
    from stagegraph.cli.serve import settings_of

    args = build_parser().parse_args(["serve", "bm25", "--collection", str(tmp_path), "--watch", "0"])
    assert settings_of(args).watch_s == 0
    with pytest.raises(sg.InputError, match="invalid serve setting watch_s"):
        settings_of(build_parser().parse_args(["serve", "bm25", "--collection", str(tmp_path), "--watch", "-1"]))


def test_the_server_binds_an_outside_generation_only_with_a_free_compute_slot(tmp_path):
    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    service = Service.open(BM25_ONLY, root, ServeSettings(watch_s=0.05, workers=1), pin_threads=False)
    try:
        before = service.stack.generation
        with service.slots.hold():  # the one slot is busy (a search running)
            write_elsewhere(root, "new-doc")
            time.sleep(0.5)  # about ten looks: the watcher waits for the slot rather than bind beside it
            assert service.stack.generation == before
        wait_for(lambda: service.stack.generation == before + 1)
    finally:
        service.close()


def test_a_refresh_by_a_thread_holding_the_slot_never_waits_on_the_watcher(tmp_path):
    """The server's write path holds a compute slot and then refreshes, while the watcher may be
    waiting for that slot to refresh too: the slot is always taken before the refresh lock."""
    import threading

    root = build_collection(tmp_path / "c", BM25_ONLY, n=20)
    service = Service.open(BM25_ONLY, root, ServeSettings(watch_s=0.01, workers=1), pin_threads=False)
    moved: list[bool] = []
    try:
        def write_path() -> None:  # what Service._publish does: hold the slot, then refresh
            with service.slots.hold():
                write_elsewhere(root, "new-doc")
                time.sleep(0.3)  # the watcher has seen CURRENT move and waits for the slot
                moved.append(service.stack.refresh())

        thread = threading.Thread(target=write_path, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the refresh waited on the watcher, which waited on its slot"
        assert moved == [True] and service.stack.current.manifest.documents == 21
    finally:
        service.close()
