"""Sharded collections (`stagegraph.collection.sharded`), read in one process: layout, routing, one
atomic publish across shards, crashes, resharding, the CLI, and search equal to one collection.

Search over Ray actors (the same equality, replicas, faults) is in tests/test_shards_ray.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from collection_support import QUERIES, rankings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_segments import SMALL_CHUNKS, doc, hybrid, same, text
from tiny_models import make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.cli.app import main
from stagegraph.collection import Collection
from stagegraph.collection import sharded as sharded_module
from stagegraph.collection.layout import CollectionError, Layout
from stagegraph.collection.sharded import ShardedCollection, reshard, shard_of
from stagegraph.collection.sources import PYTHON

BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def shard_documents(root, index: int) -> set[str]:
    with Collection(root / "shards" / f"{index:03d}",
                    pin=lambda: ShardedCollection(root).generation.sharded.shards[index]) as shard:
        return {d.id for d in shard.generation.documents()}


def test_documents_live_in_the_shard_their_id_hashes_to_and_every_shard_publishes_together(tmp_path):
    rng = random.Random(3)
    store = ShardedCollection.create(tmp_path / "c", BM25_ONLY, shards=3, chunker=SMALL_CHUNKS)
    store.upsert([doc(i, rng) for i in range(30)])
    store.delete(["doc004"])
    for index in range(3):
        expected = {f"doc{i:03d}" for i in range(30) if i != 4
                    and int.from_bytes(hashlib.sha256(f"doc{i:03d}".encode()).digest()[:8], "big") % 3 == index}
        assert shard_documents(tmp_path / "c", index) == expected and expected
    info = store.info()
    assert [s["shard"] for s in info["shards"]] == [0, 1, 2] and info["documents"] == 29
    assert store.generation.number == 2  # two writes, two sharded generations, whatever each shard did
    assert store.generation.document("doc007").id == "doc007" and store.generation.chunks_of("doc007")
    assert store.generation.document("doc004") is None
    assert shard_of("doc007", 1) == 0
    with pytest.raises(CollectionError, match="reshard into a new directory with `stagegraph collection reshard"):
        ShardedCollection.create(tmp_path / "c", BM25_ONLY, shards=4)
    store.close()


def test_a_failure_before_the_sharded_publish_shows_nothing_and_after_it_everything(tmp_path, monkeypatch):
    root = tmp_path / "c"
    store = ShardedCollection.create(root, BM25_ONLY, shards=3)
    store.upsert([{"id": f"a{i}", "text": f"first batch note {i}"} for i in range(12)])
    real_publish = sharded_module.publish

    def fail_on_sharded(layout, number):  # the shards' own CURRENT files are published after the sharded one
        if layout.root == root:
            raise OSError("disk full")
        real_publish(layout, number)

    monkeypatch.setattr(sharded_module, "publish", fail_on_sharded)
    with pytest.raises(OSError):
        store.upsert([{"id": f"b{i}", "text": f"second batch note {i}"} for i in range(12)])
    monkeypatch.undo()
    with ShardedCollection(root) as reader:  # every shard wrote a generation; none is visible
        assert sorted(reader.generation.live_ids()) == sorted(f"a{i}" for i in range(12))

    real_roll_forward = sharded_module.roll_forward

    def fail_on_roll_forward(layout, manifest):  # the writer rolls forward on entry (gen 1) and after publishing
        if manifest.generation >= 2:
            raise OSError("killed after the sharded publish")
        real_roll_forward(layout, manifest)

    monkeypatch.setattr(sharded_module, "roll_forward", fail_on_roll_forward)
    with pytest.raises(OSError):
        store.upsert([{"id": f"c{i}", "text": f"third batch note {i}"} for i in range(12)])
    monkeypatch.undo()
    with ShardedCollection(root) as reader:  # published: all of it, though the shards' own CURRENT lag
        assert len(reader.generation.live_ids()) == 24
        lagging = [Layout(root / "shards" / f"{i:03d}").current.read_text().strip() for i in range(3)]
        assert lagging != [str(n) for n in reader.generation.sharded.shards]
    store.upsert([{"id": "d0", "text": "the next writer rolls the shards forward, then collects garbage"}])
    with ShardedCollection(root) as reader:
        assert len(reader.generation.live_ids()) == 25
        assert [Layout(root / "shards" / f"{i:03d}").current.read_text().strip() for i in range(3)] == \
            [str(n) for n in reader.generation.sharded.shards]
    store.close()


CRASHING_WRITER = textwrap.dedent("""
    import sys
    from stagegraph.collection.sharded import ShardedCollection
    store = ShardedCollection(sys.argv[1])
    print("ready", flush=True)
    for i in range(int(sys.argv[2]), 10_000):
        # a batch of four documents lands in several shards: it is visible whole or not at all
        store.upsert([{"id": f"b{i}-{j}", "text": f"note {i} {j} about heat flow"} for j in range(4)])
        print(f"ack {i}", flush=True)
