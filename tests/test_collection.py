"""Collections: incremental updates with exact statistics, atomic generations, one writer, many readers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from collection_support import QUERIES, rankings
from tiny_models import WORDS, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.collection import Collection, CollectionDamaged, CollectionError, ingest, repair
from stagegraph.collection.sources import PYTHON
from stagegraph.corpora.ingest import ChunkerConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def hybrid(model: str, index: str = "Flat") -> dict:
    return {"pipeline": [
        {"parallel": [{"type": "bm25", "name": "bm25", "k": 20},
                      {"type": "dense", "name": "dense", "k": 20, "model": model, "index": index}]},
        {"type": "pool", "name": "pool", "k": 20},
    ]}


BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]}
SMALL_CHUNKS = ChunkerConfig(max_tokens=24, overlap_tokens=4)


def text(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def doc(i: int, rng: random.Random) -> dict:
    return {"id": f"doc{i:03d}", "title": f"title {rng.choice(WORDS)}", "text": text(rng, rng.randint(5, 80)),
            "metadata": {"n": i}}




def assert_same(a, b, tol=1e-5):
    for stage in a:
        for q in a[stage]:
            ids_a, ids_b = [i for i, _ in a[stage][q]], [i for i, _ in b[stage][q]]
            assert ids_a == ids_b, (stage, q)
            np.testing.assert_allclose([s for _, s in a[stage][q]], [s for _, s in b[stage][q]], rtol=0, atol=tol)


def test_any_sequence_of_changes_equals_a_fresh_build_of_the_final_documents(tmp_path, tiny_model):
    """Property-style: random adds, updates and deletes; after each batch, BM25 (N, avgdl and document
    frequencies over live chunks only) and exact dense search equal a collection built from scratch."""
    config = hybrid(tiny_model)
    rng = random.Random(7)
    live: dict[str, dict] = {}
    store = Collection.create(tmp_path / "live", config, chunker=SMALL_CHUNKS)
    next_id = 0
    for step in range(6):
        with store.writer() as w:
            for _ in range(rng.randint(1, 6)):  # additions
                d = doc(next_id, rng)
                next_id += 1
                live[d["id"]] = d
                w.upsert([d], source=PYTHON)
            for doc_id in rng.sample(sorted(live), k=min(len(live), rng.randint(0, 3))):  # updates
                live[doc_id] = {**live[doc_id], "text": text(rng, rng.randint(5, 60))}
                w.upsert([live[doc_id]], source=PYTHON)
            for doc_id in rng.sample(sorted(live), k=min(max(len(live) - 3, 0), rng.randint(0, 2))):  # deletions
                del live[doc_id]
                w.delete([doc_id])
            w.commit()
        fresh = Collection.create(tmp_path / f"fresh{step}", config, chunker=SMALL_CHUNKS)
        fresh.upsert(list(live.values()))
        assert_same(rankings(tmp_path / "live", config), rankings(tmp_path / f"fresh{step}", config))
        fresh.close()
    store.close()


def test_approximate_dense_index_after_updates_keeps_recall_of_a_fresh_build(tmp_path, tiny_model):
    config = hybrid(tiny_model, index="HNSW32")
    rng = random.Random(3)
    final = {d["id"]: d for d in (doc(i, rng) for i in range(60))}
    live = Collection.create(tmp_path / "live", config, chunker=SMALL_CHUNKS)
    live.upsert(list(final.values())[:40])
    for doc_id in list(final)[:10]:
        final[doc_id] = {**final[doc_id], "text": text(rng)}
    live.upsert([final[d] for d in list(final)[:10]] + list(final.values())[40:])
    gone = list(final)[20:25]
    live.delete(gone)
    for doc_id in gone:
        del final[doc_id]
    fresh = Collection.create(tmp_path / "fresh", config, chunker=SMALL_CHUNKS)
    fresh.upsert(list(final.values()))
    a, b = rankings(tmp_path / "live", config)["dense"], rankings(tmp_path / "fresh", config)["dense"]
    recall = np.mean([len({i for i, _ in a[q]} & {i for i, _ in b[q]}) / len(b[q]) for q in QUERIES])
    assert recall >= 0.99
    live.close(), fresh.close()


# -- ingesting files -----------------------------------------------------------------------------
def _write_notes(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gguf.md").write_text("---\ntags: [gpu, llama]\nyear: 2024\n---\n# GGUF files\n\n"
                                    "GGUF is the file format llama.cpp loads: weights and tokenizer in one file.\n")
    (folder / "faiss.txt").write_text("FAISS HNSW indexes trade memory for fast approximate nearest neighbour search.")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "rerank.html").write_text("<html><head><title>Rerankers</title><script>x=1</script></head>"
                                                "<body><p>A cross-encoder reranks the candidate pool.</p></body></html>")
    (folder / "blob.txt").write_bytes(b"\x00\x01binary")


def test_ingest_reads_folders_incrementally_and_sync_deletes(tmp_path, capsys):
    from stagegraph.cli.app import main

    notes = tmp_path / "notes"
    _write_notes(notes)
    coll = tmp_path / "coll"
    assert main(["ingest", str(notes), "--collection", str(coll), "--config", "bm25", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == f"warning: skipped {notes / 'blob.txt'}: binary file"
    with Collection.open(coll) as c:
        assert sorted(d.id for d in c.generation.documents()) == ["faiss.txt", "gguf.md", "sub/rerank.html"]
        assert c.generation.number == 1
        md = c.generation.document("gguf.md")
        assert md.metadata["tags"] == ["gpu", "llama"] and md.metadata["ext"] == "md" and md.title == "GGUF files"
    report = ingest([notes], coll, progress=False, warn=lambda line: None)  # nothing changed
    assert (report.published, report.unchanged, report.new_chunks) == (False, 3, 0)
    (notes / "faiss.txt").write_text("FAISS IVF indexes probe a few lists of vectors.")
    (notes / "sub" / "rerank.html").unlink()
    (notes / "new.txt").write_text("A new note about int8 quantisation.")
    report = ingest([notes], coll, sync=True, progress=False, warn=lambda line: None)
    assert (report.added, report.updated, report.unchanged, report.deleted) == (1, 1, 1, 1)
    assert report.new_chunks == 2 and report.generation == 2 and report.published
    assert main(["search", "bm25", "IVF lists", "--collection", str(coll), "--quiet"]) == 0
    assert "faiss.txt#0" in capsys.readouterr().out
    assert main(["ingest", "--delete", "new.txt", "--collection", str(coll), "--quiet"]) == 0
    with Collection.open(coll) as c:
        assert sorted(d.id for d in c.generation.documents()) == ["faiss.txt", "gguf.md"] and c.generation.number == 3
    assert main(["collection", "info", str(coll)]) == 0
    out = capsys.readouterr().out
    assert "generation 3" in out and "2 documents, 2 chunks" in out


def test_nothing_ingestible_is_exit_2_and_other_settings_are_refused(tmp_path, capsys):
    from stagegraph.cli.app import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.bin").write_bytes(b"\x00")
    assert main(["ingest", str(empty), "--collection", str(tmp_path / "c")]) == 2
    assert "nothing to ingest" in capsys.readouterr().err
    notes = tmp_path / "notes"
    _write_notes(notes)
    assert main(["ingest", str(notes), "--collection", str(tmp_path / "c"), "--config", "bm25", "-q"]) == 0
    capsys.readouterr()
    assert main(["ingest", str(notes), "--collection", str(tmp_path / "c"), "--max-tokens", "64", "-q"]) == 2
    err = capsys.readouterr().err
    assert "was built with another chunker" in err and "rebuild into a new directory" in err
    assert main(["ingest", str(notes), "--collection", str(tmp_path / "c"), "--config", "hybrid", "-q"]) == 2
    assert "another chunk tokenizer" not in capsys.readouterr().err  # same tokenizer: only the pipeline differs


def test_a_hit_feeds_the_chapters_reranker_unchanged(tmp_path):
    from tiny_models import make_tiny_cross_encoder

    notes = tmp_path / "notes"
    _write_notes(notes)
    ingest([notes], tmp_path / "c", pipeline=BM25_ONLY, progress=False, warn=lambda line: None)
    with sg.open(collection=tmp_path / "c") as stack:
        hits = stack.search("gguf file format search indexes", k=3).hits
    candidates = [h.as_candidate() for h in hits]
    assert candidates[0]["doc_id"] == "gguf.md" and candidates[0]["tags"] == ["gpu", "llama"]
    reranker = sg.CrossEncoderReranker(str(make_tiny_cross_encoder(tmp_path / "ce")), max_length=64)
    top = reranker.rerank("gguf file format search indexes", candidates, top_k=2)
    assert len(top) == 2 and all("cross_encoder_score" in c and c["doc_id"] for c in top)


# -- one writer, many readers, crashes ------------------------------------------------------------
def test_a_second_writer_waits_then_fails_with_the_fix(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    with store.writer():
        other = Collection.open(tmp_path / "c")
        started = time.perf_counter()
        with pytest.raises(CollectionError, match=r"another writer holds .*writer.lock \(waited 0.5 s\)"):
            with other.writer(timeout=0.5):
                pass
        assert time.perf_counter() - started >= 0.5
        other.close()
    store.close()


def test_readers_keep_their_generation_until_refresh_and_old_ones_are_collected(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": "a", "text": "alpha heat flow"}])
    reader = sg.open(collection=tmp_path / "c")
    assert [h.doc_id for h in reader.search("heat").hits] == ["a"]
    store.upsert([{"id": "b", "text": "beta heat shock wave"}])
    assert reader.generation == 1 and [h.doc_id for h in reader.search("heat").hits] == ["a"]
    assert (tmp_path / "c" / "generations" / "00000001").is_dir()  # leased by the reader: kept
    assert reader.refresh() and reader.generation == 2
    assert sorted(h.doc_id for h in reader.search("heat").hits) == ["a", "b"]
    store.upsert([{"id": "c", "text": "gamma"}])  # the writer now collects generation 1
    assert sorted(p.name for p in (tmp_path / "c" / "generations").iterdir()) == ["00000002", "00000003"]
    reader.close()
    store.close()


def test_many_threads_search_while_a_writer_publishes(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": f"d{i}", "text": f"heat flow note {i}"} for i in range(20)])
    stack = sg.open(collection=tmp_path / "c")
    errors, seen = [], set()
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                hits = stack.search("heat flow", k=50).hits
                seen.add(len(hits))
                assert all(h.id.startswith(h.doc_id + "#") for h in hits)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20, 26):
        stack.upsert([{"id": f"d{i}", "text": f"heat flow note {i}"}])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert stack.generation == 7 and len(stack.search("heat flow", k=50).hits) == 26
    assert seen <= set(range(20, 27))  # every response came from one whole generation
    stack.close()
    store.close()


CRASHING_WRITER = textwrap.dedent("""
    import sys
    from stagegraph.collection import Collection
    from stagegraph.collection.merges import MergePolicy
    # merges every third segment, so that kills also land inside merges and compactions
    store = Collection.open(sys.argv[1], merge_policy=MergePolicy(segments_per_tier=3, max_merge_at_once=3, floor_chunks=1))
    print("ready", flush=True)
    for i in range(int(sys.argv[2]), 10_000):
        store.upsert([{"id": f"d{i}", "text": f"note {i} about heat flow and pressure " * 3}])
        print(f"ack {i}", flush=True)
        if i % 4 == 3:
            print(f"deleting {i - 1}", flush=True)  # from here on, d{i-1} may be gone
            store.delete([f"d{i - 1}"])
            print(f"del {i - 1}", flush=True)
