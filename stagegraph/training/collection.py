"""`train_on_collection`: fine-tune a reranker on a collection's own documents, with no labels.

1. `stagegraph.training.pseudo` makes pseudo-queries from the chunks (headings and titles for their
   sections, sentences for the chunk they came from) and a *masked* copy of the chunks, where no
   target still holds its query's exact words.
2. The collection's own first stages (its pipeline up to the cross-encoder's input) are bound to
   the masked chunks, in a scratch directory (the collection is never written; the embeddings it
   cached are read, so only the masked texts are encoded again), and rank every pseudo-query: the
   hard negatives, and the pool the held-out check reranks.
3. `stagegraph.training.train.train_from_candidates` does the rest, as for a dataset with qrels:
   part of the pseudo-queries is held out, the model is fine-tuned on the others, then checked on
   the held-out ones against the pool, and its blend with the pool is chosen there.
4. `install` (the caller's choice): when pool + reranker beats the pool on the held-out queries,
   the model is copied into the collection and recorded as its reranker
   (`stagegraph.collection.reranker_record`).

The pipeline: the collection's own (`collection.json`), with a cross-encoder appended when it has
none (`RERANK_STAGE`, hybrid-rerank's settings, its depth cut to the pool's size); a given config replaces it (its first stages must be
ones the collection can serve, which binding them checks).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagegraph.collection.layout import CollectionError
from stagegraph.errors import InputError
from stagegraph.indexes.text_cache import TextCache
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.config import has_type
from stagegraph.pipeline.stage import Environment
from stagegraph.training.finetune import TrainConfig
from stagegraph.training.pseudo import PseudoConfig, PseudoSet, pseudo_queries
from stagegraph.training.train import TrainResult, mining_graph, reranker_settings, train_from_candidates

#: the cross-encoder appended to a collection pipeline that has none (configs/hybrid-rerank.yaml's)
RERANK_STAGE: dict[str, Any] = {"type": "cross_encoder", "name": "rerank", "model": "cross-encoder/ms-marco-MiniLM-L-6-v2",
                                "depth": 100, "k": 10, "max_length": 512, "batch_size": 16}
MIN_QUERIES = 4  # fewer pseudo-queries cannot be split into fit and held-out


class OverlayCache(TextCache):
    """Reads a collection's text cache, writes to a scratch one: the collection is never changed."""

    def __init__(self, base: Path, scratch: Path):
        super().__init__(scratch)
        self._base = TextCache(base) if base.is_file() else None

    def get_many(self, namespace: str, keys):
        keys = list(keys)
        found = self._base.get_many(namespace, keys) if self._base is not None else {}
        missing = [k for k in keys if k not in found]
        if missing:
            found.update(super().get_many(namespace, missing))
        return found

    def close(self) -> None:
        if self._base is not None:
            self._base.close()
        super().close()


@dataclass
class CollectionTraining:
    result: TrainResult
    pseudo: PseudoSet
    stage: dict[str, Any]  # the cross-encoder stage the model is for (depth, max_length, ...)
    first_stage: str

    @property
    def beats_pool(self) -> bool:
        """Pool + reranker beats the pool on the held-out pseudo-queries, both with the blend chosen on
        them and cross-fitted (each half judged with the blend chosen on the other half), so a gain
        that only the choice of blend made does not install a model."""
        dev = self.result.dev
        if dev is None or not dev.blend_beats_first_stage:
            return False
        return dev.crossfit_beats_first_stage is not False

    def held_out(self) -> dict[str, Any]:
        dev = self.result.dev
        if dev is None:
            return {}
        return {"queries": dev.queries, "depth": dev.depth, "pool": dev.first_stage, "reranker": dev.reranked,
                "pool_plus_reranker": dev.blended, "pool_plus_reranker_crossfit": dev.blended_crossfit,
                "blend": dev.blend.model_dump(mode="json"),
                "pseudo_queries": self.pseudo.counts(), "first_stage": self.first_stage}


def training_pipeline(collection: Any, config: Any = None) -> tuple[Pipeline, dict[str, Any]]:
    """The pipeline the reranker is trained for and its cross-encoder stage (see the module docstring)."""
    if config is None:
        data = dict(collection.settings.pipeline)
    elif isinstance(config, Pipeline):
        data = config.to_config()
    elif isinstance(config, dict):
        data = dict(config)
    else:
        from stagegraph.pipeline.config import load_config, resolve_path

        data = load_config(resolve_path(config))
    if not has_type(data, "cross_encoder"):
        if "pipeline" not in data:
            raise InputError("the pipeline has no cross_encoder stage and is written with `steps:`; give a config "
                             "with one (e.g. hybrid-rerank) to train its reranker")
        pool = Pipeline.from_config(data)
        depth = min(RERANK_STAGE["depth"], int(getattr(pool.steps[-1].stage.config, "k", None) or RERANK_STAGE["depth"]))
        stage = dict(RERANK_STAGE, depth=depth, k=min(RERANK_STAGE["k"], depth))  # never deeper than the pool
        data = dict(data, pipeline=list(data["pipeline"]) + [stage])
    graph = Pipeline.from_config(data)
    _, step = mining_graph(graph)
    stage = step.stage.config.model_dump(mode="json") if step is not None else dict(RERANK_STAGE)
    stage = {"type": "cross_encoder", "name": step.name if step is not None else "rerank",
             **{k: v for k, v in stage.items() if k not in ("type", "name")}}
    return graph, stage