""")


def test_a_sharded_writer_killed_at_random_moments_publishes_each_batch_whole_or_not_at_all(tmp_path):
    root = tmp_path / "c"
    ShardedCollection.create(root, BM25_ONLY, shards=3).close()
    rng = random.Random(7)
    acked: set[int] = set()
    start = 0
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(root), str(start)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert proc.stdout.readline().strip() == "ready"
        first = proc.stdout.readline()  # one batch acknowledged (however busy the machine), then a kill at
        assert first.startswith("ack "), first  # a random moment: between commits or inside one
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acked |= {int(line.split()[1]) for line in [first, *out.splitlines()] if line.startswith("ack ")}
        with ShardedCollection(root) as store:
            ids = set(store.generation.live_ids())
        batches: dict[int, int] = {}
        for doc_id in ids:
            batch = int(doc_id[1:].split("-")[0])
            batches[batch] = batches.get(batch, 0) + 1
        assert set(batches.values()) <= {4}, trial  # never part of a batch
        assert acked <= set(batches), trial  # every acknowledged batch is there
        start = max(batches, default=-1) + 1
    assert len(acked) >= 8  # at least one batch acknowledged per writer
    with sg.open(collection=root) as stack:  # the survivor searches whole
        assert len(stack.search("heat flow", k=20).hits) == min(20, 4 * len(batches))  # the stage keeps 20


def write_everywhere(stores, rng: random.Random, live: dict[str, dict], first: int) -> None:
    """One commit, the same in every store: new documents (ids from `first`), up to two changed, up to
    two deleted; `live` follows."""
    batch = [doc(first + i, rng) for i in range(rng.randint(3, 12))]
    changed = [{**live[d], "text": text(rng, rng.randint(5, 40))} for d in rng.sample(sorted(live), min(2, len(live)))]
    gone = rng.sample(sorted(live), min(len(live) // 3, 2))
    for store in stores:
        with store.writer() as w:
            w.upsert(batch + changed, source=PYTHON)
            if gone:
                w.delete(gone)
            w.commit()
        store.refresh()
    live.update({d["id"]: d for d in batch + changed})
    for d in gone:
        live.pop(d)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), shards=st.integers(1, 4), commits=st.integers(1, 4))
def test_property_a_sharded_collection_searches_exactly_like_one_collection(tmp_path_factory, seed, shards, commits):
    """Random documents and write sequences (adds, updates, deletes over several commits), 1-4 shards:
    every query's ranking (ids in order, ties included; scores to 1e-5), filtered or not, equals that
    of one unsharded collection holding the same documents."""
    tmp = tmp_path_factory.mktemp("prop")
    rng = random.Random(seed)
    one = Collection.create(tmp / "one", BM25_ONLY, chunker=SMALL_CHUNKS)
    split = ShardedCollection.create(tmp / "split", BM25_ONLY, shards=shards, chunker=SMALL_CHUNKS)
    live: dict[str, dict] = {}
    for step in range(commits):
        write_everywhere([one, split], rng, live, step * 100)
    for flt in (None, {"group": "even"}):
        expected, got = rankings(tmp / "one", BM25_ONLY, flt), rankings(tmp / "split", BM25_ONLY, flt)
        assert sum(len(hits) for hits in expected["bm25"].values()) > 0  # the queries find something to compare
        assert [[i for i, _ in got["bm25"][q]] for q in QUERIES] == [[i for i, _ in expected["bm25"][q]] for q in QUERIES]
        same(expected, got)  # and the scores, to 1e-5
    one.close()
    split.close()


def test_hybrid_search_of_a_sharded_collection_equals_one_collection_and_survives_a_reshard(tmp_path, tiny_model):
    config = hybrid(tiny_model)
    rng = random.Random(9)
    docs = [doc(i, rng) for i in range(40)]
    with Collection.create(tmp_path / "one", config, chunker=SMALL_CHUNKS) as one:
        one.upsert(docs)
    with ShardedCollection.create(tmp_path / "two", config, shards=2, chunker=SMALL_CHUNKS) as two:
        two.upsert(docs[:25])
        two.upsert(docs[25:])
    expected = rankings(tmp_path / "one", config)
    same(expected, rankings(tmp_path / "two", config))
    assert all(len(expected[stage][q]) for stage in expected for q in QUERIES)
    generation = reshard(tmp_path / "two", tmp_path / "four", shards=4)
    assert generation.manifest.documents == 40 and len(generation.shards) == 4
    same(expected, rankings(tmp_path / "four", config))
    reshard(tmp_path / "one", tmp_path / "from-one", shards=3)  # an unsharded collection shards alike
    same(expected, rankings(tmp_path / "from-one", config))


def test_the_cli_shards_reshards_and_names_the_fix_for_a_shard_count_that_does_not_match(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"d{i}.md").write_text(f"note {i} about heat flow and wing pressure {'even' if i % 2 else 'odd'}\n")
    root, bigger = tmp_path / "c.sg", tmp_path / "c4.sg"
    assert main(["ingest", str(folder), "--collection", str(root), "--shards", "2", "--config", "bm25", "-q"]) == 0
    assert main(["collection", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "shard 0:" in out and "shard 1:" in out and "8 documents" in out
    assert main(["ingest", str(folder), "--collection", str(root), "--shards", "4", "-q"]) == 2
    err = capsys.readouterr().err
    fix = f"stagegraph collection reshard {root} NEW_DIR --shards 4"
    assert fix in err
    assert main(["collection", "reshard", str(root), str(bigger), "--shards", "4", "-q"]) == 0  # the fix, run
    assert main(["ingest", str(folder), "--collection", str(bigger), "--shards", "4", "-q"]) == 0
    assert main(["search", "bm25", "heat flow", "--collection", str(bigger), "-q"]) == 0
    assert "d0" in capsys.readouterr().out
    assert main(["serve", "bm25", "--collection", str(tmp_path / "plain"), "--executor", "local", "--replicas", "2"]) == 2
    assert "--replicas need --executor ray" in capsys.readouterr().err
