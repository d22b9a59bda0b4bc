"""Sharded search on Ray against one collection: latency, throughput, the coordinator's share, bytes, a replica killed.

    nice -n 5 .venv/bin/python benchmarks/shards.py [--chunks 1000000] [--vectors 100000] [--shards 1,2,4]
        [--queries 200] [--replicas 2] [--batch 1000000] [--seconds 10] [--work DIR] [--skip-kill]

Two collections of `benchmarks/collection.py`'s synthetic one-chunk documents (30-50 Zipfian
pseudo-words, chunker `none`): BM25-only of `--chunks` documents, and BM25 + dense
(all-MiniLM-L6-v2, Flat) -> RRF k 100 of `--vectors` documents whose records carry precomputed
384-wide random unit vectors (this measures the index, not the encoder; each query is still encoded,
on the coordinator). Each is built unsharded and as one sharded collection per `--shards` count (the
same documents; `--batch` per commit; each build in its own process). `--work DIR` keeps the builds,
and a later run reuses a build whose chunk count matches. Then, on one local Ray cluster (loopback,
a logical CPU per core), the unsharded one is searched in this process (`stagegraph.open`) and each
shard count through `ShardedSearch(replicas=1)` behind a `Stack` bound by `search.bind`:

* latency: `stack.search` k=10, one client, over `--queries` queries (drawn as `benchmarks/bm25.py`
  draws them). A first pass (first calls, caches; on Ray, each term's document frequency gathered
  once per generation, an extra round trip) then a measured pass, P50 / P95 / P99 ms and its P50 as
  a ratio of the unsharded one; the first pass's P50 beside it;
* identical: the top-10 ids of the first 20 queries, every shard count against the unsharded one;
* throughput: 4 client threads in a closed loop for `--seconds` s: queries/s and the ratio;
* the coordinator's share, in a third pass with `measure=True` (so its pickling does not weigh on
  the figures above; it does on these, ~0.1 ms per 4-shard scatter on a 2-core Xeon): per search,
  end-to-end time minus the sum over its scatters of `slowest_shard_ns` (the slowest shard's own
  compute inside its actor), P50, and of it the part outside the scatters (end to end minus the sum
  of their `wall_ns`: parsing, fusion, hits), P50; per scatter, `wall_ns - slowest_shard_ns` (the
  round trip: Ray's submit, transfer, wake-up, gather), P50; shard time per search (the sum of
  `slowest_shard_ns`), P50; scatters per search; bytes moved per search (pickled requests x shards +
  answers), mean. In the hybrid the two legs scatter side by side (parallel branches), so the sums
  overstate what is on the critical path and the coordinator figures are understated (the part
  outside the scatters is left out); they include encoding the query, which the coordinator does,
  and a leg's call waiting behind the other leg's in the same actor;
* a replica killed (unless `--skip-kill`): the BM25 collection in 4 shards, `replicas=2`, warmed by
  two passes over the queries (the second alternates replicas), then 2 clients with 20 ms between
  requests (below saturation) for 10 s; 2 s in, shard 0 replica 0's process gets SIGKILL. Failed
  requests (target 0), calls retried on the other replica and calls hedged to it (a second call after
  0.25 s without an answer), latency meanwhile, and seconds until `search.health()` shows every replica live
  again (at most 30 s), with the replica's process id before and after.

Last, the cost model's inputs (docs/scaling.md): latency(k machines) ~ coordinator + max over shards of shard
time(N/k documents) + round trip; throughput ~ min(k * R / shard time, 1 / coordinator time).
On 2 cores every actor and the coordinator share the same cores: this shows the overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

for _name, _value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                      "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[_name] = _value  # before ray or stagegraph is imported (here and in the build processes)

import numpy as np

from collection import BM25, HYBRID, MODEL, queries, record  # benchmarks/collection.py's corpus and queries
from tables import print_markdown  # benchmarks/tables.py (scripts run with benchmarks/ on sys.path)

DIM = 384
CLIENTS = 4
IDENTICAL = 20  # queries whose top-10 ids are compared
KILL = {"shards": 4, "clients": 2, "pause_s": 0.02, "before_s": 2.0, "after_s": 8.0, "back_within_s": 30.0}


def build(root: str, config: dict, n: int, shards: int, batch: int, dim: int) -> None:
    """`n` documents into a new collection at `root` (`shards` 0: unsharded), `batch` per commit."""
    from stagegraph.collection import Collection
    from stagegraph.collection.sharded import ShardedCollection
    from stagegraph.corpora.ingest import ChunkerConfig, RecordFields

    records = RecordFields(vector="vector", vector_model=MODEL) if dim else None
    chunker = ChunkerConfig(kind="none")
    store = (ShardedCollection.create(root, config, shards=shards, chunker=chunker, records=records) if shards
             else Collection.create(root, config, chunker=chunker, records=records))
    rng, vectors = np.random.default_rng(0), np.random.default_rng(1)
    for first in range(0, n, batch):
        docs = [record(i, rng) for i in range(first, min(n, first + batch))]
        if dim:
            rows = vectors.standard_normal((len(docs), dim)).astype(np.float32)
            for doc, row in zip(docs, rows / np.linalg.norm(rows, axis=1, keepdims=True)):
                doc["vector"] = row.tolist()
        store.upsert(docs)
    store.close()


def ensure(root: Path, config: dict, n: int, shards: int, batch: int, dim: int) -> Path:
    """The build at `root`: reused when it holds `n` chunks in `shards` shards, else built (in another process)."""
    from stagegraph.collection.sharded import open_collection

    if root.exists():
        try:
            with open_collection(root) as found:
                if found.generation.manifest.chunks == n and getattr(found, "shard_count", 0) == shards:
                    return root
        except Exception:  # noqa: BLE001 - a build cut short: built again below
            pass
        shutil.rmtree(root)
    started = time.perf_counter()
    process = multiprocessing.get_context("spawn").Process(target=build, args=(str(root), config, n, shards, batch, dim))
    process.start()
    process.join()
    if process.exitcode:
        raise SystemExit(f"building {root} failed (exit {process.exitcode})")
    print(f"built {root.name}: {n:,} documents in {time.perf_counter() - started:.0f} s", flush=True)
    return root


def timed(stack, texts: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """ms per `stack.search` (k=10) and the top-10 document ids of the first IDENTICAL queries."""
    ms, top = [], []
    for i, q in enumerate(texts):
        t = time.perf_counter_ns()
        hits = stack.search(q, k=10).hits
        ms.append((time.perf_counter_ns() - t) / 1e6)
        if i < IDENTICAL:
            top.append([h.doc_id for h in hits])
    return np.array(ms), top


def closed_loop(stack, texts: list[str], clients: int, seconds: float) -> tuple[float, int]:
    """Queries/s of `clients` threads searching back to back for `seconds`; and the errors."""
    done, errors = [0] * clients, [0] * clients
    end = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = c * len(texts) // clients
        while time.perf_counter() < end:
            try:
                stack.search(texts[i % len(texts)], k=10)
                done[c] += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors[c] += 1
            i += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 120)
    return sum(done) / (time.perf_counter() - started), sum(errors)


def measured(stack, search, texts: list[str]) -> dict:
    """Per search: end to end minus the slowest shard's compute of each of its scatters (see the docstring)."""
    search.measure = True
    share, outside, shard, trip, scatters, moved = [], [], [], [], [], []
    for q in texts:
        before = len(search.stats)
        t = time.perf_counter_ns()
        stack.search(q, k=10)
        total = time.perf_counter_ns() - t
        mine = search.stats[before:]
        own = sum(s["slowest_shard_ns"] for s in mine)
        share.append((total - own) / 1e6)
        outside.append((total - sum(s["wall_ns"] for s in mine)) / 1e6)
        shard.append(own / 1e6)
        trip += [(s["wall_ns"] - s["slowest_shard_ns"]) / 1e6 for s in mine]
        scatters.append(len(mine))
        moved.append(sum(s["bytes"] for s in mine))
    search.measure = False
    return {"share": np.median(share), "outside": np.median(outside), "trip": np.median(trip), "shard": np.median(shard),
            "scatters": np.mean(scatters), "bytes": np.mean(moved)}


