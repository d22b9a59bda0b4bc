"""Cross-encoder reranking: the naive tutorial loop against stagegraph's modes, same pairs, one run.

    nice -n 10 .venv/bin/python benchmarks/rerank.py --queries 30 --lengths 256,512 --layers 6,2

Candidates: the BM25 top-100 of the first `--queries` test queries of `--dataset` (SciFact when
`shared/datasets/scifact` is present, else synthetic ~200-token passages). For each model (the
packaged all-MiniLM-L6-v2 weights with a random one-logit [CLS] head, the ms-marco architecture, all
6 layers and cut to 2: the head is irrelevant to speed) and each max_length, every mode reranks the same 100 candidates per query:

* `naive`      - the tutorial loop: `CrossEncoder.predict(pairs)` (batch 32), then sort;
* `torch`      - `CrossEncoderReranker` fp32: one tokenizer call, pairs sorted by token length into
                 batches of 16, numpy padding, no score cache;
* `onnx`       - the same through ONNX Runtime fp32 (BERT fusions, no spinning threads);
* `onnx-int8`  - ONNX Runtime with dynamic int8 quantisation.

Per query it records wall-clock latency and process CPU time (all threads; on a shared machine the
wall-clock tail is mostly waiting for a core, CPU time is not). The modes take turns query by query,
in a rotating order, so a burst of load from other processes falls on all of them alike. Ratios are naive / mode, measured in
this run. "same order" is the share of queries whose full order of 100 equals the naive loop's.
"% peak" is the useful forward FLOPs (unpadded tokens, per layer 2*n*(4h^2 + 2hf) + 4*n^2*h) per
second of median wall time, over this machine's fp32 matmul peak measured at the start.
`dense` is pure dense retrieval (query encoding + FAISS Flat search, one query at a time) when its
index is already built under --work-dir (or --build-dense).

With `--quality-model DIR` (a model written by `stagegraph train-reranker`), the script also reranks
the `--quality-config` first stage of every test query of `--quality-dataset` with that model in
fp32 and int8 (the cross-encoder score alone, blend 1.0) and prints nDCG@10 of each and the change.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stagegraph.corpora.types import Corpus, Queries  # noqa: E402
from stagegraph.pipeline.ranking import Ranking  # noqa: E402
from stagegraph.pipeline.stage import Environment

MODES = ("naive", "torch", "onnx", "onnx-int8")


def matmul_peak_gflops(n: int = 1024, seconds: float = 3.0) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def forward_flops(lengths: np.ndarray, layers: int, hidden: int = 384, ffn: int = 1536) -> float:
    n = lengths.astype(np.float64)
    return float(layers * (2 * n * (4 * hidden**2 + 2 * hidden * ffn) + 4 * n**2 * hidden).sum())


def synthetic(n_docs: int = 2000, n_queries: int = 30, seed: int = 0) -> tuple[Corpus, Queries]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(vocab, size=int(rng.normal(160, 30)))) for _ in range(n_docs)]
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [""] * n_docs, texts)
    queries = Queries([f"q{i}" for i in range(n_queries)], [" ".join(rng.choice(vocab, 8)) for _ in range(n_queries)])
    return corpus, queries


def load_inputs(args) -> tuple[str, Corpus, Queries]:
    from stagegraph.corpora.registry import load_dataset
    from stagegraph.corpora.types import DataError

    try:
        ds = load_dataset(args.dataset, progress=False)
        queries, _ = ds.split("test")
        return ds.name, ds.corpus, queries.select(range(min(args.queries, len(queries))))
    except DataError:
        corpus, queries = synthetic(n_queries=args.queries)
        return "synthetic", corpus, queries


def candidates(corpus: Corpus, queries: Queries, work_dir: Path, depth: int = 100) -> list[Ranking]:
    from stagegraph.stages.retrieve import BM25Retriever

    bm25 = BM25Retriever(k=depth)
    bm25.warm_up(Environment(corpus, work_dir=work_dir, progress=False))
    return bm25.run(queries, [])


def speed_model(layers: int, cache: Path) -> Path:
    """all-MiniLM-L6-v2 weights, first `layers` layers, random (seeded) one-logit head: speed only."""
    target = cache / f"minilm-L{layers}-random-head"
    if (target / "config.json").is_file():
        return target
    import torch

    from stagegraph.training.finetune import TrainConfig, load_base, save_model

    torch.manual_seed(0)
    model, tokenizer = load_base(TrainConfig(layers=layers, head="cls"))  # the ms-marco architecture
    target.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), tokenizer, target)
    return target


def make_reranker(mode, model_dir, max_length, corpus, queries, pools, work_dir):
    """A function i -> (order of pool i, scores in pool order) for one mode."""
    from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

    texts = [[corpus.doc_text(int(r)) for r in p.doc_rows] for p in pools]
    if mode == "naive":
        from sentence_transformers import CrossEncoder

        import stagegraph.stages.rerank.pair_head  # noqa: F401 - lets CrossEncoder load stagegraph's cosine-head models

        model = CrossEncoder(str(model_dir), max_length=max_length, device="cpu")

        def rerank(i):
            scores = model.predict([(queries.texts[i], t) for t in texts[i]], batch_size=32, show_progress_bar=False)
            return pools[i].doc_rows[np.argsort(-scores, kind="stable")], scores

        return rerank
    stage = CrossEncoderReranker(str(model_dir), max_length=max_length, depth=100, k=100, backend=mode,
                                 score_cache="off", blend=1.0)
    stage.warm_up(Environment(corpus, work_dir=work_dir, progress=False))

    def rerank(i):
        out = stage.run(queries.select([i]), [[pools[i]]])[0]
        by_row = dict(zip(out.doc_rows.tolist(), out.provenance[stage.name].model_score.tolist()))
        return out.doc_rows, np.array([by_row[r] for r in pools[i].doc_rows.tolist()], dtype=np.float32)

    return rerank


def time_modes(modes, model_dir, max_length, corpus, queries, pools, work_dir, warmup=2):
    """Per mode: wall ns, CPU ns, orders, scores. Modes are interleaved query by query (in a rotating
    order), so load from other processes on a shared machine falls on every mode alike."""
    rerankers = {m: make_reranker(m, model_dir, max_length, corpus, queries, pools, work_dir) for m in modes}
    for fn in rerankers.values():
        for i in range(min(warmup, len(queries))):
            fn(i)
    out = {m: ([], [], [], []) for m in modes}
    for i in range(len(queries)):
        for m in modes[i % len(modes):] + modes[: i % len(modes)]:
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            order, values = rerankers[m](i)
            wall, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
            for bucket, value in zip(out[m], (wall, cpu, order, values)):
                bucket.append(value)
    return {m: (np.array(w), np.array(c), o, s) for m, (w, c, o, s) in out.items()}


def agreement(orders, scores, base_orders, base_scores) -> tuple[float, float]:
    """Share of queries with the naive loop's full order, and the largest score change relative to
    the query's naive score range (a random head's scores span ~1e-3, so fp32 noise reorders them)."""
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(orders, base_orders)]))
    rel = max(float(np.abs(s - b).max() / max(np.ptp(b), 1e-12)) for s, b in zip(scores, base_scores))
    return same, rel


def dense_latency(corpus, queries, work_dir, build: bool):
    from stagegraph.indexes.encoder import locate_model, model_identity
    from stagegraph.stages.retrieve.dense import DenseRetriever, artefact_key

    stage = DenseRetriever(k=100, index="Flat")
    identity = model_identity(locate_model(stage.config.model).path)
    key = artefact_key(corpus.fingerprint, identity, stage.config)
    if not build and not (Path(work_dir) / "dense" / key).is_dir():
        return None
    try:
        stage.warm_up(Environment(corpus, work_dir=work_dir, progress=build))
    except Exception as exc:  # noqa: BLE001 - the dense row is optional
        print(f"(dense row skipped: {exc})")
        return None
    for i in range(2):
        stage.run(queries.select([i]), [])
    wall, cpu = [], []
    for i in range(len(queries)):
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        stage.run(queries.select([i]), [])
        wall.append(time.perf_counter_ns() - t0)
        cpu.append(time.process_time_ns() - c0)
    return np.array(wall), np.array(cpu)


def pct(ns: np.ndarray, q: float) -> float:
    return float(np.percentile(ns, q)) / 1e6


def quality(args, work_dir: Path) -> None:
    from stagegraph.corpora.registry import load_dataset
    from stagegraph.pipeline.cache import StageCache
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.training.train import mining_graph
    from stagegraph.evaluation.scoring import score_run

    ds = load_dataset(args.quality_dataset, progress=False)
    queries, qrels = ds.split("test")
    env = Environment(ds.corpus, work_dir=work_dir, progress=False)
    miner, _ = mining_graph(Pipeline.from_yaml(args.quality_config))
    pools = miner.execute(queries, env=env, mode="batch", cache=StageCache(work_dir / "cache")).final
    pools = [p.top(args.quality_depth) for p in pools]
    modes = args.quality_modes.split(",")
    first = score_run(pools, queries, qrels, ds.corpus, ["ndcg@10"]).means["ndcg@10"]
    print(f"\nint8 quality: {args.quality_model} on {ds.name} test ({len(queries)} queries, "
          f"{miner.output} top {args.quality_depth}, cross-encoder score alone, max_length {args.quality_max_length})")
    print(f"  {miner.output:<10} nDCG@10 {first:.4f}")
    timed = time_modes(modes, args.quality_model, args.quality_max_length, ds.corpus, queries, pools,
                       work_dir, warmup=0)
    base, results = timed[modes[0]], {}
    for mode in modes:
        wall, _, orders, scores = timed[mode]
        same, rel = agreement(orders, scores, base[2], base[3])
        ranked = [Ranking(o[:10], np.arange(10, 0, -1, dtype=np.float32)[: len(o[:10])]) for o in orders]
        results[mode] = score_run(ranked, queries, qrels, ds.corpus, ["ndcg@10"]).means["ndcg@10"]
        print(f"  {mode:<10} nDCG@10 {results[mode]:.4f}   same order as {modes[0]} {same:4.0%}   max dS {rel:.1e}"
              f"   P50 {pct(wall, 50):6.0f} ms   x {modes[0]} {pct(base[0], 50) / pct(wall, 50):4.2f}")
    if "onnx-int8" in results and "torch" in results:
        print(f"  int8 - fp32 nDCG@10 change: {results['onnx-int8'] - results['torch']:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "scifact"))
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--lengths", default="256,512")
    parser.add_argument("--layers", default="6,2")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--work-dir", default=str(ROOT / ".stagegraph"))
    parser.add_argument("--build-dense", action="store_true", help="encode the corpus for the dense row if needed")
    parser.add_argument("--quality-model", help="a train-reranker model directory for the int8 quality check")
    parser.add_argument("--quality-dataset", default="sample")
    parser.add_argument("--quality-config", default=str(ROOT / "configs" / "hybrid-rerank.yaml"))
    parser.add_argument("--quality-max-length", type=int, default=256)
    parser.add_argument("--quality-depth", type=int, default=100, help="candidates reranked per query in the quality check")
    parser.add_argument("--quality-modes", default=",".join(MODES), help="modes of the quality check (the first is the base)")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    work_dir = Path(args.work_dir)
    import torch

    if args.quality_model and args.skip_speed:
        quality(args, work_dir)
        return
    name, corpus, queries = load_inputs(args)
    pools = candidates(corpus, queries, work_dir)
    peak = matmul_peak_gflops()
    print(f"{name}: {len(queries)} queries x {np.mean([len(p) for p in pools]):.0f} BM25 candidates (mean); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fp32 matmul peak {peak:.0f} GFLOP/s")
    from transformers import AutoTokenizer

    header = (f"{'model':<9}{'len':>5} {'mode':<10}{'P50 ms':>9}{'P95 ms':>9}{'P99 ms':>9}{'CPU ms':>9}"
              f"{'x P50':>7}{'x P95':>7}{'x CPU':>7}{'same order':>12}{'max dS':>9}{'% peak':>8}")
    print(header)
    print("-" * len(header))
    for layers in [int(x) for x in args.layers.split(",")]:
        model_dir = speed_model(layers, work_dir / "bench_models")
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        for max_length in [int(x) for x in args.lengths.split(",")]:
            lengths = [np.array([len(x) for x in tokenizer([q] * len(p), [corpus.doc_text(int(r)) for r in p.doc_rows],
                                                           truncation="longest_first", max_length=max_length)["input_ids"]])
                       for q, p in zip(queries.texts, pools)]
            flops = np.array([forward_flops(x, layers) for x in lengths])
            modes = args.modes.split(",")
            timed = time_modes(modes, model_dir, max_length, corpus, queries, pools, work_dir)
            base = timed[modes[0]]
            for mode in modes:
                wall, cpu, orders, scores = timed[mode]
                same, rel = agreement(orders, scores, base[2], base[3])
                frac = float(np.median(flops / (wall / 1e9))) / (peak * 1e9)
                print(f"L{layers:<8}{max_length:>5} {mode:<10}{pct(wall, 50):>9.0f}{pct(wall, 95):>9.0f}{pct(wall, 99):>9.0f}"
                      f"{np.median(cpu) / 1e6:>9.0f}{pct(base[0], 50) / pct(wall, 50):>7.2f}"
                      f"{pct(base[0], 95) / pct(wall, 95):>7.2f}{np.median(base[1]) / np.median(cpu):>7.2f}"
                      f"{same:>12.0%}{rel:>9.1e}{frac:>8.0%}", flush=True)
    dense = dense_latency(corpus, queries, work_dir, args.build_dense)
    if dense is not None:
        wall, cpu = dense
        print(f"{'dense':<9}{'':>5} {'Flat k100':<10}{pct(wall, 50):>9.1f}{pct(wall, 95):>9.1f}{pct(wall, 99):>9.1f}"
              f"{np.median(cpu) / 1e6:>9.1f}   (query encoding + FAISS search, one query at a time)")
    else:
        print("dense: no index under --work-dir for this corpus; rerun with --build-dense to encode it")
    if args.quality_model:
        quality(args, work_dir)


if __name__ == "__main__":
    main()
