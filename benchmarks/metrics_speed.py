"""How fast `score_run` scores a run, against pytrec_eval on the same run (same values checked).

    python benchmarks/metrics_speed.py [--queries 1000] [--depth 1000] [--docs 50000]

Prints, for the default metrics (recall@10, recall@100, ndcg@10, mrr@10, map), the time of
`score_run` (Rankings in, per-query arrays out) and of pytrec_eval (its dict input built from the
same rankings, timed separately from its evaluation), with the ratio to pytrec_eval's evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stagegraph.corpora.types import Corpus, Qrels  # noqa: E402
from stagegraph.pipeline.ranking import Ranking  # noqa: E402
from stagegraph.evaluation.measures import DEFAULT_METRICS  # noqa: E402
from stagegraph.evaluation.scoring import score_run


def make_case(n_queries: int, depth: int, n_docs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [""] * n_docs, [""] * n_docs)
    judgments, run = {}, {}
    for q in range(n_queries):
        judged = rng.choice(n_docs, size=30, replace=False)
        judgments[f"q{q}"] = {f"d{r}": int(g) for r, g in zip(judged, rng.integers(0, 3, size=30))}
        rows = np.concatenate([judged[:10], rng.choice(n_docs, size=depth, replace=False)])
        rows = np.unique(rows)[:depth]
        run[f"q{q}"] = Ranking.from_scores(rows, rng.random(len(rows)).astype(np.float32))
    return corpus, Qrels(judgments), run


def best_of(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=50_000)
    args = parser.parse_args(argv)
    corpus, qrels, run = make_case(args.queries, args.depth, args.docs)
    ours, scores = best_of(lambda: score_run(run, None, qrels, corpus, DEFAULT_METRICS))
    rows = [("stagegraph score_run", ours)]
    try:
        import pytrec_eval
    except ImportError:
        print("pytrec_eval not installed: only our time is shown")
    else:
        def as_dict():
            return {q: {corpus.ids[r]: float(len(x) - i) for i, r in enumerate(x.doc_rows)} for q, x in run.items()}

        build, trec_run = best_of(as_dict)
        measures = {"recall_10", "recall_100", "ndcg_cut_10", "recip_rank", "map"}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels.judgments, measures)
        theirs, result = best_of(lambda: evaluator.evaluate(trec_run))
        rows += [("pytrec_eval: build dict input", build), ("pytrec_eval: evaluate", theirs)]
        want = np.array([result[q]["ndcg_cut_10"] for q in scores.qids])
        assert np.allclose(scores.per_query["ndcg@10"], want, atol=1e-9), "values differ from pytrec_eval"
    base = rows[-1][1]
    print(f"{args.queries} queries x {args.depth} ranked docs, {len(DEFAULT_METRICS)} metrics (best of 3)")
    print(f"{'':32}{'seconds':>10}{'vs pytrec_eval evaluate':>26}")
    for name, seconds in rows:
        print(f"{name:32}{seconds:10.3f}{seconds / base:25.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