def open_for_training(root: str | Path, progress: bool = False) -> Any:
    """The (unsharded, non-empty) collection at `root`, or one clear `InputError`."""
    from stagegraph.collection.collection import Collection
    from stagegraph.collection.layout import SETTINGS_FILE
    from stagegraph.collection.sharded_layout import is_sharded

    root = Path(root)
    if is_sharded(root):
        raise InputError(f"{root} is a sharded collection; train-reranker --collection trains on one collection: "
                         f"merge it into one with `stagegraph collection reshard {root} NEW_DIR --shards 1`, "
                         "train there, and search that one")
    if not (root / SETTINGS_FILE).is_file():
        raise CollectionError(f"{root} is not a collection (no {SETTINGS_FILE}); create one with "
                              f"`stagegraph ingest PATH --collection {root}`")
    collection = Collection(root, progress=progress)
    if len(collection.corpus) == 0:
        collection.close()
        raise CollectionError(f"the collection {root} holds no chunks; add documents with "
                              f"`stagegraph ingest PATH --collection {root}` first")
    return collection


def train_on_collection(
    collection: Any,
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),
    pseudo: PseudoConfig = PseudoConfig(),
    *,
    config: Any = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> CollectionTraining:
    """Make pseudo-queries, mine with the collection's first stages, fine-tune and check (module docstring).

    The model is written to `out` whether it wins or not; installing it is `install_if_better`'s job.
    """
    t0 = time.perf_counter()
    graph, stage = training_pipeline(collection, config)
    pset = pseudo_queries(collection.corpus, pseudo)
    counts = pset.counts()
    if len(pset.queries) < MIN_QUERIES:
        raise InputError(f"the collection {collection.layout.root} gave only {len(pset.queries)} usable pseudo-queries "
                         f"(at least {MIN_QUERIES} are needed): it needs more text (sentences of "
                         f"{pseudo.min_words}+ content words, headings or titles) to train a reranker on")
    skipped = ", ".join(f"{v} {k}" for k, v in sorted(pset.skipped.items()))
    say(f"train-reranker: {len(pset.queries)} pseudo-queries from {len(pset.corpus)} chunks of {collection.layout.root} "
        f"({counts['heading']} headings/titles, {counts['sentence']} sentences; skipped: {skipped or 'none'}); "
        "each target shown without its query's words")
    miner, _ = mining_graph(graph)
    depth, max_length = reranker_settings(graph)
    dataset = pset.dataset(f"{Path(collection.layout.root).name} (pseudo-queries)")
    scratch = Path(tempfile.mkdtemp(prefix="stagegraph-pseudo-"))
    try:
        cache = OverlayCache(collection.layout.cache, scratch / "cache.sqlite")
        try:
            say(f"train-reranker: negatives mined by the collection's own first stages ({miner.output!r}, top "
                f"{cfg.mine_depth}) over the masked chunks")
            env = Environment(pset.corpus, work_dir=scratch / "work", progress=progress, text_cache=cache)
            mined = miner.execute(dataset.queries, env=env, mode="batch", progress=progress).final
        finally:
            cache.close()
        candidates = dict(zip(dataset.queries.ids, mined))
        result = train_from_candidates(
            dataset, candidates, out, cfg, split="train", first_stage=miner.output, depth=depth, max_length=max_length,
            work_dir=scratch / "work", progress=progress,
            say=lambda line: None if line.startswith("model written to") else say(line), timings={"pseudo+mine": time.perf_counter() - t0},
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return CollectionTraining(result, pset, stage, miner.output)


def verdict_lines(run: CollectionTraining) -> list[str]:
    """Pool vs pool + reranker on the held-out pseudo-queries, in plain words."""
    dev = run.result.dev
    if dev is None:
        return ["no pseudo-queries were held out: the reranker is NOT checked against the pool, so it is not installed"]
    pool, blended = dev.first_stage["ndcg@10"], dev.blended["ndcg@10"]
    where = f"on {dev.queries} held-out pseudo-queries (nDCG@10, depth {dev.depth})"
    cross = "" if dev.blended_crossfit is None else \
        f", cross-fitted (blend chosen on the other half) {dev.blended_crossfit['ndcg@10']:.4f}"
    figures = (f"pool {pool:.4f}, pool + reranker {blended:.4f}{cross}, "
               f"reranker alone {dev.reranked['ndcg@10']:.4f}")
    if run.beats_pool:
        return [f"the reranker beats the pool {where}: {figures}"]
    return [f"the reranker does NOT beat the pool {where}: {figures}"]
