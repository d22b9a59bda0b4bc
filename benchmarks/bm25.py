"""BM25 backends on synthetic Zipfian corpora: build time, peak memory, latency, throughput.

    nice -n 10 .venv/bin/python benchmarks/bm25.py --sizes 10k,100k,1m

For each corpus size the script generates (once, cached under --cache-dir) a corpus of term ids:
vocabulary 50,000, term ranks drawn from a Zipf law (s = 1), document lengths Poisson(130). It
draws 1,000 queries of 2-5 terms from the same Zipf law without the 100 most frequent terms
(those play the part of stopwords, which analysis removes from real queries). Each backend then
runs in its own subprocess, so its peak memory (`ru_maxrss`) is its own:

* `sparse`       - stagegraph's default backend (indexes/bm25.py), numba kernel when installed;
* `sparse-numpy` - the same index with the vectorised numpy path (no numba);
* `bm25s`        - bm25s (method lucene, numba backend), the same k1/b;
* `rank_bm25`    - the card's reference (stagegraph's rank_bm25 backend = BM25Okapi with the Lucene idf).

All backends get the corpus already as term ids / term strings (no text analysis), so "build" is
the indexing work alone. "input" is the process RSS once that input is in memory; "peak" is the
process's peak RSS (both include the Python interpreter and libraries). Single-query latency is
the wall-clock time of one public call per query (stagegraph: `index.search(text, 100)` including analysis;
bm25s: `retrieve([tokens], k=100)`; rank_bm25: `get_scores` + top-100), after 20 warm-up queries,
one thread; the CPU columns give the same calls' thread CPU time, which leaves out the time the
process waited for a core (on a shared machine, wall-clock tails are mostly that wait). Batched throughput: all queries in one call (stagegraph `search_batch`, bm25s
`retrieve(..., n_threads=1)`); rank_bm25 has no batch call, its figure is 1 / mean latency.
rank_bm25 scores every document in Python for every query, so its query count is capped
(--rank-bm25-queries; default 2e7 / documents, at least 20): the table says how many were timed.
Timings are only comparable within one run on one machine; the ratio columns compare with
rank_bm25 measured in the same run. The sparse index of each size is kept beside its corpus;
`--latency-only` reloads it (memory-mapped) and times the same queries again, which takes a
second or two of CPU and so can run at normal priority on a shared machine:

    python benchmarks/bm25.py --sizes 1m --latency-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sparse", "sparse-numpy", "bm25s", "rank_bm25")
K = 100
WARMUP = 20


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


# --------------------------------------------------------------------------- data generation
def generate(n_docs: int, vocab: int, doc_len: float, n_queries: int, skip: int, seed: int, cache: Path) -> Path:
    path = cache / f"zipf-n{n_docs}-v{vocab}-l{doc_len:g}-s{seed}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    cdf /= cdf[-1]
    lengths = np.maximum(1, rng.poisson(doc_len, n_docs)).astype(np.int64)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    term_ids = np.empty(int(offsets[-1]), dtype=np.int32)
    for start in range(0, len(term_ids), 10_000_000):
        u = rng.random(min(10_000_000, len(term_ids) - start))
        term_ids[start : start + len(u)] = np.searchsorted(cdf, u)
    weights = 1.0 / np.arange(1, vocab + 1)
    weights[:skip] = 0.0
    weights /= weights.sum()
    sizes = rng.integers(2, 6, n_queries)
    q_terms = rng.choice(vocab, size=int(sizes.sum()), p=weights).astype(np.int32)
    q_offsets = np.concatenate([[0], np.cumsum(sizes)])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, term_ids=term_ids, offsets=offsets, q_terms=q_terms, q_offsets=q_offsets)
    os.replace(tmp, path)
    return path


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    data = np.load(path)
    q_terms, q_offsets = data["q_terms"], data["q_offsets"]
    queries = [[f"t{t}" for t in q_terms[q_offsets[i] : q_offsets[i + 1]]] for i in range(len(q_offsets) - 1)]
    return data["term_ids"], data["offsets"], queries


# ------------------------------------------------------------------------------- backends
def index_dir(data_path: Path) -> Path:
    return data_path.with_name(data_path.stem + "-sparse-index")


def latencies(call, queries: list, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Wall-clock and CPU (this thread) milliseconds per query, after WARMUP untimed queries."""
    for q in queries[:WARMUP]:
        call(q)
    timed = queries[:limit]
    wall, cpu = np.empty(len(timed)), np.empty(len(timed))
    for i, q in enumerate(timed):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        call(q)
        wall[i] = (time.perf_counter_ns() - t0) / 1e6
        cpu[i] = (time.thread_time_ns() - c0) / 1e6
    return wall, cpu, len(timed)


