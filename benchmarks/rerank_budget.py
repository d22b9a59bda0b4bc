"""Reranking under a latency budget: the issue-17 targets on one dataset, measured in one run.

    nice -n 10 .venv/bin/python benchmarks/rerank_budget.py --dataset sample \
        --small .stagegraph/t17/models/sample-L2 --large .stagegraph/t17/models/sample-L6 --budget-ms 200 --out out/budget-sample

Three measurements, each with `stagegraph.evaluation.tune_rerank` (online, one query at a time, every
pair scored once per scorer and every block of `--block` pairs timed, the scorers taking turns query
by query):

1. **tune on held-out training queries** (`--tune-split train`, the queries `train-reranker` held
   out of both models' training): the configuration recommended for `--budget-ms`;
2. **the frontier on test**: every configuration on the test queries, among them the naive setting
   (the large model, torch fp32, depth 100); the target is a frontier point within 0.005 nDCG@10 of
   it at <= 25% of its mean rerank time, both measured in this run;
3. **the blind case**: step 1's recommendation, written as a YAML pipeline, run once on the test
   queries as a real pipeline (`evaluate`, online), nothing chosen on test.

It prints markdown tables (the figures, the command, the machine and the load beside the run) and
writes both tuning reports under `--out` (`tune/`, `test/`), `blind/report.json` and `summary.json`.
Not a timed test: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stagegraph.corpora.registry import load_dataset  # noqa: E402
from stagegraph.evaluation.evaluate import evaluate  # noqa: E402
from stagegraph.evaluation.tune_rerank import tune_rerank  # noqa: E402
from stagegraph.evaluation.tune_result import TuneResult, TuneSettings  # noqa: E402
from stagegraph.pipeline.compose import Pipeline  # noqa: E402
from stagegraph.pipeline.stage import Environment  # noqa: E402
from stagegraph.stages.rerank.model import read_stagegraph_metadata  # noqa: E402


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def point_cells(r: TuneResult, label: str | None, naive_mean: float | None) -> list[str]:
    p = r.point(label)
    if p is None:
        return [label or "-", "", "", "", ""]
    share = f"{p.mean_ms / naive_mean:.0%}" if naive_mean else ""
    return [p.label, f"{p.ndcg:.4f}", f"{p.mean_ms:,.0f}", f"{p.p95_ms:,.0f}", share]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--small", required=True, help="the small (fast) reranker, e.g. a 2-layer train-reranker model")
    parser.add_argument("--large", required=True, help="the large reranker, e.g. a 6-layer one: the naive setting's model")
    parser.add_argument("--config", default=str(ROOT / "configs" / "hybrid-rerank.yaml"), help="pipeline: its pool feeds the rerankers")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--budget-ms", type=float, default=200.0)
    parser.add_argument("--tune-split", default="train")
    parser.add_argument("--no-heldout", action="store_true", help="tune on every query of --tune-split, not only the held-out ones")
    parser.add_argument("--tune-queries", type=int, help="at most this many tuning queries")
    parser.add_argument("--test-queries", type=int, help="at most this many test queries")
    parser.add_argument("--backends", help="comma-separated (default: all this CPU supports)")
    parser.add_argument("--all-backends", action="store_true", help="carry every backend to the end (no pruning)")
    parser.add_argument("--calibration-queries", type=int, default=20)
    parser.add_argument("--time-limit", type=float, help="per tuning run, seconds (a rerun resumes)")
    parser.add_argument("--work-dir", default=str(ROOT / ".stagegraph"))
    parser.add_argument("--out", default=str(ROOT / "out" / "rerank-budget"))
    parser.add_argument("--svg", help="also copy the test frontier picture here (e.g. docs/rerank-frontier.svg)")
    parser.add_argument("--skip-blind", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    loads = [load_average()]

    overrides = {"cross_encoder": {"model": args.large, "max_length": args.max_length, "depth": 100, "k": 10}}
    graph = Pipeline.from_yaml(args.config, overrides=overrides)
    ds = load_dataset(args.dataset, progress=False)
    env = Environment(ds.corpus, work_dir=Path(args.work_dir), progress=True)
    out = Path(args.out)
    common = dict(
        budget_ms=args.budget_ms, models=(args.small,), calibration_queries=args.calibration_queries,
        backends=tuple(b for b in (args.backends or "").split(",") if b) or None, prune=not args.all_backends,
        time_limit_s=args.time_limit,
    )

    tuned = None
    if not args.skip_blind:
        ids = None
        if not args.no_heldout:
            held = [read_stagegraph_metadata(m).get("dev_query_ids") or [] for m in (args.small, args.large)]
            ids = [q for q in held[0] if q in set(held[1])] or None
        tuned = tune_rerank(graph, ds, split=args.tune_split, env=env, query_ids=ids, out=out / "tune",
                            settings=TuneSettings(**common, max_queries=args.tune_queries))
        loads.append(load_average())
    test = tune_rerank(graph, ds, split="test", env=env, out=out / "test",
                       settings=TuneSettings(**common, max_queries=args.test_queries))
    loads.append(load_average())
    if args.svg:
        Path(args.svg).write_text((out / "test" / "frontier.svg").read_text(encoding="utf-8"), encoding="utf-8")

    blind = None
    if tuned is not None and tuned.recommended_yaml:
        pipe = Pipeline.from_yaml(tuned.recommended_yaml)
        test_queries = ds.split("test")[0]
        if args.test_queries:
            from stagegraph.corpora.types import Dataset, Qrels

            qids = test_queries.ids[: args.test_queries]
            qrels = ds.split("test")[1]
            ds_test = Dataset(ds.name, ds.corpus, test_queries.restrict_to(qids), {"test": Qrels({q: qrels.for_query(q) for q in qids})})
        else:
            ds_test = ds
        from stagegraph.pipeline.cache import StageCache
        from stagegraph.evaluation.sweep import UpstreamOnlyCache

        rerankers = [s.name for s in pipe.steps if s.stage.type_name == "cross_encoder"]
        cache = StageCache(Path(args.work_dir) / "cache")
        if rerankers:
            cache = UpstreamOnlyCache.for_graph(cache, pipe, rerankers[0], ds_test.split("test")[0], env)
        report = evaluate(pipe, ds_test, split="test", metrics=["ndcg@10"], mode="online", env=env, cache=cache, warmup=3)
        from stagegraph.evaluation.writer import save_report

        save_report(report, out / "blind")
        import numpy as np

        per_query = np.sum([np.asarray(report.per_query.latency_ms[n], dtype=np.float64) for n in rerankers], axis=0) \
            if rerankers else np.zeros(1)
        blind = {
            "label": tuned.recommended, "ndcg": round(report.stages[pipe.output].metrics["ndcg@10"], 4),
            "mean_ms": round(float(per_query.mean()), 1), "p95_ms": round(float(np.percentile(per_query, 95)), 1),
            "queries": len(ds_test.split("test")[0]),
        }
        loads.append(load_average())

    naive = test.point(test.naive)
    naive_mean = naive.mean_ms if naive else None
    print(f"\n`{command}`  \nmachine: {test.machine}; {test.cpu}; load average (1/5/15 min) at start and after each run: "
          f"{'; '.join(loads)}; {time.perf_counter() - started:.0f} s in all\n")
    print(f"**{ds.name} test, {test.queries} queries, online, rerank time per query** (pool alone: nDCG@10 {test.pool_ndcg:.4f})\n")
    print(row(["", "configuration", "nDCG@10", "mean ms", "P95 ms", "mean vs naive"]))
    print(row(["---"] * 6))
    print(row(["naive", *point_cells(test, test.naive, naive_mean)]))
    if naive is not None:
        target = test.near_naive()
        front = [p for p in test.points if p.pareto and p.ndcg >= naive.ndcg - 0.005 and p.mean_ms <= 0.25 * naive.mean_ms]
        print(row(["target: cheapest within 0.005 at <= 25%", *point_cells(test, target.label if target else "none", naive_mean)]))
        if front and (target is None or front[0].label != target.label):
            print(row(["  (on the Pareto front)", *point_cells(test, front[0].label, naive_mean)]))
    print(row(["90% of the maximum gain", *point_cells(test, test.ninety, naive_mean)]))
    print(row([f"best for P95 <= {args.budget_ms:g} ms (chosen on test)", *point_cells(test, test.recommended, naive_mean)]))
    if tuned is not None:
        print(row([f"recommended on {tuned.split} ({tuned.queries} held-out queries)", *point_cells(test, tuned.recommended, naive_mean)]))
    if blind is not None:
        share = f"{blind['mean_ms'] / naive_mean:.0%}" if naive_mean else ""
        print(row(["blind: that pipeline run once on test", blind["label"] or "", f"{blind['ndcg']:.4f}", f"{blind['mean_ms']:,.0f}",
                   f"{blind['p95_ms']:,.0f}", share]))
    print()
    print("**backends** (calibration queries of the test run, depth 100):\n")
    print(row(["model", "backend", "ms/query", "nDCG@10", "vs fp32", "kept", "why"]))
    print(row(["---"] * 7))
    for b in test.backends:
        print(row([b.model, b.backend, "" if b.ms_per_query is None else f"{b.ms_per_query:,.0f}",
                   "" if b.ndcg is None else f"{b.ndcg:.4f}", "" if b.delta is None else f"{b.delta:+.4f}",
                   "yes" if b.kept else "", b.reason]))
    print("\n**per-query depth vs fixed depth at the same mean cost** (test):\n")
    print(row(["scorer", "margin", "nDCG@10", "mean ms", "fixed, same mean cost", "gain"]))
    print(row(["---"] * 6))
    for v in sorted(test.depth_verdicts, key=lambda v: (v.scorer, v.margin)):
        print(row([v.scorer, f"{v.margin:g}{' (calibrated)' if v.calibrated else ''}", f"{v.adaptive_ndcg:.4f}",
                   f"{v.adaptive_mean_ms:,.0f}", f"{v.fixed_ndcg_same_cost:.4f}", f"{v.gain:+.4f}"]))
    for line in test.lines:
        print("* " + line)
    summary = {"command": command, "loads": loads, "test": test.model_dump(mode="json", exclude={"points"}),
               "tuned": None if tuned is None else tuned.model_dump(mode="json", exclude={"points"}), "blind": blind}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
