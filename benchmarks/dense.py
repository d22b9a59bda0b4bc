"""Dense retrieval costs: encoding throughput, query-encoding latency, FAISS index types, end to end.

    nice -n 10 .venv/bin/python benchmarks/dense.py                 # everything (1M takes a while)
    nice -n 10 .venv/bin/python benchmarks/dense.py --sizes 100k --skip-encode

Sections (each prints a table):

1. **Encoding throughput** of all-MiniLM-L6-v2 (torch, CPU, --torch-threads) at batch 32 and 64 on the same
   documents (SciFact's first --encode-docs documents when ../shared/datasets/scifact exists, else
   synthetic ~150-word texts), max_seq_length 256; docs/s (wall), docs per CPU-second, and the
   ratio to batch 32.
2. **One-query encoding latency**, torch on 1 and on 2 threads (P50/P95/P99 over --queries).
3. **FAISS index types** on N x 384 random unit vectors (N from --sizes): build time (on
   --build-threads FAISS threads, default 1), index size
   (the serialised index), single-query top-100 latency P50/P95/P99 on one FAISS thread, and
   recall@100 against Flat on the same queries. Search parameters are the stage defaults
   (indexes.dense: efSearch, nprobe). Flat at 1M costs ~150 ms a query, so Flat timings at sizes
   above 200k use --flat-queries queries (the table's `n` column says how many); Flat's exact top-100
   for the recall column is computed in one batch over all queries.
   Random vectors have no cluster structure, the worst case for IVF and HNSW recall; recall on real
   embeddings (SciFact) is checked by tests/test_dense_retriever.py.
4. **FAISS threads**: one query and a batch of 64 at 1 vs 2 OpenMP threads, Flat and HNSW32 at the
   first size: what the stage's `query_threads` / `search_threads` defaults rest on.
5. **End to end** at the first size: encode one query (MiniLM, 1 torch thread) + search top-100,
   Flat and HNSW32: pure dense retrieval latency, which the reranking benchmark compares against.

6. **Quantized dense** (`--quantized`, or only it with `--quantized-only`; docs/quantized-dense.md):
   on SciFact (--scifact, its test queries, MiniLM embeddings from the stage's embedding cache
   under --work-dir) nDCG@10, R@100, bytes per vector held in RAM, and single-query search
   P50/P99 (1 FAISS thread, query vectors encoded beforehand) for float Flat, int8, int8 + rescore
   x4, binary, binary + rescore x4 (float32 and int8 rescoring vectors) and truncated 256/128 dims; then at --quantized-size random
   unit vectors (default 1M x 384) the same latencies and their speed ratio to Flat in the same run.
   Rescoring reads the float vectors from the index' memory-mapped `vectors.npy`.

Latency columns are wall clock; `cpu p50` is the thread CPU time of the same calls (single-thread
calls only), which leaves out time spent waiting for a core on a shared machine. Figures are
comparable only within one run; ratios compare with the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from stagegraph.indexes.dense import DenseIndex  # noqa: E402
from stagegraph.indexes.encoder import Encoder, l2_normalise  # noqa: E402
from stagegraph.thread_counts import limited  # noqa: E402

DIM = 384
K = 100
WARMUP = 5
QUERY_TEXTS = [
    "what causes heart attacks",
    "does vitamin d reduce the risk of fractures in older adults",
    "boundary layer transition at supersonic speeds",
    "role of microRNA in tumour suppression",
    "effect of exercise on insulin sensitivity",
    "how is the pressure distribution on a swept wing measured",
    "antibiotic resistance in hospital acquired infections",
    "gene expression changes in alzheimer disease",
]


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def percentiles(values_ns: list[int]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(values_ns) / 1e6, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def time_calls(fn: Callable[[int], object], n: int, warmup: int = WARMUP) -> tuple[list[int], list[int]]:
    """Wall and thread-CPU nanoseconds of `fn(i)` for i in range(n), after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        fn(i)
        cpu.append(time.thread_time_ns() - c0)
        wall.append(time.perf_counter_ns() - w0)
    return wall, cpu


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


# ------------------------------------------------------------------ 1-2: encoding


