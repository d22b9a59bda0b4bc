"""`stagegraph demo`: the whole mission on the bundled sample dataset, every stage for real.

1. Load the bundled `sample` dataset (no network).
2. Get a cross-encoder. No pretrained cross-encoder can be downloaded on an offline machine, so on
   first use the demo fine-tunes a small one (the packaged all-MiniLM-L6-v2 weights, first layers)
   on the sample's *train* split with `train_reranker`, caches it under the work directory and says
   so. `reranker=` uses any other model (an HF id where the hub is reachable, or a local path).
3. Run the default graph (configs/hybrid-rerank.yaml: BM25 top-100 | dense top-100 -> RRF pool of
   100 -> cross-encoder rerank of the pool's top 30) on the *test* split in online mode. Indexes and embeddings are cached
   between runs; stage outputs are not, so every run measures every stage's latency afresh.
4. Print the report (recall funnel, nDCG@10/MRR@10, P50/P95/P99 per stage), write the HTML report,
   and say plainly whether the reranker improved on the pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from stagegraph.configs import CONFIGS_DIR
from stagegraph.corpora.registry import load_dataset
from stagegraph.pipeline.compose import Pipeline
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.report import Report
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.writer import save_report

DEMO_CONFIG = CONFIGS_DIR / "hybrid-rerank.yaml"
#: The demo reranks the pool's top 30 (not 100) so that a second run stays under a minute on 2 cores;
#: `benchmarks/rerank.py` answers the 100-candidate latency question. Training gets ~2.5 minutes.
DEMO_RERANK = {"depth": 30, "k": 10, "max_length": 256}
TRAIN_BUDGET_S = 150


class DemoResult(BaseModel):
    report: Report
    reranker: str
    trained: bool
    out: str
    seconds: float
    verdict: str

    @property
    def rerank_gain(self) -> float:
        stages = self.report.stages
        return stages["rerank"].metrics["ndcg@10"] - stages["pool"].metrics["ndcg@10"]


def demo_reranker(work_dir: Path, progress: bool, say: Callable[[str], None]) -> tuple[str, bool]:
    """The sample reranker, fine-tuned on first use and cached by `cached_reranker`; (model path, trained now)."""
    from stagegraph.training.train import cached_reranker
    from stagegraph.training.finetune import TrainConfig

    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": DEMO_RERANK})
    path, trained = cached_reranker(
        graph, load_dataset("sample", progress=False), TrainConfig(time_budget_s=TRAIN_BUDGET_S), split="train",
        work_dir=work_dir, progress=progress, say=say,
        first_use="No pretrained cross-encoder can be downloaded on this machine, so the demo fine-tunes a small "
        "one now (first run only): the packaged all-MiniLM-L6-v2 weights, first 2 layers, trained on the "
        "sample's train split with negatives mined by the pipeline.",
    )
    return str(path), trained is not None


def run_demo(
    work_dir: str | Path = ".stagegraph",
    out: str | Path = "out/demo",
    reranker: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    started = time.perf_counter()
    work_dir, out = Path(work_dir), Path(out)
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(
            f"{DEMO_CONFIG} is missing: run the demo from a clone installed with `pip install -e .` (bash .ci/demo)"
        )
    trained = False
    if reranker is None:
        reranker, trained = demo_reranker(work_dir, progress, say)
    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": {**DEMO_RERANK, "model": reranker}})
    dataset = load_dataset("sample", progress=False)
    say(f"\n{graph}\n")
    env = Environment(dataset.corpus, work_dir=work_dir, progress=progress)
    report = evaluate(graph, dataset, split="test", mode="online", env=env, cache=None, progress=progress)
    save_report(report, out)
    result = DemoResult(report=report, reranker=reranker, trained=trained, out=str(out),
                        seconds=time.perf_counter() - started, verdict="")
    result.verdict = _verdict(result)
    return result


def _verdict(result: DemoResult) -> str:
    pool = result.report.stages["pool"].metrics["ndcg@10"]
    rerank = result.report.stages["rerank"].metrics["ndcg@10"]
    gain = rerank - pool
    if gain > 0.005:
        return f"The reranker lifts the pool's nDCG@10 from {pool:.3f} to {rerank:.3f} (+{gain:.3f})."
    if gain >= -0.005:
        return f"The reranker leaves the pool's nDCG@10 about where it was ({pool:.3f} -> {rerank:.3f})."
    return (
        f"WARNING: the reranker LOWERS the pool's nDCG@10 from {pool:.3f} to {rerank:.3f} ({gain:+.3f}). "
        "Use the pool's order, or a better model (--reranker MODEL)."
    )