""")


def test_a_writer_killed_at_random_moments_never_loses_an_acknowledged_update(tmp_path):
    root = tmp_path / "c"
    Collection.create(root, BM25_ONLY).close()
    rng = random.Random(11)
    acked: set[int] = set()
    deleted: set[int] = set()
    deleting: set[int] = set()
    start = 0
    env = {**os.environ, "PYTHONPATH": ""}
    for trial in range(10):
        proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(root), str(start)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready"  # imports and opening take longer on a busy machine
        first = proc.stdout.readline()  # the first commit of this writer landed: on a busy machine that is
        time.sleep(rng.uniform(0.05, 1.2))  # seconds after "ready"; the kill falls at a random moment after it
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        out = first + out
        acked |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("ack ")}
        deleted |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("del ")}
        deleting |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("deleting ")}
        with Collection.open(root) as store:  # loads, at the previous or the new generation
            ids = {d.id for d in store.generation.documents()}
            merged = any(ref.id.startswith("m") for ref in store.generation.manifest.segments)
            start = max(int(i[1:]) for i in ids) + 1 if ids else 0
        assert {f"d{i}" for i in acked - deleting} <= ids, trial
        assert not {f"d{i}" for i in deleted} & ids, trial
    assert len(acked) >= 10 and deleted  # the kills landed between and inside commits, not before the first
    assert merged  # and merges ran
    with sg.open(collection=root) as stack:  # the survivor is searchable, its indexes whole
        assert len(stack.search("heat flow pressure", k=100).hits) == min(100, stack.collection.generation.manifest.documents)
        assert len(list(stack.collection.generation.documents())) >= len(acked - deleting)


def test_a_damaged_collection_is_refused_with_the_repair_command_and_repair_recovers(tmp_path, capsys):
    from stagegraph.cli.app import main

    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": "a", "text": "alpha"}])
    store.upsert([{"id": "b", "text": "beta"}])
    store.close()
    generations = tmp_path / "c" / "generations"
    (tmp_path / "c" / "segments" / "g00000002" / "chunks.arrow").write_text("garbage\n")
    with pytest.raises(CollectionDamaged, match="segment g00000002: the file .*chunks.arrow is damaged \\(size 8, written "
                                                "[0-9]+\\); `stagegraph collection repair"):
        Collection.open(tmp_path / "c")
    assert main(["search", "bm25", "alpha", "--collection", str(tmp_path / "c")]) == 3
    assert "stagegraph collection repair" in capsys.readouterr().err
    assert main(["collection", "repair", str(tmp_path / "c")]) == 0
    with Collection.open(tmp_path / "c") as back:
        assert back.generation.number == 1 and [d.id for d in back.generation.documents()] == ["a"]
    assert not (generations / "00000002").exists()  # the damaged one is gone, generation 1 is current
    (generations / "00000001" / "manifest.json").write_text("{")
    assert main(["collection", "repair", str(tmp_path / "c")]) == 3
    assert "no intact generation" in capsys.readouterr().err
    (tmp_path / "c" / "CURRENT").write_text("not a number")
    with pytest.raises(CollectionDamaged, match="not a generation number"):
        Collection.open(tmp_path / "c")


def test_repair_reads_every_segment_checksum_where_opening_checks_only_sizes(tmp_path):
    """A flipped byte keeps a file's size: opening does not read the data to find it (that is what makes
    opening cheap), `repair` does, and goes back to the newest generation whose segments are intact."""
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": "a", "text": "alpha"}])
    reader = Collection.open(tmp_path / "c")  # keeps generation 1
    store.upsert([{"id": "b", "text": "beta gamma"}])
    path = tmp_path / "c" / "segments" / "g00000002" / "chunks.arrow"
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"gamma")
    data[at] = ord("G")
    path.write_bytes(bytes(data))
    store.close()
    with Collection.open(tmp_path / "c") as c:
        assert c.generation.number == 2  # sizes agree: opened
    assert repair(tmp_path / "c") == 1
    with Collection.open(tmp_path / "c") as back:
        assert [d.id for d in back.generation.documents()] == ["a"]
    reader.close()


def test_repair_goes_back_to_the_newest_intact_generation(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": "a", "text": "alpha"}])
    reader = Collection.open(tmp_path / "c")  # holds generation 1
    store.upsert([{"id": "b", "text": "beta"}])
    (tmp_path / "c" / "generations" / "00000002" / "manifest.json").unlink()
    assert repair(tmp_path / "c") == 1
    with Collection.open(tmp_path / "c") as again:
        assert [d.id for d in again.generation.documents()] == ["a"]
    reader.close()
    store.close()


READER = textwrap.dedent("""
    import sys, time
    import stagegraph as sg
    stack = sg.open(collection=sys.argv[1])
    deadline, target, sizes = time.time() + 60, int(sys.argv[2]), set()
    while time.time() < deadline:  # until the writer's last generation is here (bounded: 60 s)
        if stack.generation >= target:
            break
        sizes.add(len(stack.search("heat flow", k=100).hits))
        stack.refresh()
    sizes.add(len(stack.search("heat flow", k=100).hits))  # on the generation it ends on
    print(sorted(sizes), stack.generation, flush=True)
    stack.close()