def documents(n: int) -> tuple[list[str], str]:
    folder = Path(os.environ.get("STAGEGRAPH_DATASETS", ROOT.parent / "shared" / "datasets")) / "scifact"
    if (folder / "corpus.jsonl").is_file():
        import json

        texts = []
        with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
                if len(texts) == n:
                    break
        return texts, f"SciFact's first {len(texts)} documents"
    rng = np.random.default_rng(0)
    words = " ".join(QUERY_TEXTS).split()
    return [" ".join(rng.choice(words, 150)) for _ in range(n)], f"{n} synthetic 150-word texts"


def bench_encoding(model: Encoder, n_docs: int, n_queries: int, threads: int) -> None:
    texts, what = documents(n_docs)
    rows, base = [], None
    for batch in (32, 64):
        model.encode(texts[:batch], batch_size=batch, progress=False, threads=threads)  # warm-up
        start, cpu0 = time.perf_counter(), time.process_time()
        model.encode(texts, batch_size=batch, progress=False, threads=threads)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        rate = len(texts) / wall
        base = base or rate
        rows.append([batch, len(texts), rate, len(texts) / cpu, f"{rate / base:.2f}x"])
    table(
        f"Encoding throughput: all-MiniLM-L6-v2, max_seq_length 256, {what}, {threads} torch thread(s)",
        ["batch", "docs", "docs/s", "docs per cpu-s", "vs batch 32"],
        rows,
    )

    rows = []
    for threads in (1, 2):
        with limited(threads):
            wall, cpu = time_calls(lambda i: model.encode_query(QUERY_TEXTS[i % len(QUERY_TEXTS)]), n_queries)
        rows.append([threads, n_queries, *percentiles(wall), percentiles(cpu)[0] if threads == 1 else "-"])
    table("One-query encoding latency (ms)", ["torch threads", "n", "p50", "p95", "p99", "cpu p50"], rows)


# ------------------------------------------------------------------ 3-5: FAISS


def random_unit(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 100_000):
        out[lo : lo + 100_000] = l2_normalise(rng.standard_normal((min(100_000, n - lo), DIM), dtype=np.float32))
    return out


def index_bytes(index: DenseIndex) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as tmp:
        faiss.write_index(index.index, tmp.name)
        return os.path.getsize(tmp.name)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def bench_faiss(
    size: int, factories: list[str], n_queries: int, flat_queries: int, build_threads: int, keep: set[str]
) -> dict[str, DenseIndex]:
    """One table row per factory; returns the indexes named in `keep` (the others are freed)."""
    data = random_unit(size, seed=size)
    queries = random_unit(n_queries + WARMUP, seed=size + 1)
    built: dict[str, DenseIndex] = {}
    rows, truth = [], None
    for factory in factories:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = DenseIndex.build(data, factory, corpus_fingerprint="bench", threads=build_threads, progress=False)
        build_s = time.perf_counter() - start
        n = flat_queries if factory == "Flat" and size > 200_000 else n_queries
        with limited(1):
            wall, cpu = time_calls(lambda i: index.search(queries[i : i + 1], K), n)
        found = index.search(queries[WARMUP:], K)[1]
        if factory == "Flat":
            truth = found
        recall = recall_at_k(found, truth) if truth is not None else float("nan")
        params = ", ".join(f"{k}={v}" for k, v in index.search_params(k=K).items()) or "-"
        rows.append([index.factory, params, build_s, index_bytes(index) / 2**20, n, *percentiles(wall), percentiles(cpu)[0], recall])
        if factory in keep:
            built[factory] = index
        del index
    table(
        f"FAISS at {size:,} x {DIM} random unit vectors, top-{K}, one query per call, 1 FAISS thread (ms)",
        ["index", "params", "build s", "size MiB", "n", "p50", "p95", "p99", "cpu p50", "recall@100 vs Flat"],
        rows,
    )
    return built


def bench_threads(built: dict[str, DenseIndex], size: int, n_queries: int) -> None:
    queries = random_unit(max(n_queries, 64) + WARMUP, seed=7)
    rows = []
    for factory in ("Flat", "HNSW32"):
        index = built.get(factory)
        if index is None:
            continue
        single = {}
        for threads in (1, 2):
            with limited(threads):
                wall, _ = time_calls(lambda i: index.search(queries[i : i + 1], K), n_queries)
                start = time.perf_counter()
                for _ in range(3):
                    index.search(queries[:64], K)
                batch_qps = 3 * 64 / (time.perf_counter() - start)
            single[threads] = percentiles(wall)
            rows.append([factory, threads, *single[threads], batch_qps, f"{single[threads][0] / single[1][0]:.2f}x"])
    table(
        f"FAISS OpenMP threads at {size:,} vectors: one query (ms) and a batch of 64 (queries/s)",
        ["index", "threads", "p50", "p95", "p99", "batch-64 q/s", "p50 vs 1 thread"],
        rows,
    )


