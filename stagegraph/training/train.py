"""`train_reranker`: fine-tune a cross-encoder for a pipeline, on a dataset's training qrels.

1. The training split's judged queries are shuffled (seeded) into *fit* and *dev* queries.
2. Hard negatives are mined by the pipeline's own first stages: the graph up to the input of its
   cross-encoder (or the whole graph when it has none) runs over the split's queries in batch mode,
   with the stage cache, so BM25/dense/pool outputs are reused across runs. Or they come from given
   candidates (`train_from_candidates`, e.g. a TREC run file read by `rankings_from_run`).
3. `stagegraph.training.finetune` fine-tunes the base model on the fit queries.
4. `stagegraph.training.heldout.rerank_dev` reranks the dev queries' candidates, compares first stage,
   plain cross-encoder and the best blend, and the blend is saved with the model
   (`stagegraph_reranker.json`), which `CrossEncoderReranker` reads.

The model directory is written atomically (a temp directory renamed into place). `TrainResult.lines`
says in plain words whether the model beats the first stage on the held-out queries.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from stagegraph.corpora.types import Corpus, DataError, Dataset
from stagegraph.atomic import atomic_dir
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import Step
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.blend import METADATA_FILE, BlendSpec, RerankerMetadata
from stagegraph.training.finetune import TrainConfig, build_groups, load_base, save_model, split_train_dev, train_cross_encoder
from stagegraph.stages.rerank.calibration import save_calibration
from stagegraph.training.heldout import DevReport, calibration_set, rerank_dev


class TrainResult(BaseModel):
    out: str
    train: TrainConfig
    mined_by: str
    fit_queries: int
    dev: DevReport | None
    blend: BlendSpec
    pairs: int
    pairs_per_s: float
    epoch_loss: list[float]
    stopped_early: bool
    seconds: dict[str, float] = Field(default_factory=dict)
    lines: list[str] = Field(default_factory=list)

    @property
    def beats_first_stage(self) -> bool | None:
        return None if self.dev is None else self.dev.blend_beats_first_stage


def mining_graph(graph: Pipeline) -> tuple[Pipeline, Step | None]:
    """The part of `graph` that feeds its (last) cross-encoder, and that cross-encoder's step."""
    rerankers = [s for s in graph.steps if s.stage.type_name == "cross_encoder"]
    if not rerankers:
        return graph, None
    reranker = rerankers[-1]
    by_name = {s.name: s for s in graph.steps}
    keep: set[str] = set()
    todo = list(reranker.inputs)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(by_name[name].inputs)
    return Pipeline([s for s in graph.steps if s.name in keep]), reranker


def reranker_settings(graph: Pipeline) -> tuple[int, int]:
    """(depth, max_length) of the graph's last cross-encoder, which the dev check reranks with; (100, 512) without one."""
    _, reranker = mining_graph(graph)
    config = reranker.stage.config if reranker else None
    return int(getattr(config, "depth", 100)), int(getattr(config, "max_length", 512))


