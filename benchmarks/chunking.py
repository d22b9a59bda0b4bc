"""Does chunking help here? Hybrid-pool quality of a BEIR collection, unchunked against chunked.

    nice -n 10 .venv/bin/python benchmarks/chunking.py --dataset ../shared/datasets/scifact \\
        [--dataset ../shared/datasets/med] [--sizes 64,128] [--work DIR]

For each dataset its `corpus.jsonl` is ingested as JSONL into one collection per chunking (`none`:
one chunk per document; `recursive` at each size in tokens of the dense model, overlap 15%), with
the bundled `hybrid` pipeline (BM25 top-100 | all-MiniLM-L6-v2 Flat top-100 -> RRF pool of 100), and
evaluated on its test qrels, which name documents: every stage's chunk ranking is scored as a
document ranking by maxP (`stagegraph eval CONFIG --collection DIR --queries Q --qrels QRELS`, the
command this script runs for each). The table gives the pool's nDCG@10 and recall@100 and how many
chunks each document became. Quality only: timings here are not the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tables import print_markdown  # benchmarks/tables.py (scripts run with benchmarks/ on sys.path)


def run(args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", "import sys; from stagegraph.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"stagegraph {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", required=True, help="a BEIR folder (repeatable)")
    parser.add_argument("--sizes", default="64,128", help="chunk sizes in tokens (default 64,128)")
    parser.add_argument("--work", help="keep the collections here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sg-chunking-"))
    rows = []
    try:
        for folder in map(Path, args.dataset):
            variants = [("unchunked", ["--chunker", "none"])] + [
                (f"{size} tokens", ["--chunker", "recursive", "--max-tokens", size, "--overlap", str(int(int(size) * 0.15))])
                for size in args.sizes.split(",")
            ]
            for label, options in variants:
                coll = work / f"{folder.name}-{label.replace(' ', '')}"
                if not (coll / "CURRENT").is_file():
                    run(["--quiet", "ingest", str(folder / "corpus.jsonl"), "--collection", str(coll), "--config", "hybrid", *options])
                out = coll.with_suffix(".report")
                run(["--quiet", "eval", "hybrid", "--collection", str(coll), "--queries", str(folder / "queries.jsonl"),
                     "--qrels", str(folder / "qrels" / "test.tsv"), "--mode", "batch", "--out", str(out)])
                report = json.loads((out / "report.json").read_text())
                pool = report["stages"]["pool"]
                info = json.loads((coll / "generations" / open(coll / "CURRENT").read().strip().zfill(8) / "manifest.json").read_text())
                rows.append([folder.name, label, f"{info['chunks']:,}", f"{info['chunks'] / info['documents']:.2f}",
                             f"{pool['metrics']['ndcg@10']:.4f}", f"{pool['metrics']['recall@100']:.4f}",
                             f"{report['stages']['bm25']['metrics']['ndcg@10']:.4f}", f"{report['stages']['dense']['metrics']['ndcg@10']:.4f}"])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    head = ["dataset", "chunking", "chunks", "chunks/doc", "pool nDCG@10", "pool R@100", "bm25 nDCG@10", "dense nDCG@10"]
    print_markdown(head, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