def child(backend: str, data_path: Path, vocab: int, k1: float, b: float, max_queries: int) -> dict:
    sys.path.insert(0, str(ROOT))
    term_ids, offsets, queries = load_data(data_path)
    n_docs = len(offsets) - 1
    vocab_terms = [f"t{i}" for i in range(vocab)]
    result: dict = {"backend": backend, "docs": n_docs}
    limit = len(queries) if backend != "rank_bm25" else min(len(queries), max_queries)

    if backend.startswith("sparse"):
        from stagegraph.indexes.bm25 import BM25Index, BM25Settings
        from stagegraph.indexes.bm25_scoring import SparseSearcher
        from stagegraph.indexes.tokenize import TokenizedCorpus, Tokenizer

        tokens = TokenizedCorpus(term_ids, offsets, vocab_terms)
        settings = BM25Settings(k1=k1, b=b, tokenizer=Tokenizer(stopwords=None, stemmer=None))
        result["input_gb"] = rss_gb()
        t0 = time.perf_counter()
        index = BM25Index.from_tokens(tokens, settings, corpus_fingerprint="synthetic")
        result["build_s"] = time.perf_counter() - t0
        result["peak_gb"] = peak_gb()
        if backend == "sparse-numpy":
            index._sparse = SparseSearcher(index._scores, use_numba=False)
        index.warm_up()
        texts = [" ".join(q) for q in queries]
        lat, cpu, result["timed"] = latencies(lambda q: index.search(q, K), texts, limit)
        t0 = time.perf_counter()
        index.search_batch(texts, K)
        result["batch_qps"] = len(texts) / (time.perf_counter() - t0)
        if backend == "sparse":  # kept beside the corpus for --latency-only
            directory = index_dir(data_path)
            t0 = time.perf_counter()
            index.save(directory)
            result["save_s"] = time.perf_counter() - t0
            for verify in (False, True):
                t0 = time.perf_counter()
                loaded = BM25Index.load(directory, mmap=True, verify=verify)
                loaded.search(texts[0], K)
                result["load_verify_s" if verify else "load_mmap_s"] = time.perf_counter() - t0
            result["disk_gb"] = sum(p.stat().st_size for p in directory.iterdir()) / 1e9
    elif backend == "bm25s":
        import bm25s

        docs = [term_ids[offsets[i] : offsets[i + 1]].tolist() for i in range(n_docs)]
        del term_ids
        vocab_dict = {t: i for i, t in enumerate(vocab_terms)}
        result["input_gb"] = rss_gb()
        retriever = bm25s.BM25(method="lucene", k1=k1, b=b, backend="numba")
        t0 = time.perf_counter()
        retriever.index((docs, vocab_dict), show_progress=False)
        result["build_s"] = time.perf_counter() - t0
        result["peak_gb"] = peak_gb()
        del docs
        call = lambda q: retriever.retrieve([q], k=K, show_progress=False, n_threads=1)  # noqa: E731
        lat, cpu, result["timed"] = latencies(call, queries, limit)
        t0 = time.perf_counter()
        retriever.retrieve(queries, k=K, show_progress=False, n_threads=1)
        result["batch_qps"] = len(queries) / (time.perf_counter() - t0)
    elif backend == "rank_bm25":
        from stagegraph.indexes.bm25_reference import ReferenceSearcher
        from stagegraph.indexes.bm25_scoring import top_k
        from stagegraph.indexes.tokenize import TokenizedCorpus

        tokens = TokenizedCorpus(term_ids, offsets, vocab_terms)
        result["input_gb"] = rss_gb()
        t0 = time.perf_counter()
        searcher = ReferenceSearcher(tokens, "lucene", k1, b)
        result["build_s"] = time.perf_counter() - t0
        result["peak_gb"] = peak_gb()
        lat, cpu, result["timed"] = latencies(lambda q: top_k(*searcher.score(q), K), queries, limit)
        result["batch_qps"] = 1000.0 / lat.mean()
    else:
        raise SystemExit(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    result.update({"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                   "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
                   "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99))})
    result["peak_gb"] = max(result["peak_gb"], peak_gb())
    return result


# ----------------------------------------------------------------------------------- table
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = ("| docs | backend | build s | input GB | peak GB | P50 ms | P95 ms | P99 ms | batch q/s "
            "| CPU P50 ms | CPU P99 ms | timed | P50 vs rank_bm25 | q/s vs rank_bm25 |")
    print(head)
    print("|" + " --- |" * 2 + " ---: |" * (head.count("|") - 3))
    for r in rows:
        if "error" in r:
            print(f"| {r['docs']:,} | {r['backend']} | failed: {r['error']} |")
            continue
        base = next((x for x in rows if x["docs"] == r["docs"] and x["backend"] == "rank_bm25" and "error" not in x), None)
        speed = base["p50_ms"] / r["p50_ms"] if base else None
        qps = r["batch_qps"] / base["batch_qps"] if base else None
        print(f"| {r['docs']:,} | {r['backend']} | {fmt(r['build_s'], '.1f')} | {fmt(r['input_gb'], '.2f')} | "
              f"{fmt(r['peak_gb'], '.2f')} | {fmt(r['p50_ms'], '.3f')} | {fmt(r['p95_ms'], '.3f')} | "
              f"{fmt(r['p99_ms'], '.3f')} | {fmt(r['batch_qps'], ',.0f')} | {fmt(r['cpu_p50_ms'], '.3f')} | "
              f"{fmt(r['cpu_p99_ms'], '.3f')} | {r['timed']} | "
              f"{fmt(speed, ',.0f')}x | {fmt(qps, ',.0f')}x |")
    extra = [r for r in rows if "save_s" in r]
    if extra:
        print("\nsparse index on disk: " + "; ".join(
            f"{r['docs']:,} docs: {r['disk_gb']:.2f} GB, save {r['save_s']:.1f} s, load mmap {r['load_mmap_s']:.2f} s, "
            f"load + verify checksums {r['load_verify_s']:.1f} s" for r in extra))


def latency_only(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from stagegraph.indexes.bm25 import BM25Index

    print("| docs | backend | load s | P50 ms | P95 ms | P99 ms | CPU P50 ms | CPU P99 ms | timed | nice |")
    print("| --- | --- |" + " ---: |" * 8)
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        data = Path(args.cache_dir) / f"zipf-n{size}-v{args.vocab}-l{args.doc_len:g}-s{args.seed}.npz"
        if not index_dir(data).is_dir():
            print(f"no kept index for {size:,} docs under {args.cache_dir}: run the full benchmark first", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        index = BM25Index.load(index_dir(data), mmap=True, verify=False)
        index.warm_up()
        load_s = time.perf_counter() - t0
        texts = [" ".join(q) for q in load_data(data)[2]]
        wall, cpu, timed = latencies(lambda q: index.search(q, K), texts, len(texts))
        p = lambda a, q: float(np.percentile(a, q))  # noqa: E731
        print(f"| {size:,} | sparse (mmap) | {load_s:.2f} | {p(wall, 50):.3f} | {p(wall, 95):.3f} | {p(wall, 99):.3f} | "
              f"{p(cpu, 50):.3f} | {p(cpu, 99):.3f} | {timed} | {os.nice(0)} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1m", help="corpus sizes, e.g. 10k,100k,1m")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {', '.join(BACKENDS)}")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rank-bm25-queries", type=int, default=None,
                        help="queries timed for rank_bm25 (default 2e7 / documents, at least 20)")
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--doc-len", type=float, default=130.0)
    parser.add_argument("--stop-ranks", type=int, default=100, help="most frequent terms never used in queries")
    parser.add_argument("--k1", type=float, default=0.9)
    parser.add_argument("--b", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "stagegraph-bench"))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per backend and size")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--latency-only", action="store_true",
                        help="only time single queries on the sparse indexes a previous run kept (seconds of CPU; "
                             "run it without nice to see latency without waiting for a shared core)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--max-queries", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, Path(args.data), args.vocab, args.k1, args.b, args.max_queries)))
        return 0
    if args.latency_only:
        return latency_only(args)

    rows: list[dict] = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        data = generate(size, args.vocab, args.doc_len, args.queries, args.stop_ranks, args.seed, Path(args.cache_dir))
        print(f"# {size:,} docs: corpus ready in {time.perf_counter() - t0:.1f} s ({data})", file=sys.stderr, flush=True)
        cap = args.rank_bm25_queries or max(20, int(2e7 / size))
        for backend in args.backends.split(","):
            cmd = [sys.executable, __file__, "--child", backend, "--data", str(data), "--vocab", str(args.vocab),
                   "--k1", str(args.k1), "--b", str(args.b), "--max-queries", str(cap)]
            env = {**os.environ, "TQDM_DISABLE": "1", "DISABLE_TQDM": "1"}
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                if proc.returncode != 0:
                    raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, RuntimeError) as exc:
                row = {"docs": size, "backend": backend, "error": str(exc)[:120]}
            rows.append(row)
            print(f"# {backend} at {size:,}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"\nBM25 top-{K}, vocabulary {args.vocab:,}, ~{args.doc_len:g} tokens/doc, {args.queries} queries of 2-5 terms "
          f"(Zipf, top {args.stop_ranks} ranks excluded), k1={args.k1} b={args.b}, one thread, {os.cpu_count()} CPUs\n")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
