"""Segmented collections at scale: build, open, one-document upserts, a 1% update, segments and merges.

    nice -n 10 .venv/bin/python benchmarks/collection.py [--chunks 1000000] [--dense-chunks 20000]
        [--upserts 100] [--vectors 100000 --vector-index Flat] [--batch 1000000] [--scifact DIR]

A synthetic corpus of one-chunk documents (30-50 Zipfian pseudo-words each, a `year` in metadata;
chunker `none`, so the chunk count is exact) goes into a BM25-only collection of `--chunks`
documents, built `--batch` documents per commit (one segment each: a 10M-chunk build in one
commit would hold every chunk as a Python object at once). Each step runs in its own subprocess,
so its peak memory (`ru_maxrss`) is its own. Printed, with the machine and its load average:

* build: seconds, peak GB, chunks/s;
* open: `stagegraph.open` in a fresh process until the first search answers (modules load then),
  then again in that process with nothing of the collection kept in memory (what the collection
  itself costs to open), seconds, and the resident memory (RSS, interpreter and libraries included);
* upserts: `--upserts` one-document upserts by a long-lived writer process (`Collection.upsert`:
  the writer lock, a new segment, its indexes, publish, at most one small merge), each found by a
  reader in this process (`stagegraph.open`, watching `CURRENT` every 0.1 s, as a server does):
  commit seconds (writer side) and upsert-to-visible seconds (from the call to the first search
  that finds it), P50 / P99;
* a 1% update (a third added, changed, deleted) in one commit, as a ratio of the full build;
* search: `stack.search` k=100 P50 / P95 over 200 queries drawn as `benchmarks/bm25.py` draws them
  (2-5 Zipfian terms, the 100 most frequent excluded) on the fresh single-segment build (or the
  build's segments), after the upserts and the update (more segments, deleted rows), as a ratio;
* segments: one-document commits with merges held back until the collection has 20 segments, and
  search P50 / P95 then, as a ratio of the single-segment build;
* merge: `stagegraph collection compact` in another process: its seconds, and search P50 / P95
  in this process while it runs (`--no-compact` leaves it out).

`--dense-chunks N` adds the encoded BM25 + dense (all-MiniLM-L6-v2, Flat) -> RRF build of N documents
(build, 1% update, search); `--vectors N` a hybrid collection whose records carry precomputed
384-wide vectors (random, unit length: this measures the index, not the encoder) with
`--vector-index` (Flat or HNSW32): build, open, upserts. `--scifact DIR` ingests SciFact's corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tables import print_markdown  # benchmarks/tables.py (scripts run with benchmarks/ on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BM25 = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]}
HYBRID = {"pipeline": [
    {"parallel": [{"type": "bm25", "name": "bm25", "k": 100},
                  {"type": "dense", "name": "dense", "k": 100, "model": MODEL}]},
    {"type": "pool", "name": "pool", "method": "rrf", "k": 100},
]}
VOCABULARY = 20_000


def record(i: int, rng, prefix: str = "doc") -> dict:
    words = (rng.zipf(1.3, rng.integers(30, 51)) - 1) % VOCABULARY
    return {"id": f"{prefix}{i:08d}", "title": "", "text": " ".join(f"w{w}" for w in words),
            "metadata": {"year": int(2015 + i % 10)}}


def queries(n: int, seed: int = 3) -> list[str]:
    """2-5 Zipfian terms each, the 100 most frequent excluded (as benchmarks/bm25.py draws them)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        terms = [t for t in (rng.zipf(1.3, rng.integers(2, 6)) - 1) % VOCABULARY if t >= 100]
        if terms:
            out.append(" ".join(f"w{t}" for t in terms))
    return out


PRELUDE = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
def rss_gb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
def record(i, rng, prefix="doc"):
    words = (rng.zipf(1.3, rng.integers(30, 51)) - 1) % VOCABULARY_SIZE
    return {"id": f"{prefix}{i:08d}", "title": "", "text": " ".join(f"w{w}" for w in words),
            "metadata": {"year": int(2015 + i % 10)}}