def bench_end_to_end(model: Encoder, built: dict[str, DenseIndex], size: int, n_queries: int) -> None:
    rows = []
    for factory in ("Flat", "HNSW32"):
        index = built.get(factory)
        if index is None:
            continue

        def one(i: int) -> None:
            vector = model.encode_query(QUERY_TEXTS[i % len(QUERY_TEXTS)], threads=1)
            index.search(vector, K, threads=1)

        wall, cpu = time_calls(one, n_queries)
        rows.append([factory, n_queries, *percentiles(wall), percentiles(cpu)[0]])
    table(
        f"End to end, encode one query + top-{K} search at {size:,} documents, 1 thread (ms)",
        ["index", "n", "p50", "p95", "p99", "cpu p50"],
        rows,
    )


# ------------------------------------------------------------------ 6: quantized

QUANTIZED = [  # (label, build settings, rescore_multiplier)
    ("float Flat", {}, None),
    ("int8 (SQ8)", {"quantize": "int8"}, None),
    ("int8 + rescore x4", {"quantize": "int8"}, 4),
    ("binary", {"quantize": "binary"}, None),
    ("binary + rescore x4", {"quantize": "binary"}, 4),
    ("binary + int8 rescore x4", {"quantize": "binary", "rescore_dtype": "int8"}, 4),
    ("truncate 256", {"truncate_dim": 256}, None),
    ("truncate 128", {"truncate_dim": 128}, None),
]


def _built(data: np.ndarray, settings: dict[str, object], cache: dict[str, DenseIndex], root: Path) -> DenseIndex:
    """The index for `settings`, saved under `root` and loaded back (rescoring vectors memory-mapped)."""
    key = repr(sorted(settings.items()))
    if key not in cache:
        index = DenseIndex.build(data, "Flat", corpus_fingerprint="bench", progress=False, threads=1, **settings)
        folder = root / f"i{len(cache)}"
        index.save(folder)
        del index
        cache[key] = DenseIndex.load(folder, verify_checksums=False)
    return cache[key]


def _latency(index: DenseIndex, queries: np.ndarray, n: int, multiplier: int | None) -> tuple[float, float]:
    with limited(1):
        wall, _ = time_calls(lambda i: index.search(queries[i % len(queries)][None, :], K, rescore_multiplier=multiplier), n)
    p50, _, p99 = percentiles(wall)
    return p50, p99


