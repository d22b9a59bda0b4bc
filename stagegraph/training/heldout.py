"""Checking a reranker on held-out queries and choosing its blend with the first stage.

`rerank_dev` scores the dev queries' first-stage candidates (top `depth`) with a model directory,
then reports nDCG@10 and MRR@10 for the first stage, for the plain cross-encoder order, and for every
blend on a grid (alpha 0, 0.05, ..., 1 with the upstream signal as a rank prior or as the min-max
score, see `stagegraph.stages.rerank.blend`). The best blend on dev is what `train-reranker` saves, so a weak
model cannot lower the pool's nDCG@10 on those queries: alpha 0 is the first stage itself.

From the same scores, and with no further model call, it also calibrates per-query depth (the
margin of `stagegraph.stages.rerank.depth` with the smallest mean depth whose nDCG@10 stays within
0.005 of the full depth, with the chosen blend) and cuts the calibration set that `backend: auto`
measures backends on (`calibration_set`: up to 32 dev queries, their top 20 candidates).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.scoring import score_run
from stagegraph.stages.rerank.blend import BlendSpec, blend_scores
from stagegraph.stages.rerank.calibration import CalibrationQuery, CalibrationSet
from stagegraph.stages.rerank.depth import AdaptiveCalibration, AdaptiveDepth, calibrate

METRICS = ("ndcg@10", "mrr@10")
ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))
CALIBRATION_QUERIES = 32  # dev queries in the backend calibration set
CALIBRATION_DEPTH = 20  # candidates per calibration query
CROSSFIT_MIN_QUERIES = 4  # fewer dev queries: no cross-fitted figure


class DevReport(BaseModel):
    """Dev-query quality of the first stage, the plain reranker and the chosen blend."""

    queries: int
    depth: int
    first_stage: dict[str, float]
    reranked: dict[str, float]
    blended: dict[str, float]
    blend: BlendSpec
    #: the blend judged on queries it was not chosen on (two halves, each with the other's best blend):
    #: free of the selection gain `blended` carries; None with fewer than CROSSFIT_MIN_QUERIES queries
    blended_crossfit: dict[str, float] | None = None
    pairs_per_s: float = 0.0
    #: per-query depth calibrated on these queries (None when the depth is too shallow to vary)
    adaptive: AdaptiveCalibration | None = None
    query_ids: list[str] = Field(default_factory=list)

    @property
    def model_beats_first_stage(self) -> bool:
        return self.reranked["ndcg@10"] > self.first_stage["ndcg@10"]

    @property
    def blend_beats_first_stage(self) -> bool:
        return self.blended["ndcg@10"] > self.first_stage["ndcg@10"]

    @property
    def crossfit_beats_first_stage(self) -> bool | None:
        """Whether the blend beats the first stage on queries it was not chosen on (None: too few queries)."""
        if self.blended_crossfit is None:
            return None
        return self.blended_crossfit["ndcg@10"] > self.first_stage["ndcg@10"]


def _means(rankings: Sequence[Ranking], queries: Queries, qrels: Qrels, corpus: Corpus) -> dict[str, float]:
    return {m: round(v, 4) for m, v in score_run(rankings, queries, qrels, corpus, METRICS).means.items()}


def rerank_dev(
    model_dir: str | Path,
    queries: Queries,
    qrels: Qrels,
    first_stage: Sequence[Ranking],
    corpus: Corpus,
    *,
    depth: int = 100,
    max_length: int = 512,
    work_dir: Path | None = None,
    progress: bool = True,
    k: int = 10,
) -> DevReport:
    """Score the dev queries' candidates once, then evaluate the first stage, the model and each blend."""
    import time

    from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

    qrels = Qrels({qid: qrels.for_query(qid) for qid in queries.ids})  # score the dev queries only
    pools = [r.top(depth) for r in first_stage]
    stage = CrossEncoderReranker(
        str(model_dir), max_length=max_length, depth=depth, k=depth, blend=1.0, score_cache="memory"
    )
    stage.warm_up(Environment(corpus, work_dir=work_dir or Path(".stagegraph"), progress=progress))
    started = time.perf_counter()
    reranked = stage.run(queries, [pools])
    elapsed = time.perf_counter() - started
    ce_in_pool_order = []
    for pool, ranking in zip(pools, reranked):
        by_row = dict(zip(ranking.doc_rows.tolist(), ranking.provenance[stage.name].model_score.tolist()))
        ce_in_pool_order.append(np.array([by_row[r] for r in pool.doc_rows.tolist()], dtype=np.float32))

    def choose(positions: list[int]) -> BlendSpec:
        """The best blend on the queries at `positions` (ties go to the larger alpha: more cross-encoder)."""
        sub_queries = queries.select(positions)
        sub_qrels = Qrels({qid: qrels.for_query(qid) for qid in sub_queries.ids})
        best: tuple[float, float, BlendSpec] | None = None
        for upstream in ("rank", "score"):
            for alpha in ALPHAS:
                spec = BlendSpec(alpha=alpha, upstream=upstream)
                blended = [
                    Ranking.from_scores(pools[i].doc_rows, blend_scores(ce_in_pool_order[i], pools[i].scores, spec), k=10)
                    for i in positions
                ]
                ndcg = score_run(blended, sub_queries, sub_qrels, corpus, ["ndcg@10"]).means["ndcg@10"]
                key = (round(ndcg, 6), alpha)
                if best is None or key > best[:2]:
                    best = (key[0], alpha, spec)
        assert best is not None
        return best[2]

    spec = choose(list(range(len(queries))))
    crossfit = None
    if len(queries) >= CROSSFIT_MIN_QUERIES:  # each half judged with the blend chosen on the other
        halves = (list(range(0, len(queries), 2)), list(range(1, len(queries), 2)))
        out: list[Ranking | None] = [None] * len(queries)
        for mine, other in ((0, 1), (1, 0)):
            other_spec = choose(halves[other])
            for i in halves[mine]:
                out[i] = Ranking.from_scores(pools[i].doc_rows, blend_scores(ce_in_pool_order[i], pools[i].scores, other_spec), k=10)
        crossfit = _means(out, queries, qrels, corpus)
    chosen = [
        Ranking.from_scores(p.doc_rows, blend_scores(ce, p.scores, spec), k=10)
        for p, ce in zip(pools, ce_in_pool_order)
    ]
    adaptive = None
    policy = AdaptiveDepth()
    if max((len(p) for p in pools), default=0) > policy.min_depth + policy.block:

        def quality_at(depths: list[int]) -> float:
            cut = [Ranking.from_scores(p.doc_rows[:n], blend_scores(ce[:n], p.scores[:n], spec), k=k)
                   for p, ce, n in zip(pools, ce_in_pool_order, depths)]
            return score_run(cut, queries, qrels, corpus, ["ndcg@10"]).means["ndcg@10"]

        adaptive = calibrate(ce_in_pool_order, quality_at, depth, k, policy)
    return DevReport(
        adaptive=adaptive,
        query_ids=list(queries.ids),
        queries=len(queries),
        depth=depth,
        first_stage=_means(pools, queries, qrels, corpus),
        reranked=_means(reranked, queries, qrels, corpus),
        blended=_means(chosen, queries, qrels, corpus),
        blended_crossfit=crossfit,
        blend=spec,
        pairs_per_s=round(sum(len(p) for p in pools) / elapsed, 1) if elapsed > 0 else 0.0,
    )


def calibration_set(
    queries: Queries, qrels: Qrels, first_stage: Sequence[Ranking], corpus: Corpus, source: str = "",
    n_queries: int = CALIBRATION_QUERIES, depth: int = CALIBRATION_DEPTH,
) -> CalibrationSet:
    """The held-out queries `backend: auto` compares backends on: texts, upstream scores and grades."""
    out = []
    for qid, text, ranking in zip(queries.ids, queries.texts, first_stage):
        if len(out) >= n_queries:
            break
        top = ranking.top(depth)
        if not len(top):
            continue
        judged = qrels.for_query(qid)
        grades = [int(judged.get(corpus.ids[int(r)], 0)) for r in top.doc_rows]
        out.append(CalibrationQuery(
            text=text, docs=[corpus.doc_text(int(r)) for r in top.doc_rows], upstream=top.scores.tolist(),
            grades=grades, judged=[int(g) for g in judged.values() if g > 0],
        ))
    return CalibrationSet(source=source, depth=depth, queries=out)
