"""`stagegraph demo`: the whole mission on the bundled sample dataset, every stage for real.

1. Load the bundled `sample` dataset (no network).
2. Get a cross-encoder: the course chapter's `cross-encoder/ms-marco-MiniLM-L-6-v2` when it can be
   had (a local path, $STAGEGRAPH_MODELS, the Hugging Face cache, or the hub when it answers within
   a few seconds); otherwise, on first use, fine-tune a small one (the packaged all-MiniLM-L6-v2
   weights, first 2 layers) on the sample's *train* split with `train_reranker`, for a fixed, seeded
   number of steps so that every machine gets the same model and figures, cached under the work
   directory. The demo says which it used and why, and whether it trained it now or reuses the
   model of an earlier run. `reranker=` uses any other model.
3. Run the default graph (configs/hybrid-rerank.yaml: BM25 top-100 | dense top-100 -> RRF pool of
   100 -> cross-encoder rerank of the pool's top 30) on the *test* split in online mode. Indexes and embeddings are cached
   between runs; stage outputs are not, so every run measures every stage's latency afresh. The demo
   says which indexes it built now and which it reused, and its closing time is this run's own.
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
    #: what this run built or trained (and cached), and what it took from an earlier run's cache
    built: list[str] = []
    reused: list[str] = []

    @property
    def finished(self) -> str:
        """The closing line: this run's own time, and whether that time included building or training."""
        line = f"Demo finished in {self.seconds:.0f} s"
        if self.built:
            return f"{line}, including first-run work on {_listing(self.built)} (later runs reuse them)."
        if self.reused:
            return f"{line}; nothing was built or trained ({_listing(self.reused)} came from an earlier run)."
        return f"{line}."

    @property
    def rerank_gain(self) -> float:
        stages = self.report.stages
        return stages["rerank"].metrics["ndcg@10"] - stages["pool"].metrics["ndcg@10"]


#: what the demo's own cross-encoder is, as its messages describe it
SMALL_RERANKER = (f"the packaged all-MiniLM-L6-v2 weights, first 2 layers, {TRAIN_STEPS} seeded steps on the "
                  "sample's train split with negatives mined by the pipeline")
#: the kinds of artefact `Environment.artefact_dir` hands out, as the demo's messages name them
ARTEFACT_NAMES = {"bm25": "the BM25 index", "dense": "the dense index"}


def pretrained_reranker(say: Callable[[str], None], fine_tuned_earlier: bool = False) -> str | None:
    """The chapter's cross-encoder when it can be had here (local copy, cache, or a hub that answers), else None.
    `fine_tuned_earlier`: the demo's own model is already cached, so the message says it is reused, not trained."""
    from stagegraph.indexes.encoder import ModelNotFoundError, locate_model

    try:
        found = locate_model(DEFAULT_RERANKER)
    except ModelNotFoundError:
        offline = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub did not answer"
        instead = (f"uses the small one it fine-tuned on an earlier run ({SMALL_RERANKER})" if fine_tuned_earlier else
                   f"fine-tunes a small one instead, now (later runs reuse it): {SMALL_RERANKER}")
        say(f"The chapter's cross-encoder {DEFAULT_RERANKER} is not on this machine and {offline}, so the demo {instead}.")
        return None
    say(f"Using the chapter's cross-encoder {DEFAULT_RERANKER} ({found.source}: {found.path}).")
    return str(found.path)


def fine_tuned_path(work_dir: Path) -> Path:
    """Where the demo's own cross-encoder is (or will be) cached: `cached_reranker`'s directory for it."""
    from stagegraph.training.finetune import TrainConfig
    from stagegraph.training.train import reranker_key

    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": DEMO_RERANK})
    dataset = load_dataset("sample", progress=False)
    key = reranker_key(graph, dataset, TrainConfig(max_steps=TRAIN_STEPS), "train")
    return Path(work_dir) / "models" / f"reranker-{dataset.name}-{key[:12]}"


def demo_reranker(work_dir: Path, progress: bool, say: Callable[[str], None]) -> tuple[str, str]:
    """(model path, source): the chapter's model when it can be had, else the sample reranker fine-tuned
    on first use and cached by `cached_reranker`."""
    from stagegraph.stages.rerank.blend import METADATA_FILE
    from stagegraph.training.finetune import TrainConfig
    from stagegraph.training.train import cached_reranker

    earlier = (fine_tuned_path(work_dir) / METADATA_FILE).is_file()
    pretrained = pretrained_reranker(say, fine_tuned_earlier=earlier)
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
    before = _cached(work_dir)  # before fine-tuning too: mining its negatives builds the indexes
    source = "given"
    if reranker is None:
        reranker, source = demo_reranker(work_dir, progress, say)
    graph = Pipeline.from_yaml(DEMO_CONFIG, overrides={"cross_encoder": {**DEMO_RERANK, "model": reranker}})
    dataset = load_dataset("sample", progress=False)
    say(f"\n{graph}\n")
    env = Environment(dataset.corpus, work_dir=work_dir, progress=progress)
    report = evaluate(graph, dataset, split="test", mode="online", env=env, cache=None, progress=progress)
    save_report(report, out)
    built, reused = _artefacts(env.artefacts, before)
    if source == "fine-tuned now":
        built.append("the fine-tuned cross-encoder")
    elif source == "fine-tuned earlier":
        reused.append("the fine-tuned cross-encoder")
    if built:
        say(f"Built now and cached in {work_dir} for later runs: {_listing(built)}.")
    if reused:
        say(f"Reused from an earlier run (cached in {work_dir}): {_listing(reused)}.")
    result = DemoResult(report=report, reranker=reranker, source=source, out=str(out),
                        seconds=time.perf_counter() - started, verdict="", built=built, reused=reused)
    result.verdict = _verdict(result)
    return result


def _cached(work_dir: Path) -> set[Path]:
    return {p for kind in ARTEFACT_NAMES for p in (work_dir / kind).glob("*")}


def _artefacts(used: list[Path], before: set[Path]) -> tuple[list[str], list[str]]:
    """(built now, reused): the indexes this run's stages used, by whether they were there before it."""
    built: list[str] = []
    reused: list[str] = []
    for path in used:
        name = ARTEFACT_NAMES.get(path.parent.name)
        if name is not None and name not in built + reused:
            (reused if path in before else built).append(name)
    return built, reused


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


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
