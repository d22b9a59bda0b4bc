"""`stagegraph demo`: the whole mission on the bundled sample dataset, every stage for real.

1. Load the bundled `sample` dataset (no network).
2. Get a cross-encoder: the course chapter's `cross-encoder/ms-marco-MiniLM-L-6-v2` when it can be
   had (a local path, $STAGEGRAPH_MODELS, the Hugging Face cache, or the hub when it answers within
   a few seconds); otherwise, on first use, fine-tune a small one (the packaged all-MiniLM-L6-v2
   weights, first 2 layers) on the sample's *train* split with `train_reranker`, for a fixed, seeded
   number of steps so that every machine gets the same model and figures, cached under the work
   directory. The demo says which it used and why. `reranker=` uses any other model.
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
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.writer import save_report
from stagegraph.indexes.encoder import hub_offline
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.stage import Environment, default_work_dir
from stagegraph.stages.rerank.model import DEFAULT_MODEL as DEFAULT_RERANKER

DEMO_CONFIG = CONFIGS_DIR / "hybrid-rerank.yaml"
#: The demo reranks the pool's top 30 (not 100) so that a second run stays under a minute on 2 cores;
#: `benchmarks/rerank.py` answers the 100-candidate latency question.
DEMO_RERANK = {"depth": 30, "k": 10, "max_length": 256}
#: Fixed, seeded training: 113 steps of 4 groups x 8 pairs (3,616 pairs); its time on one machine is in the README (What the demo shows).
TRAIN_STEPS = 113


class DemoResult(BaseModel):
    report: Report
    reranker: str
    #: where the reranker came from: "given", "pretrained" (the chapter's), "fine-tuned now", "fine-tuned earlier"
    source: str
    out: str
    seconds: float
    verdict: str

    @property
    def rerank_gain(self) -> float:
        stages = self.report.stages
        return stages["rerank"].metrics["ndcg@10"] - stages["pool"].metrics["ndcg@10"]


def pretrained_reranker(say: Callable[[str], None]) -> str | None:
    """The chapter's cross-encoder when it can be had here (local copy, cache, or a hub that answers), else None."""
    from stagegraph.indexes.encoder import ModelNotFoundError, locate_model

    try:
        found = locate_model(DEFAULT_RERANKER)
    except ModelNotFoundError:
        offline = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub did not answer"
        say(f"The chapter's cross-encoder {DEFAULT_RERANKER} is not on this machine and {offline}, so the demo "
            "fine-tunes a small one instead (first run only): the packaged all-MiniLM-L6-v2 weights, first 2 "
            f"layers, {TRAIN_STEPS} seeded steps on the sample's train split with negatives mined by the pipeline.")
        return None
    say(f"Using the chapter's cross-encoder {DEFAULT_RERANKER} ({found.source}: {found.path}).")
    return str(found.path)


def demo_reranker(work_dir: Path, progress: bool, say: Callable[[str], None]) -> tuple[str, str]:
    """(model path, source): the chapter's model when it can be had, else the sample reranker fine-tuned
    on first use and cached by `cached_reranker`."""
    from stagegraph.training.finetune import TrainConfig
    from stagegraph.training.train import cached_reranker

    pretrained = pretrained_reranker(say)
    if pretrained is not None:
        return pretrained, "pretrained"
    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": DEMO_RERANK})
    path, trained = cached_reranker(
        graph, load_dataset("sample", progress=False), TrainConfig(max_steps=TRAIN_STEPS), split="train",
        work_dir=work_dir, progress=progress, say=say, first_use="",
    )
    return str(path), "fine-tuned now" if trained is not None else "fine-tuned earlier"


def run_demo(
    work_dir: str | Path | None = None,
    out: str | Path = "out/demo",
    reranker: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    started = time.perf_counter()
    work_dir, out = Path(work_dir) if work_dir is not None else default_work_dir(), Path(out)
    source = "given"
    if reranker is None:
        reranker, source = demo_reranker(work_dir, progress, say)
    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": {**DEMO_RERANK, "model": reranker}})
    dataset = load_dataset("sample", progress=False)
    say(f"\n{graph}\n")
    env = Environment(dataset.corpus, work_dir=work_dir, progress=progress)
    report = evaluate(graph, dataset, split="test", mode="online", env=env, cache=None, progress=progress)
    save_report(report, out)
    result = DemoResult(report=report, reranker=reranker, source=source, out=str(out),
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