def pct(values, *ps: float) -> str:
    return " / ".join(f"{np.percentile(values, p):.2f}" for p in ps)


def kill_test(cluster, root: Path, pipe, replicas: int, texts: list[str]) -> list:
    """A closed loop below saturation while one replica's process is killed (see the docstring)."""
    from prometheus_client import CollectorRegistry

    from stagegraph.collection.sharded import ShardedCollection
    from stagegraph.collection.stack import Stack
    from stagegraph.scale.shards import ShardedSearch

    search = ShardedSearch(cluster, str(root), pipe, replicas=replicas)
    registry = CollectorRegistry()
    search.register(registry)
    ms: list[float] = []
    failed: list[str] = []
    try:
        with Stack(pipe, ShardedCollection(root), bind=search.bind, watch=None) as stack:
            for q in texts + texts:  # every term's frequency gathered once; searches alternate between replicas
                stack.search(q, k=10)
            end = time.perf_counter() + KILL["before_s"] + KILL["after_s"]

            def client(c: int) -> None:
                i = c * len(texts) // KILL["clients"]
                while time.perf_counter() < end:
                    t = time.perf_counter_ns()
                    try:
                        stack.search(texts[i % len(texts)], k=10)
                        ms.append((time.perf_counter_ns() - t) / 1e6)
                    except Exception as exc:  # noqa: BLE001 - the figure this measures
                        failed.append(f"{type(exc).__name__}: {exc}"[:200])
                    i += 1
                    time.sleep(KILL["pause_s"])

            workers = [threading.Thread(target=client, args=(c,)) for c in range(KILL["clients"])]
            for w in workers:
                w.start()
            time.sleep(KILL["before_s"])
            victim = search.groups[0].actors[0]
            pid = cluster.ray.get(victim.ping.remote(), timeout=30)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            back = None
            while back is None and time.monotonic() - killed < KILL["back_within_s"]:  # while the clients run
                if all(h["live"] == h["replicas"] for h in search.health()):
                    back = time.monotonic() - killed
                else:
                    time.sleep(0.25)
            for w in workers:
                w.join(timeout=KILL["after_s"] + 120)
            retried = registry.get_sample_value("stagegraph_shard_retried_total") or 0
            hedged = registry.get_sample_value("stagegraph_shard_hedged_total") or 0
            again = cluster.ray.get(victim.ping.remote(), timeout=30) if back is not None else None
    finally:
        search.close()
    for line in sorted(set(failed))[:5]:
        print(f"failed request: {line}")
    return [f"BM25, {KILL['shards']} shards x {replicas} replicas, {KILL['clients']} clients, {KILL['pause_s'] * 1e3:.0f} ms apart",
            len(ms) + len(failed), len(failed), f"{int(retried)} / {int(hedged)}", pct(ms, 50, 99) + f" / {max(ms):.1f}",
            f"yes, {back:.1f} s after the kill (pid {pid} -> {again})" if back is not None
            else f"NO within {KILL['back_within_s']:.0f} s"]


