"""Sharded search on Ray (`stagegraph.scale.shards`), on a local cluster (loopback, 2 CPUs):

* equality: for random documents and write sequences over 1-4 shards, every query's hits (ids in
  order, scores to 1e-5, filtered or not) equal those of one unsharded collection, for BM25 alone,
  for BM25 | dense -> RRF pool -> cross-encoder, for learned sparse and for BM25 with RM3 and
  Rocchio (so per-shard IDF or feedback, a shard-local top k or a tie broken by row would all
  show), and after the collection moves to a new generation;
* faults: with 2 replicas, a replica SIGKILLed while searches run loses no search (each is retried
  on the other replica), the log says it died and came back, and `health()` shows it back; with 1
  replica a shard that cannot be reached fails the search with one line naming the fixes, and
  `allow_partial` answers from the other shards, naming the one left out;
* the HTTP server (`Service` with the Ray searcher): /readyz lists every shard's live replicas,
  search answers equal the local ones, /metrics has per-shard latency histograms.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray")

from collection_support import QUERIES  # noqa: E402
from serve_support import rerank_config  # noqa: E402
from test_segments import SMALL_CHUNKS, doc  # noqa: E402
from test_sharded import write_everywhere  # noqa: E402
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer  # noqa: E402

import stagegraph as sg  # noqa: E402
from stagegraph.collection import Collection  # noqa: E402
from stagegraph.collection.sharded import ShardedCollection  # noqa: E402
from stagegraph.collection.stack import Stack  # noqa: E402
from stagegraph.pipeline.compose import Pipeline  # noqa: E402
from stagegraph.pipeline.partial import search_report  # noqa: E402
from stagegraph.scale.cluster import RayCluster  # noqa: E402
from stagegraph.scale.shards import ShardedSearch, ShardUnavailable  # noqa: E402

BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}]}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with RayCluster(workers=2) as ray_cluster:
        yield ray_cluster


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce"))


def hits(stack, query: str, flt=None, k: int = 10) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in stack.search(query, k=k, filter=flt).hits]


def assert_same(expected: list[tuple[str, float]], got: list[tuple[str, float]], where) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected], where
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=0, atol=1e-5, err_msg=str(where))


@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_ray_search_of_any_shard_count_equals_one_collection_through_write_sequences(cluster, tmp_path, models, shards):
    config = rerank_config(*models) if shards in (2, 4) else BM25_ONLY  # the full stack where it costs least
    rng = random.Random(100 + shards)
    one = Collection.create(tmp_path / "one", config, chunker=SMALL_CHUNKS)
    split = ShardedCollection.create(tmp_path / "split", config, shards=shards, chunker=SMALL_CHUNKS)
    live: dict[str, dict] = {}
    write_everywhere([one, split], rng, live, 0)
    pipe = Pipeline.from_config(config)
    search = ShardedSearch(cluster, tmp_path / "split", pipe, replicas=1)
    stack = Stack(pipe, ShardedCollection(tmp_path / "split"), bind=search.bind, watch=None)
    try:
        for step in range(3):
            with sg.open(config, collection=tmp_path / "one", watch=None) as local:
                for query in [*QUERIES, "cell"]:
                    for flt in (None, {"group": "even"}):
                        expected = hits(local, query, flt)
                        assert expected or flt, (query, flt)
                        assert_same(expected, hits(stack, query, flt), (shards, step, query, flt))
            write_everywhere([one, split], rng, live, 100 * (step + 1))
            assert stack.refresh()  # the actors move to the new sharded generation
    finally:
        stack.close()
        search.close()
        one.close()
        split.close()


@pytest.fixture(scope="module")
def bm25_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "c"
    rng = random.Random(4)
    with ShardedCollection.create(root, BM25_ONLY, shards=2) as store:
        store.upsert([doc(i, rng) for i in range(60)])
    return root


def local_shard_one(root, doc_id: str) -> bool:
    with ShardedCollection(root) as store:
        return store.generation.shards[1].document(doc_id) is not None


def kill(search: ShardedSearch, shard: int, replica: int) -> int:
    pid = search.cluster.ray.get(search.groups[shard].actors[replica].ping.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def gone_for_good(search: ShardedSearch, shard: int, replica: int) -> None:
    """Kill a replica with no restart and wait until Ray says it is dead (`ray.kill` only asks: a call made
    at once may still reach the actor on a busy machine)."""
    ray = search.cluster.ray
    actor = search.groups[shard].actors[replica]
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        assert time.monotonic() < deadline, "the killed replica still answered after 60 s"
        time.sleep(0.1)


def test_a_replica_killed_under_load_loses_no_search_and_comes_back(cluster, bm25_split, caplog):
    pipe = Pipeline.from_config(BM25_ONLY)
    search = ShardedSearch(cluster, bm25_split, pipe, replicas=2)
    stack = Stack(pipe, ShardedCollection(bm25_split), bind=search.bind, watch=None)
    expected = {q: hits(stack, q) for q in QUERIES}
    failures: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            query = rng.choice(QUERIES)
            try:
                assert_same(expected[query], hits(stack, query), query)
                answered[0] += 1
            except BaseException as exc:  # noqa: BLE001 - counted below
                failures.append(exc)
            time.sleep(0.005)  # below saturation: the other replica has room for the retried calls

    caplog.set_level(logging.WARNING, logger="stagegraph.shards")
    clients = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in clients:
        t.start()
    try:
        time.sleep(1.0)
        before = answered[0]
        kill(search, 1, 0)
        time.sleep(3.0)
        stop.set()
        for t in clients:
            t.join(30)
        assert not failures, failures[:3]
        assert answered[0] > before + 10  # searches kept being answered after the kill
        deadline = time.monotonic() + 60
        while search.health(timeout=2.0)[1]["live"] < 2:  # Ray restarted it
            assert time.monotonic() < deadline, "the killed replica did not come back in 60 s"
            time.sleep(0.5)
        assert_same(expected[QUERIES[0]], hits(stack, QUERIES[0]), "after the restart")
        for _ in range(6):  # calls reach the restarted replica again (round robin), which logs that it is back
            hits(stack, QUERIES[1])
        text = caplog.text
        assert "shard 1 replica 0 died or cannot be reached" in text
        assert "shard 1 replica 0 answers again" in text
    finally:
        stop.set()
        stack.close()
        search.close()


def test_with_one_replica_an_unreachable_shard_fails_clearly_unless_partial_results_are_allowed(cluster, bm25_split):
    pipe = Pipeline.from_config(BM25_ONLY)
    search = ShardedSearch(cluster, bm25_split, pipe, replicas=1, deadline_s=3.0)
    stack = Stack(pipe, ShardedCollection(bm25_split), bind=search.bind, watch=None)
    try:
        full = hits(stack, QUERIES[0], k=20)
        shard_one = {h for h, _ in full if stack.collection.generation.shards[1].document(h.split("#")[0])}
        assert shard_one and len(shard_one) < len(full)
        gone_for_good(search, 1, 0)  # shard 1 is unreachable
        with pytest.raises(ShardUnavailable, match=r"^shard 1 of 2 cannot be reached \(.*\); retry in a moment .*"
                                                   r"run more replicas \(--replicas 2\), or ask for partial results"):
            stack.search(QUERIES[0], k=20)
        with search_report(allow_partial=True) as report:
            partial = hits(stack, QUERIES[0], k=20)
        assert report.missing == ["shard 1"]
        kept = [(h, s) for h, s in full if h not in shard_one]  # shard 0's hits, scored with the whole collection's
        assert partial[:len(kept)] == kept and len(partial) == 20  # statistics, then more of shard 0's own
        assert not {h for h, _ in partial} & shard_one
    finally:
        stack.close()
        search.close()


def test_the_http_server_serves_a_sharded_collection_on_ray(cluster, bm25_split):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import ServeSettings

    pipe = Pipeline.from_config(BM25_ONLY)
    search = ShardedSearch(cluster, bm25_split, pipe, replicas=1)
    service = Service.open(pipe, bm25_split, ServeSettings(), pin_threads=False, searcher=search)
    with sg.open(BM25_ONLY, collection=bm25_split, watch=None) as local:  # the same shards read in this process
        expected = hits(local, QUERIES[2])
    try:
        with TestClient(create_app(service)) as client:
            ready = client.get("/readyz").json()
            assert ready["ready"] and ready["shards"] == [{"shard": 0, "replicas": 1, "live": 1},
                                                          {"shard": 1, "replicas": 1, "live": 1}]
            body = client.post("/v1/search", json={"query": QUERIES[2], "k": 10}).json()
            assert_same(expected, [(h["id"], h["score"]) for h in body["hits"]], "http")
            assert "partial" not in body
            put = client.put("/v1/documents?wait=true", json={"documents": [{"id": "fresh", "text": "quokka marmot"}]})
            assert put.status_code == 200, put.text
            assert client.post("/v1/search", json={"query": "quokka", "k": 1}).json()["hits"][0]["doc_id"] == "fresh"
            metrics = client.get("/metrics").text
            assert 'stagegraph_shard_duration_seconds_count{shard="0"}' in metrics
            assert 'stagegraph_shard_duration_seconds_count{shard="1"}' in metrics
            gone_for_good(search, 1, 0)
            refused = client.post("/v1/search", json={"query": QUERIES[2], "k": 10})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "shard_unavailable"
            assert "--replicas 2" in refused.json()["error"]["message"]
            partial = client.post("/v1/search", json={"query": QUERIES[2], "k": 10, "allow_partial": True}).json()
            assert partial["partial"] == ["shard 1"] and partial["hits"]
            assert all(not local_shard_one(bm25_split, h["doc_id"]) for h in partial["hits"])
            assert "stagegraph_partial_results_total 1.0" in client.get("/metrics").text
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"] == "shard(s) 1 have no live replica"
    finally:
        service.close()


def test_serve_executor_ray_names_its_fixes_and_fails_fast_on_an_unreachable_cluster(tmp_path, capsys):
    from stagegraph.cli.app import main

    plain = tmp_path / "plain"
    with Collection.create(plain, BM25_ONLY) as store:
        store.upsert([{"id": "a", "text": "heat flow"}, {"id": "b", "text": "wing pressure"}])
    assert main(["serve", "bm25", "--collection", str(plain), "--executor", "ray"]) == 2
    fix = f"stagegraph collection reshard {plain} NEW_DIR --shards N"
    assert fix in capsys.readouterr().err
    assert main(["collection", "reshard", str(plain), str(tmp_path / "split"), "--shards", "2", "-q"]) == 0  # the fix
    started = time.monotonic()
    assert main(["serve", "bm25", "--collection", str(tmp_path / "split"), "--executor", "ray",
                 "--ray-address", "127.0.0.1:9"]) == 3
    assert time.monotonic() - started < 15
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in capsys.readouterr().err


def test_stagegraph_serve_executor_ray_end_to_end(tmp_path, bm25_split):
    """The command itself: its own local cluster, two replicas per shard, the same answers."""
    from serve_support import SubprocessServer, post_json

    import httpx

    with sg.open(BM25_ONLY, collection=bm25_split, watch=None) as local:
        expected = hits(local, QUERIES[1])
    server = SubprocessServer("bm25", "--collection", str(bm25_split), "--executor", "ray", "--replicas", "2",
                              env={"RAY_ADDRESS": ""})
    try:
        ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
        assert ready["shards"] == [{"shard": 0, "replicas": 2, "live": 2}, {"shard": 1, "replicas": 2, "live": 2}]
        body = post_json(f"{server.url}/v1/search", {"query": QUERIES[1], "k": 10}).json()
        assert_same(expected, [(h["id"], h["score"]) for h in body["hits"]], "served")
    finally:
        code, _, err = server.stop(timeout=60)
    assert code == 0, err[-2000:]


def test_a_replica_that_stops_answering_is_hedged_around_within_a_fraction_of_a_second(cluster, bm25_split):
    """A frozen replica (SIGSTOP: alive to Ray, silent) would hold a search until its deadline; after
    `hedge_after_s` the other replica is asked too and its answer is taken."""
    pipe = Pipeline.from_config(BM25_ONLY)
    search = ShardedSearch(cluster, bm25_split, pipe, replicas=2, deadline_s=20.0, hedge_after_s=0.25)
    stack = Stack(pipe, ShardedCollection(bm25_split), bind=search.bind, watch=None)
    expected = {q: hits(stack, q) for q in QUERIES}
    pid = search.cluster.ray.get(search.groups[0].actors[0].ping.remote())
    os.kill(pid, signal.SIGSTOP)
    try:
        for query in QUERIES:  # round robin sends half of these to the frozen replica first
            started = time.monotonic()
            assert_same(expected[query], hits(stack, query), query)
            assert time.monotonic() - started < 5.0  # not the 20 s deadline
    finally:
        os.kill(pid, signal.SIGCONT)
        stack.close()
        search.close()


@pytest.mark.parametrize("leg", ["sparse", "bm25 + rm3", "bm25 + rocchio"])
def test_sparse_and_expanding_legs_on_ray_equal_one_collection(cluster, tmp_path, leg):
    """A learned-sparse leg (its query weights computed once by the coordinator and sent; each shard's
    top k by impact) and BM25 with RM3 or Rocchio (first pass gathered from every shard, feedback terms
    and their collection-wide frequencies read by the coordinator, weighted second pass scattered):
    every hit and score equals one collection's, filtered or not, after new writes too."""
    if leg == "sparse":
        from test_sparse_retriever import make_tiny_splade

        stage = {"type": "sparse", "name": leg, "k": 15, "model": make_tiny_splade(tmp_path / "splade")}
    else:
        method = leg.split()[-1]
        stage = {"type": "bm25", "name": leg, "k": 15,
                 "expand": {"method": method, "fb_docs": 4, "fb_terms": 6, "max_df": 0.5,
                            **({"gamma": 0.2, "bottom_fb_docs": 3} if method == "rocchio" else {})}}
    config = {"pipeline": [stage]}
    rng = random.Random(7)
    one = Collection.create(tmp_path / "one", config, chunker=SMALL_CHUNKS)
    split = ShardedCollection.create(tmp_path / "split", config, shards=2, chunker=SMALL_CHUNKS)
    live: dict[str, dict] = {}
    write_everywhere([one, split], rng, live, 0)
    pipe = Pipeline.from_config(config)
    search = ShardedSearch(cluster, tmp_path / "split", pipe, replicas=1)
    stack = Stack(pipe, ShardedCollection(tmp_path / "split"), bind=search.bind, watch=None)
    plain = {"pipeline": [{k: v for k, v in stage.items() if k != "expand"}]}
    expanded: list[bool] = []
    try:
        for step in range(2):
            with sg.open(config, collection=tmp_path / "one", watch=None) as local, \
                    sg.open(plain, collection=tmp_path / "one", watch=None) as unexpanded:
                for query in QUERIES:
                    for flt in (None, {"group": "even"}):
                        expected = hits(local, query, flt)
                        assert expected or flt, (query, flt)
                        assert_same(expected, hits(stack, query, flt), (step, query, flt))
                        expanded.append(expected != hits(unexpanded, query, flt))
            write_everywhere([one, split], rng, live, 100 * (step + 1))
            assert stack.refresh()
        assert leg == "sparse" or any(expanded)  # the feedback changed rankings: both passes ran
    finally:
        stack.close()
        search.close()
        one.close()
        split.close()
