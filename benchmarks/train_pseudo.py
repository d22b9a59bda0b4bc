"""A reranker trained on a collection's own documents, with no labels, measured on real test queries.

    nice -n 5 .venv/bin/python benchmarks/train_pseudo.py --dataset ../shared/datasets/scifact \\
        --work /tmp/pseudo --time-budget 900 --label run1 [--layers 0 --epochs 1 --negatives 3 ...]

1. The dataset's `corpus.jsonl` alone is ingested into a collection (`stagegraph ingest ... --config
   hybrid --chunker none --id-field _id`: one chunk per abstract, as BEIR scores them), once; its
   queries and qrels are not read until step 3.
2. `stagegraph train-reranker CONFIG --collection C --out W/model-LABEL` trains on pseudo-queries made
   from the collection (no qrels, no training queries) and checks itself on held-out pseudo-queries
   (exit 1, nothing installed, when pool + reranker does not beat the pool there). CONFIG is the
   bundled `hybrid` pool with a cross-encoder of depth `--depth` at `--max-length` tokens appended.
3. `stagegraph eval CONFIG --collection C --queries queries.jsonl --qrels qrels/test.tsv --reranker
   W/model-LABEL`: nDCG@10 of the pool and of pool + this reranker on the TEST queries (the first
   time anything judged is read), whatever step 2 decided, so a losing model's figures are shown too.

Prints the commands, each step's wall time, the load average before and after, the CPU model and
count, and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGEGRAPH = [sys.executable, "-m", "stagegraph.cli"] if not (Path(sys.executable).parent / "stagegraph").exists() \
    else [str(Path(sys.executable).parent / "stagegraph")]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(cmd: list[str]) -> tuple[int, float]:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    return rc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="a BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--work", required=True, help="where the collection, models and reports go (outside the repository)")
    ap.add_argument("--collection", help="the collection to ingest into / reuse (default WORK/collection.sg)")
    ap.add_argument("--label", default="run")
    ap.add_argument("--depth", type=int, default=30, help="the cross-encoder's depth (default 30)")
    ap.add_argument("--max-length", type=int, default=256, help="the cross-encoder's max_length at check and test time")
    ap.add_argument("--time-budget", type=float, default=900, help="seconds of training (train-reranker --time-budget)")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="more train-reranker arguments after --")
    args = ap.parse_args()
    dataset, work = Path(args.dataset).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    collection = Path(args.collection).resolve() if args.collection else work / "collection.sg"
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load average {load()} at the start", flush=True)
    env_cmd = STAGEGRAPH + ["--quiet"]
    seconds: dict[str, float] = {}
    if not (collection / "collection.json").is_file():
        rc, seconds["ingest"] = run(env_cmd + ["ingest", str(dataset / "corpus.jsonl"), "--collection", str(collection),
                                               "--config", "hybrid", "--chunker", "none", "--id-field", "_id"])
        if rc:
            return rc
    config = work / f"config-{args.label}.yaml"
    config.write_text(
        "# the bundled hybrid pool, then a cross-encoder (its model: --reranker)\n"
        "name: hybrid-pseudo\npipeline:\n  - parallel:\n      - {type: bm25, name: bm25, k: 100}\n"
        "      - {type: dense, name: dense, k: 100, model: sentence-transformers/all-MiniLM-L6-v2, index: Flat}\n"
        "  - {type: pool, name: pool, method: rrf, k: 100, rrf_k: 60, missing: zero}\n"
        f"  - {{type: cross_encoder, name: rerank, model: cross-encoder/ms-marco-MiniLM-L-6-v2, depth: {args.depth}, "
        f"k: 10, max_length: {args.max_length}, batch_size: 16}}\n", encoding="utf-8")
    model, result = work / f"model-{args.label}", work / f"train-{args.label}.json"
    extra = [a for a in args.train_args if a != "--"]
    train_rc, seconds["train-reranker"] = run(STAGEGRAPH + ["train-reranker", str(config), "--collection", str(collection),
                                                            "--out", str(model), "--time-budget", str(args.time_budget),
                                                            "--json", str(result), *extra])
    if train_rc not in (0, 1):
        return train_rc
    out = work / f"eval-{args.label}"
    rc, seconds["eval (test)"] = run(env_cmd + ["eval", str(config), "--collection", str(collection),
                                                "--queries", str(dataset / "queries.jsonl"), "--qrels",
                                                str(dataset / "qrels" / "test.tsv"), "--reranker", str(model),
                                                "--mode", "batch", "--out", str(out)])
    if rc:
        return rc
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    trained = json.loads(result.read_text())
    held = trained.get("held_out", {})
    pool, rerank = stages["pool"]["metrics"]["ndcg@10"], stages["rerank"]["metrics"]["ndcg@10"]
    print()
    print(f"== {args.label}: {dataset.name}, corpus only for training; test queries: {stages['pool']['queries']}")
    print(f"pseudo-queries: {held.get('pseudo_queries')}; fit {trained['fit_queries']}, held out {held.get('queries')}; "
          f"{trained['pairs']} pairs, {trained['pairs_per_s']} pairs/s, stopped by the budget: {trained['stopped_early']}")
    if held:
        print(f"held-out check (nDCG@10): pool {held['pool']['ndcg@10']:.4f}, reranker alone {held['reranker']['ndcg@10']:.4f}, "
              f"pool + reranker {held['pool_plus_reranker']['ndcg@10']:.4f} (blend {held['blend']}"
              + (f"; cross-fitted {held['pool_plus_reranker_crossfit']['ndcg@10']:.4f}"
                 if held.get("pool_plus_reranker_crossfit") else "") + ") -> "
              f"{'installed' if trained['installed'] else 'NOT installed'} (train-reranker exit {train_rc})")
    print(f"TEST nDCG@10: pool {pool:.4f}, pool + reranker {rerank:.4f} ({rerank - pool:+.4f}); "
          f"MRR@10 pool {stages['pool']['metrics'].get('mrr@10', float('nan')):.4f}, "
          f"pool + reranker {stages['rerank']['metrics'].get('mrr@10', float('nan')):.4f}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
          + f"; inside train-reranker: {trained['seconds']}")
    print(f"load average {load()} at the end; {os.cpu_count()} CPUs ({cpu_model()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