def run_kind(cluster, label: str, config: dict, roots: dict[int, Path], texts: list[str], seconds: float):
    """Latency, throughput and the coordinator's share: unsharded here, each shard count on Ray."""
    import stagegraph as sg
    from stagegraph.collection.sharded import ShardedCollection
    from stagegraph.collection.stack import Stack
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.scale.shards import ShardedSearch

    rows, costs = [], []
    overlap = any("parallel" in step for step in config["pipeline"])  # legs scatter side by side
    with sg.open(config, collection=roots[0], watch=None) as stack:
        cold, _ = timed(stack, texts)
        base, reference = timed(stack, texts)
        base_qps, errors = closed_loop(stack, texts, CLIENTS, seconds)
    rows.append([label, "unsharded, this process", f"{np.median(cold):.2f}", pct(base, 50, 95, 99), "1.00",
                 f"{base_qps:,.1f}" + (f" ({errors} errors)" if errors else ""), "1.00", "(reference)"])
    for shards in sorted(s for s in roots if s):
        pipe = Pipeline.from_config(config)
        search = ShardedSearch(cluster, str(roots[shards]), pipe, replicas=1)
        try:
            with Stack(pipe, ShardedCollection(roots[shards]), bind=search.bind, watch=None) as stack:
                cold, _ = timed(stack, texts)
                ms, top = timed(stack, texts)
                qps, errors = closed_loop(stack, texts, CLIENTS, seconds)
                cost = measured(stack, search, texts)
        finally:
            search.close()
        rows.append([label, f"{shards} shard(s) on Ray, 1 replica", f"{np.median(cold):.2f}", pct(ms, 50, 95, 99),
                     f"{np.median(ms) / np.median(base):.2f}", f"{qps:,.1f}" + (f" ({errors} errors)" if errors else ""),
                     f"{qps / base_qps:.2f}", "yes" if top == reference else "NO"])
        costs.append([label, shards, f"{cost['share']:.3f}", "n/a (legs overlap)" if overlap else f"{cost['outside']:.3f}",
                      f"{cost['trip']:.3f}", f"{cost['shard']:.3f}", f"{cost['scatters']:.2f}", f"{cost['bytes']:,.0f}"])
    return rows, costs