def train_reranker(
    graph: Pipeline,
    dataset: Dataset,
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),
    *,
    split: str = "train",
    work_dir: str | Path = ".stagegraph",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Mine, fine-tune, check on dev, and write the model directory `out`."""
    t0 = time.perf_counter()
    queries, _ = dataset.split(split)
    miner, _ = mining_graph(graph)
    depth, max_length = reranker_settings(graph)
    say(f"train-reranker: negatives mined by {miner.output!r} (top {cfg.mine_depth}) for the {split} queries")
    env = Environment(dataset.corpus, work_dir=Path(work_dir), progress=progress)
    mined = miner.execute(queries, env=env, mode="batch", cache=StageCache(Path(work_dir) / "cache")).final
    candidates = dict(zip(queries.ids, mined))
    return train_from_candidates(
        dataset, candidates, out, cfg, split=split, first_stage=miner.output, depth=depth, max_length=max_length,
        work_dir=work_dir, progress=progress, say=say, timings={"mine": time.perf_counter() - t0},
    )


def train_from_candidates(
    dataset: Dataset,
    candidates: Mapping[str, Ranking],
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),
    *,
    split: str = "train",
    first_stage: str = "candidates",
    depth: int = 100,
    max_length: int = 512,
    work_dir: str | Path = ".stagegraph",
    progress: bool = True,
    say: Callable[[str], None] = print,
    timings: dict[str, float] | None = None,
) -> TrainResult:
    """Fine-tune on given first-stage `candidates` (query id -> Ranking; a run file, say), check on dev, write `out`.

    Negatives are drawn from each query's candidates; the dev check reranks the dev queries' top
    `depth` candidates at `max_length` tokens (`cfg.dev_depth` overrides `depth`).
    """
    timings = dict(timings or {})
    t0 = time.perf_counter() - sum(timings.values())
    queries, qrels = dataset.split(split)
    corpus = dataset.corpus
    missing = [qid for qid in queries.ids if qid not in candidates]
    if len(missing) == len(queries):
        raise DataError(f"the candidates hold none of the {len(queries)} {split} queries of {dataset.name!r} "
                         "(check that the run file is for this dataset and split)")
    empty = Ranking.empty()
    fit, dev = split_train_dev(queries, qrels, corpus, cfg)
    depth = cfg.dev_depth or depth
    say(f"train-reranker: {len(fit)} {split} queries to fit, {len(dev)} held out as dev"
        + (f" ({len(missing)} {split} queries have no candidates)" if missing else ""))
    mined_fit = [candidates.get(q, empty) for q in fit.ids]
    mined_dev = [candidates.get(q, empty) for q in dev.ids]

    t1 = time.perf_counter()
    model, tokenizer = load_base(cfg)
    stats = train_cross_encoder(
        model, tokenizer, lambda epoch: build_groups(fit, mined_fit, qrels, corpus, cfg, epoch), corpus, cfg,
        progress=progress,
    )
    timings["train"] = time.perf_counter() - t1
    losses = ", ".join(f"{x:.3f}" for x in stats.epoch_loss)
    say(f"fine-tuned {cfg.base} ({cfg.layers or 'all'} layers) on {stats.pairs} pairs in {stats.seconds:.0f} s "
        f"({stats.pairs_per_s:.1f} pairs/s); loss per epoch: {losses}"
        + (f" (time budget: {stats.steps} of {stats.planned_steps} planned steps)" if stats.stopped_early else ""))

    out = Path(out)
    report: DevReport | None = None
    with atomic_dir(out) as tmp:
        save_model(model, tokenizer, tmp)
        if len(dev):
            t2 = time.perf_counter()
            report = rerank_dev(tmp, dev, qrels, mined_dev, corpus, depth=depth, max_length=max_length,
                                work_dir=Path(work_dir), progress=progress)
            timings["dev"] = time.perf_counter() - t2
            save_calibration(tmp, calibration_set(dev, qrels, mined_dev, corpus, source=f"{dataset.name} {split} (dev)"))
        blend = report.blend if report is not None else BlendSpec()
        meta = RerankerMetadata(
            base_model=cfg.base, dataset=dataset.name, split=split, blend=blend,
            dev={} if report is None else {
                **{f"first_stage_{k}": v for k, v in report.first_stage.items()},
                **{f"reranked_{k}": v for k, v in report.reranked.items()},
                **{f"blended_{k}": v for k, v in report.blended.items()},
            },
            train=cfg.model_dump(mode="json"), mined_by=first_stage, dev_queries=len(dev), fit_queries=len(fit),
            pairs=stats.pairs, epoch_loss=stats.epoch_loss,
            adaptive_depth=None if report is None or report.adaptive is None else report.adaptive.model_dump(mode="json"),
            dev_query_ids=[] if report is None else report.query_ids,
        )
        (tmp / METADATA_FILE).write_text(json.dumps(meta.model_dump(mode="json"), indent=2), encoding="utf-8")
    timings["total"] = time.perf_counter() - t0

    lines = _verdict(report, first_stage)
    for line in lines:
        say(line)
    say(f"model written to {out} (load it with --reranker {out})")
    return TrainResult(
        out=str(out), train=cfg, mined_by=first_stage, fit_queries=len(fit), dev=report, blend=blend,
        pairs=stats.pairs, pairs_per_s=round(stats.pairs_per_s, 2), epoch_loss=stats.epoch_loss,
        stopped_early=stats.stopped_early, seconds={k: round(v, 1) for k, v in timings.items()}, lines=lines,
    )


def rankings_from_run(path: str | Path, corpus: Corpus) -> dict[str, Ranking]:
    """A TREC run file (`stagegraph.corpora.trec.read_run`) as first-stage candidates: query id -> Ranking.

    Every document id must be in `corpus`; otherwise a `DataError` names the first unknown ids.
    """
    from stagegraph.corpora.trec import read_run

    run = read_run(path)
    unknown = sorted({d for docs in run.values() for d in docs if not corpus.has(d)})
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} document id(s) are not in the corpus, e.g. {unknown[:5]}; "
            "the run file must come from the same corpus as --dataset"
        )
    return {qid: Ranking.from_scores(corpus.rows_of(docs), list(docs.values())) for qid, docs in run.items()}


def reranker_key(graph: Pipeline, dataset: Dataset, cfg: TrainConfig, split: str = "train") -> str:
    """What a fine-tuned model depends on: the data, the training settings, the base and the miner."""
    from stagegraph.indexes.encoder import ModelNotFoundError, locate_model, model_identity

    try:
        base = model_identity(locate_model(cfg.base).path)
    except ModelNotFoundError:
        base = cfg.base
    queries, qrels = dataset.split(split)
    miner, _ = mining_graph(graph)
    return stable_hash({
        "corpus": dataset.corpus.fingerprint, "queries": queries.fingerprint(), "qrels": qrels.fingerprint(),
        "train": cfg.model_dump(mode="json", exclude={"threads", "time_budget_s", "device"}), "base": base,
        "miner": [s.stage.fingerprint() for s in miner.steps], "format": 1,
    })


def cached_reranker(
    graph: Pipeline,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    split: str = "train",
    work_dir: str | Path = ".stagegraph",
    progress: bool = True,
    say: Callable[[str], None] = print,
    first_use: str | None = None,
) -> tuple[Path, TrainResult | None]:
    """The model fine-tuned for (`graph`, `dataset`, `cfg`) under `work_dir/models/`, trained on first use.

    Returns the directory and, when it was trained now, the `TrainResult` (None when it was cached).
    `first_use` replaces the message said before training.
    """
    key = reranker_key(graph, dataset, cfg, split)
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset.name)  # one folder for "irds:beir/scifact" too
    out = Path(work_dir) / "models" / f"reranker-{folder}-{key[:12]}"
    if (out / METADATA_FILE).is_file():
        say(f"using the cross-encoder fine-tuned earlier on {dataset.name} {split}: {out}")
        return out, None
    message = first_use if first_use is not None else (
        f"no pretrained cross-encoder is available offline: fine-tuning one on {dataset.name} {split} (first use only)"
    )
    if message:
        say(message)
    say(f"the fine-tuned cross-encoder will be cached in {out}")
    return out, train_reranker(graph, dataset, out, cfg, split=split, work_dir=work_dir, progress=progress, say=say)


def _verdict(report: DevReport | None, first: str) -> list[str]:
    if report is None:
        return ["no dev queries were held out (dev_fraction 0): the model is NOT checked against the first stage"]
    f, r, b = report.first_stage, report.reranked, report.blended
    lines = [
        f"dev ({report.queries} held-out queries, depth {report.depth}): nDCG@10 / MRR@10  "
        f"{first} {f['ndcg@10']:.4f} / {f['mrr@10']:.4f}  |  cross-encoder {r['ndcg@10']:.4f} / {r['mrr@10']:.4f}  |  "
        f"blend (alpha {report.blend.alpha:.2f}, {report.blend.upstream}) {b['ndcg@10']:.4f} / {b['mrr@10']:.4f}"
    ]
    if report.model_beats_first_stage:
        lines.append(f"the fine-tuned cross-encoder beats {first!r} on the held-out queries "
                     f"(nDCG@10 {r['ndcg@10']:.4f} > {f['ndcg@10']:.4f})")
    else:
        lines.append(f"WARNING: the fine-tuned cross-encoder alone does NOT beat {first!r} on the held-out queries "
                     f"(nDCG@10 {r['ndcg@10']:.4f} <= {f['ndcg@10']:.4f}); the saved blend protects the ranking")
    if report.adaptive is not None:
        a = report.adaptive
        lines.append(f"per-query depth (adaptive_depth, calibrated on dev): margin {a.margin:g}, mean depth {a.mean_depth:.1f} "
                     f"of {a.max_depth}, nDCG@10 {a.ndcg:.4f} vs {a.full_ndcg:.4f} at the full depth")
    if not report.blend_beats_first_stage:
        lines.append(f"WARNING: even blended, reranking does NOT improve on {first!r} on the held-out queries "
                     f"(alpha {report.blend.alpha:.2f}: nDCG@10 {b['ndcg@10']:.4f} vs {f['ndcg@10']:.4f})")
    return lines