def bench_quantized(model: Encoder | None, scifact: Path, work_dir: Path, size: int, n_queries: int, flat_queries: int) -> None:
    from stagegraph.corpora.registry import load_dataset
    from stagegraph.evaluation.scoring import score_run
    from stagegraph.indexes.embeddings import cached_embeddings
    from stagegraph.pipeline.ranking import Ranking

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        if (scifact / "corpus.jsonl").is_file():
            model = model or Encoder("sentence-transformers/all-MiniLM-L6-v2", max_seq_length=256, progress=False)
            dataset = load_dataset(scifact, progress=False)
            queries, qrels = dataset.split("test")
            start = time.perf_counter()
            docs, _, hit = cached_embeddings(model, dataset.corpus, work_dir / "embeddings", progress=False)
            encode_s = time.perf_counter() - start
            qvec = np.vstack([model.encode_query(t, threads=1) for t in queries.texts])
            cache: dict[str, DenseIndex] = {}
            rows, base = [], None
            for label, settings, mult in QUANTIZED:
                index = _built(docs, settings, cache, root)
                found = [index.search(q[None, :], K, rescore_multiplier=mult) for q in qvec]
                run = [Ranking.from_scores(r[0][r[0] >= 0], s[0][r[0] >= 0], k=K) for s, r in found]
                means = score_run(run, queries, qrels, dataset.corpus, ["ndcg@10", "recall@100"]).means
                base = base or means["ndcg@10"]
                p50, p99 = _latency(index, qvec, n_queries, mult)
                ram = index.bytes_per_vector
                disk = 0 if index.rescore_vectors is None else index.rescore_vectors.shape[1] * index.rescore_vectors.itemsize
                rows.append([label, index.dim, f"{means['ndcg@10']:.4f}", f"{means['ndcg@10'] / base:.1%}",
                             f"{means['recall@100']:.4f}", ram, f"1/{docs.shape[1] * 4 / ram:.3g}", disk, p50, p99])
            table(
                f"Quantized dense on SciFact ({len(dataset.corpus)} docs, {len(queries)} test queries, MiniLM; "
                f"embeddings {'from cache' if hit else f'encoded in {encode_s:.0f} s'}), top-{K}, 1 FAISS thread (ms)",
                ["index", "dim", "nDCG@10", "vs float", "R@100", "RAM B/vec", "vs float", "disk B/vec (rescore)", "p50", "p99"],
                rows,
            )
            cache.clear()
        else:
            print(f"\n(no SciFact at {scifact}: the quality table is skipped)")
        data = random_unit(size, seed=size)
        qs = random_unit(max(n_queries, flat_queries) + WARMUP, seed=size + 1)
        cache = {}
        rows, flat_p50 = [], None
        for label, settings, mult in QUANTIZED:
            index = _built(data, settings, cache, root)
            n = flat_queries if not settings and size > 200_000 else n_queries
            p50, p99 = _latency(index, qs, n, mult)
            flat_p50 = flat_p50 or p50
            rows.append([label, n, index.bytes_per_vector, p50, p99, f"{flat_p50 / p50:.1f}x"])
            print(f"  {label}: p50 {p50:.2f} ms (load avg {os.getloadavg()[0]:.1f})", flush=True)
        del data
        table(
            f"Quantized dense at {size:,} x {DIM} random unit vectors, top-{K}, one query per call, 1 FAISS thread (ms)",
            ["index", "n", "RAM B/vec", "p50", "p99", "speed vs Flat (p50)"],
            rows,
        )
        cache.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100k,1m", help="comma-separated corpus sizes for the FAISS tables")
    parser.add_argument("--factories", default="Flat;HNSW32;IVF1024,Flat;IVF1024,PQ32",
                        help="';'-separated FAISS factory strings (Flat first: it is the recall baseline)")
    parser.add_argument("--queries", type=int, default=200, help="timed single queries per index")
    parser.add_argument("--flat-queries", type=int, default=30, help="timed Flat queries above 200k vectors")
    parser.add_argument("--encode-docs", type=int, default=256, help="documents for the throughput table")
    parser.add_argument("--build-threads", type=int, default=1,
                        help="FAISS threads while building (1: steady on a shared machine, where idle OpenMP threads spin)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads for the throughput table")
    parser.add_argument("--skip-encode", action="store_true", help="no model: FAISS tables only")
    parser.add_argument("--quantized", action="store_true", help="also the quantized-dense tables (section 6)")
    parser.add_argument("--quantized-only", action="store_true", help="only the quantized-dense tables (section 6)")
    parser.add_argument("--quantized-size", default="1m", help="random vectors for the quantized speed table")
    parser.add_argument("--scifact", default=str(ROOT.parent / "shared" / "datasets" / "scifact"),
                        help="BEIR SciFact folder for the quantized quality table")
    parser.add_argument("--work-dir", default=os.environ.get("STAGEGRAPH_HOME") or str(ROOT / ".stagegraph"),
                        help="where the embedding cache is (and the temporary indexes go)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    print(f"# benchmarks/dense.py  (cpus: {os.cpu_count()}, faiss {faiss.__version__}, load avg {os.getloadavg()[0]:.1f})")
    if args.quantized_only:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        bench_quantized(None, Path(args.scifact), work, parse_size(args.quantized_size), args.queries, args.flat_queries)
        print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return 0
    model = None
    if not args.skip_encode:
        model = Encoder("sentence-transformers/all-MiniLM-L6-v2", max_seq_length=256, progress=False)
        bench_encoding(model, args.encode_docs, min(args.queries, 100), args.torch_threads)
    for i, size in enumerate(parse_size(s) for s in args.sizes.split(",")):
        keep = {"Flat", "HNSW32"} if i == 0 else set()
        built = bench_faiss(size, factories, args.queries, args.flat_queries, args.build_threads, keep)
        if i == 0:
            bench_threads(built, size, min(args.queries, 100))
            if model is not None:
                bench_end_to_end(model, built, size, min(args.queries, 100))
        built.clear()
    if args.quantized:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        bench_quantized(model, Path(args.scifact), work, parse_size(args.quantized_size), args.queries, args.flat_queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