def machine() -> str:
    name = platform.processor()
    if not name:
        lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        name = lines[0].split(":", 1)[1].strip() if lines else platform.machine()
    return f"{name}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000, help="documents (= chunks) of the BM25-only collection (0: none)")
    parser.add_argument("--vectors", type=int, default=100_000, help="documents of the precomputed-vector hybrid (0: none)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to compare with the unsharded collection")
    parser.add_argument("--queries", type=int, default=200, help="queries per pass")
    parser.add_argument("--replicas", type=int, default=2, help="replicas per shard in the kill test")
    parser.add_argument("--batch", type=int, default=1_000_000, help="documents per commit while building")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each closed-loop throughput run")
    parser.add_argument("--work", help="directory for the builds, kept (default: a temporary one, removed)")
    parser.add_argument("--skip-kill", action="store_true", help="leave out the replica-kill test")
    args = parser.parse_args(argv)
    counts = sorted({int(s) for s in args.shards.split(",")})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sg-shards-bench-"))
    texts = queries(args.queries)
    hybrid = {"pipeline": [{"parallel": [dict(HYBRID["pipeline"][0]["parallel"][0]),
                                         {**HYBRID["pipeline"][0]["parallel"][1], "index": "Flat"}]},
                           dict(HYBRID["pipeline"][1])]}
    kinds = [(f"BM25 {args.chunks:,}", BM25, args.chunks, 0), (f"hybrid {args.vectors:,} (vectors, Flat)", hybrid, args.vectors, DIM)]
    kinds = [k for k in kinds if k[2]]
    load_before = os.getloadavg()
    try:
        builds = []
        for i, (label, config, n, dim) in enumerate(kinds):
            wanted = counts + ([KILL["shards"]] if i == 0 and not args.skip_kill else [])
            where = work / f"{'bm25' if not dim else 'hybrid'}-{n}"
            roots = {s: ensure(where / (f"shards-{s}" if s else "unsharded"), config, n, s, args.batch, dim)
                     for s in sorted({0, *wanted})}
            builds.append((label, config, roots))
        from stagegraph.pipeline.compose import Pipeline
        from stagegraph.scale.cluster import RayCluster

        rows, costs, killed = [], [], []
        with RayCluster(None, workers=os.cpu_count()) as cluster:
            for label, config, roots in builds:
                found, cost = run_kind(cluster, label, config, {s: r for s, r in roots.items() if s in [0, *counts]},
                                       texts, args.seconds)
                rows += found
                costs += cost
            if not args.skip_kill and builds:
                label, config, roots = builds[0]
                killed.append(kill_test(cluster, roots[KILL["shards"]], Pipeline.from_config(config), args.replicas, texts))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    import ray

    print(f"\n{machine()}; ray {ray.__version__}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{args.queries} queries, k=10; chunker none (one chunk per document)")
    if (os.cpu_count() or 1) <= 2:
        print("On 2 cores the actors and the coordinator share the same cores: this shows the overhead, not a speed-up.")
    print()
    print_markdown(["collection", "setup", "first pass P50 ms", "P50 / P95 / P99 ms", "P50 vs unsharded",
                    f"q/s, {CLIENTS} clients, {args.seconds:g} s", "q/s vs unsharded", f"top-10 identical ({IDENTICAL} queries)"], rows)
    print()
    print_markdown(["collection", "shards", "coordinator share P50 ms (end to end - sum of slowest shard)",
                    "of it outside the scatters P50 ms (end to end - sum of scatter walls)",
                    "round trip P50 ms (per scatter: wall - slowest shard)", "shard time P50 ms (sum of slowest shard)",
                    "scatters / search", "bytes / search (mean)"], costs)
    if killed:
        print()
        print_markdown(["replica killed (SIGKILL, 2 s in, 10 s in all)", "requests", "failed", "retried / hedged calls",
                        "latency P50 / P99 / max ms", "replica back (health)"], killed)
    print("\nCost model inputs: latency(k machines) ~ coordinator + max over shards of shard time(N/k docs) + round trip;"
          " throughput ~ min(k * R / shard time, 1 / coordinator time). Target: coordinator share <= 1 ms P50 at 4 shards.")
    for label, shards, share, outside, trip, shard, _, _ in costs:
        print(f"  {label}, {shards} shard(s): shard time P50 {shard} ms; coordinator P50 {share} ms in all, of it {outside}"
              f"{'' if 'n/a' in outside else ' ms'} outside the scatters; round trip P50 {trip} ms per scatter")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