""")


def test_readers_in_other_processes_keep_searching_while_a_writer_publishes(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": "d0", "text": "heat flow"}])
    env = {**os.environ, "PYTHONPATH": ""}
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "c"), "6"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    time.sleep(2.5)  # let them open and start searching
    for i in range(1, 6):
        store.upsert([{"id": f"d{i}", "text": f"heat flow {i} more"}])
    outputs = [r.communicate(timeout=120) for r in readers]
    for (out, err), reader in zip(outputs, readers):
        assert reader.returncode == 0, err[-2000:]
        sizes, generation = out.rsplit(" ", 1)
        assert int(generation) == 6  # refresh moved them to the newest generation
        assert json.loads(sizes)[-1] == 6 and set(json.loads(sizes)) <= set(range(1, 7))
    leases = [p.name for p in (tmp_path / "c" / "readers").glob("*.lease")]
    assert not any(name.startswith(f"{r.pid}-") for r in readers for name in leases)  # closed readers hold nothing
    store.close()


def test_the_text_cache_forgets_texts_no_chunk_has_any_more(tmp_path, tiny_model):
    import sqlite3

    from stagegraph.indexes.text_cache import text_key

    store = Collection.create(tmp_path / "c", hybrid(tiny_model), chunker=ChunkerConfig(kind="none"))
    store.upsert([{"id": "a", "text": "cell protein gene"}, {"id": "b", "text": "wing shock flow"},
                  {"id": "c", "text": "wing shock flow"}])  # b and c share a text
    cache = store.text_cache()

    def cached() -> dict[str, set[str]]:  # text key -> the namespaces holding it (BM25 tokens, embeddings)
        rows = sqlite3.connect(cache.path).execute("SELECT ns, key FROM entries").fetchall()
        out: dict[str, set[str]] = {}
        for ns, key in rows:
            out.setdefault(key, set()).add(ns)
        return out

    first = cached()
    assert set(first) == {text_key("cell protein gene"), text_key("wing shock flow")}
    assert all(len(namespaces) == 2 for namespaces in first.values())
    store.upsert([{"id": "a", "text": "cancer risk study"}])  # a's old text is gone
    assert set(cached()) == {text_key("cancer risk study"), text_key("wing shock flow")}
    store.delete(["b"])  # c still has the shared text: kept
    assert set(cached()) == {text_key("cancer risk study"), text_key("wing shock flow")}
    store.delete(["c"])
    assert set(cached()) == {text_key("cancer risk study")}
    store.close()