def unit_vectors(n, dim, seed):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
""".replace("VOCABULARY_SIZE", str(VOCABULARY))

BUILD = PRELUDE + r"""
from stagegraph.collection import Collection
from stagegraph.corpora.ingest import ChunkerConfig, RecordFields
config, root, n, batch, dim = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
records = RecordFields(vector="vector", vector_model=sys.argv[6]) if dim else None
started = time.perf_counter()
store = Collection.create(root, config, chunker=ChunkerConfig(kind="none"), records=records)
rng = np.random.default_rng(0)
for first in range(0, n, batch):
    docs = [record(i, rng) for i in range(first, min(n, first + batch))]
    if dim:
        for doc, row in zip(docs, unit_vectors(len(docs), dim, first)):
            doc["vector"] = row.tolist()
    store.upsert(docs)
    del docs
    print(f"built {min(n, first + batch)} of {n} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
print(json.dumps({"seconds": time.perf_counter() - started, "chunks": store.generation.manifest.chunks,
                  "segments": len(store.generation.manifest.segments), "peak_gb": peak_gb()}))
"""

OPEN = PRELUDE + r"""
import stagegraph as sg
started = time.perf_counter()
with sg.open(collection=sys.argv[1], watch=None) as stack:  # the first: modules load (numba's cached kernel too)
    stack.search(sys.argv[2], k=10)
    first = time.perf_counter() - started
    from stagegraph.collection import segments
    from stagegraph.stages.retrieve import bm25, dense
    for cache in (segments._OPEN, bm25._LOADED._items, dense._LOADED._items):  # nothing of it kept in memory
        cache.clear()
    started = time.perf_counter()
    with sg.open(collection=sys.argv[1], watch=None) as again:  # a second: what the collection itself costs
        again.search(sys.argv[2], k=10)
        second = time.perf_counter() - started
    print(json.dumps({"seconds": first, "again": second, "rss_gb": rss_gb()}))
"""

UPDATE = PRELUDE + r"""
from stagegraph.collection import Collection
root, n = Path(sys.argv[1]), int(sys.argv[2])
third = max(1, n // 300)
rng = np.random.default_rng(7)
store = Collection.open(root)
started = time.perf_counter()
with store.writer() as w:
    changed = [record(i, rng) for i in range(third)]
    for doc in changed:
        doc["text"] += " updated"
    w.upsert(changed + [record(i, rng, "new") for i in range(third)], source=__import__("stagegraph.collection.sources", fromlist=["PYTHON"]).PYTHON)
    w.delete([f"doc{i:08d}" for i in range(third, 2 * third)])
    w.commit()
print(json.dumps({"seconds": time.perf_counter() - started, "documents": 3 * third, "peak_gb": peak_gb(),
                  "segments": len(store.generation.manifest.segments)}))
"""

WRITER = PRELUDE + r"""
from stagegraph.collection import Collection
root, dim, seed = Path(sys.argv[1]), int(sys.argv[2]), 11
store = Collection.open(root)
print("ready", flush=True)
for line in sys.stdin:
    doc_id = line.strip()
    doc = {"id": doc_id, "title": "", "text": f"zz{doc_id} marker", "metadata": {"year": 2025}}
    if dim:
        doc["vector"] = unit_vectors(1, dim, seed).tolist()[0]
        seed += 1
    started = time.time()
    store.upsert([doc])
    print(json.dumps({"started": started, "committed": time.time(), "segments": len(store.generation.manifest.segments)}), flush=True)
store.close()
"""

SEGMENTS = PRELUDE + r"""
from stagegraph.collection import Collection
root, wanted = Path(sys.argv[1]), int(sys.argv[2])
store = Collection.open(root)
i = 0
while len(store.generation.manifest.segments) < wanted:  # one-document commits, merges held back
    with store.writer(merge_after_commit=False) as w:
        w.upsert([{"id": f"extra{i:05d}", "text": f"w{100 + i} w{200 + i} extra"}], source=__import__("stagegraph.collection.sources", fromlist=["PYTHON"]).PYTHON)
        w.commit()
    store.refresh()
    i += 1
print(json.dumps({"segments": len(store.generation.manifest.segments)}))
"""

COMPACT = PRELUDE + r"""
from stagegraph.collection import Collection
started = time.perf_counter()
with Collection.open(sys.argv[1]) as store:
    store.compact()
print(json.dumps({"seconds": time.perf_counter() - started, "peak_gb": peak_gb()}))
"""


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}


def child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env())
    if done.returncode:
        raise SystemExit(f"a benchmark step failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_times(stack, texts: list[str], *, until=None) -> np.ndarray:
    for q in texts[:10]:
        stack.search(q, k=100)
    ms = []
    while True:
        for q in texts:
            t = time.perf_counter_ns()
            stack.search(q, k=100)
            ms.append((time.perf_counter_ns() - t) / 1e6)
        if until is None or until():
            return np.array(ms)


def pct(values, *ps: float) -> str:
    return " / ".join(f"{np.percentile(values, p):.2f}" for p in ps)


def upserts(root: Path, n: int, dim: int) -> dict:
    """`n` one-document upserts by another (long-lived) process; how long until this process finds each."""
    import stagegraph as sg

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(dim)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env())
    assert writer.stdout.readline().strip() == "ready"
    commit, visible, segments = [], [], []
    with sg.open(collection=root, watch=0.1) as stack:
        for i in range(n):
            doc_id = f"visible{i:05d}"
            writer.stdin.write(doc_id + "\n")
            writer.stdin.flush()
            deadline = time.time() + 300
            while not any(h.doc_id == doc_id for h in stack.search(f"zz{doc_id}", k=10).hits):  # (a hybrid fuses ties)
                if time.time() > deadline:
                    raise SystemExit(f"{doc_id} never became visible")
                time.sleep(0.002)
            found = time.time()
            times = json.loads(writer.stdout.readline())
            commit.append(times["committed"] - times["started"])
            visible.append(found - times["started"])
            segments.append(times["segments"])
    writer.stdin.close()
    writer.wait()
    return {"commit": pct(commit, 50, 99), "visible": pct(visible, 50, 99), "segments": max(segments)}


def scale_run(label: str, config: dict, n: int, batch: int, dim: int, n_upserts: int, work: Path,
              compact: bool = True) -> list[list[str]]:
    import stagegraph as sg

    root = work / label.replace(" ", "-")
    texts = queries(200)
    build = child(BUILD, json.dumps(config), str(root), str(n), str(batch), str(dim), MODEL)
    opened = child(OPEN, str(root), texts[0])
    with sg.open(collection=root, watch=None) as stack:
        single = search_times(stack, texts)
    ups = upserts(root, n_upserts, dim) if n_upserts else None
    update = child(UPDATE, str(root), str(n)) if not dim else None
    with sg.open(collection=root, watch=None) as stack:
        segmented = search_times(stack, texts)
        segments = len(stack.current.manifest.segments)
    many = child(SEGMENTS, str(root), "20") if not dim else None
    with sg.open(collection=root, watch=None) as stack:
        at_many = search_times(stack, texts)
        if compact:
            merging = subprocess.Popen([sys.executable, "-c", COMPACT, str(root)], stdout=subprocess.PIPE, text=True, env=env())
            during = search_times(stack, texts, until=lambda: merging.poll() is not None)
    merge = json.loads(merging.stdout.read().strip().splitlines()[-1]) if compact else None
    rows = [
        [label, "build", f"{build['chunks']:,} chunks in {build['segments']} segment(s), {batch:,} per commit",
         f"{build['seconds']:.1f} s, peak {build['peak_gb']:.2f} GB, {build['chunks'] / build['seconds']:,.0f} chunks/s"],
        [label, "open, to the first answer", "fresh process (modules load) / again in it",
         f"{opened['seconds']:.2f} s / {opened['again']:.3f} s, {opened['rss_gb']:.2f} GB resident"],
    ]
    if ups:
        rows.append([label, f"one-document upsert x {n_upserts} (another process; reader polls every 0.1 s)",
                     f"up to {ups['segments']} segments", f"commit {ups['commit']} s; upsert to visible {ups['visible']} s (P50 / P99)"])
    if update:
        rows.append([label, f"1% update ({update['documents']:,} documents, one commit)", f"{update['segments']} segments after",
                     f"{update['seconds']:.1f} s = {100 * update['seconds'] / build['seconds']:.1f}% of the build, "
                     f"peak {update['peak_gb']:.2f} GB"])
    rows += [
        [label, "search k=100, single-segment build", f"{build['segments']} segment(s)", f"P50 / P95 {pct(single, 50, 95)} ms"],
        [label, "search k=100 after the writes", f"{segments} segments",
         f"P50 / P95 {pct(segmented, 50, 95)} ms = {np.percentile(segmented, 50) / np.percentile(single, 50):.2f}x P50"],
    ]
    if many:
        rows.append([label, "search k=100, merges held back", f"{many['segments']} segments",
                     f"P50 / P95 {pct(at_many, 50, 95)} ms = {np.percentile(at_many, 50) / np.percentile(single, 50):.2f}x P50"])
    if merge:
        rows.append([label, "compact (another process) / search meanwhile", f"{many['segments'] if many else segments} -> 1 segment",
                     f"{merge['seconds']:.1f} s, peak {merge['peak_gb']:.2f} GB / P50 / P95 {pct(during, 50, 95)} ms"])
    return rows


def encoded_run(label: str, config: dict, n: int, work: Path) -> list[list[str]]:
    """The encoded hybrid: build (encoding every chunk), a 1% update, search (small n: encoding is slow)."""
    import stagegraph as sg

    root = work / label.replace(" ", "-")
    texts = queries(200)
    build = child(BUILD, json.dumps(config), str(root), str(n), str(n), "0", MODEL)
    update = child(UPDATE, str(root), str(n))
    with sg.open(collection=root, watch=None) as stack:
        after = search_times(stack, texts)
    return [[label, "build", f"{build['chunks']:,} chunks", f"{build['seconds']:.1f} s, peak {build['peak_gb']:.2f} GB"],
            [label, f"1% update ({update['documents']:,} documents)", f"{update['segments']} segments after",
             f"{update['seconds']:.1f} s = {100 * update['seconds'] / build['seconds']:.1f}% of the build"],
            [label, "search k=100 after the update", "", f"P50 / P95 {pct(after, 50, 95)} ms"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="documents (= chunks) of the BM25-only collection (0: none)")
    parser.add_argument("--batch", type=int, default=1_000_000, help="documents per commit while building")
    parser.add_argument("--upserts", type=int, default=100, help="one-document upserts to time (0: none)")
    parser.add_argument("--dense-chunks", type=int, default=0, help="documents of the encoded BM25 + dense build (0: none)")
    parser.add_argument("--vectors", type=int, default=0, help="documents of the precomputed-vector hybrid (0: none)")
    parser.add_argument("--vector-index", default="Flat", help="FAISS factory of the precomputed-vector hybrid")
    parser.add_argument("--no-compact", action="store_true", help="leave out the compaction step")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sg-collection-bench-"))
    rows: list[list[str]] = []
    try:
        if args.chunks:
            rows += scale_run("BM25", BM25, args.chunks, args.batch, 0, args.upserts, work, not args.no_compact)
        if args.vectors:
            hybrid = json.loads(json.dumps(HYBRID))
            hybrid["pipeline"][0]["parallel"][1]["index"] = args.vector_index
            rows += scale_run(f"hybrid, vectors, {args.vector_index}", hybrid, args.vectors, args.batch, 384, args.upserts, work,
                              not args.no_compact)
        if args.dense_chunks:
            rows += encoded_run("BM25 + dense, encoded", HYBRID, args.dense_chunks, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; chunker none (one chunk per document)")
    print_markdown(["collection", "step", "layout", "figures"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
