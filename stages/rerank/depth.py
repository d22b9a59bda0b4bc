"""Per-query rerank depth: score the candidates in blocks from the top and stop when the rest are
unlikely to enter the top k.

`AdaptiveDepth` is the rerank stage's `adaptive_depth` setting (off, `None`, by default: the stage
scores a fixed `depth`). With it, the stage scores the upstream top `min_depth`, then one `block` at a
time down to `depth`, and after each block checks

    max(model score in the block just scored)  <  k-th best model score so far - margin * spread

where `spread` is the standard deviation of the model scores scored so far for that query. When
the best candidate of the last block falls that far short of the current top k, the candidates
below it (ranked lower still by the first stage) are not scored. `margin = 0` stops as soon as a block
puts nothing into the top k; a larger margin scores deeper, a negative one stops earlier.

`margin: calibrated` (the default) reads the margin that `train-reranker` chose on held-out training
queries (`AdaptiveCalibration` in the model's `stagegraph_reranker.json`): the smallest mean depth
whose nDCG@10 on those queries stays within a tolerance of scoring the full depth. `stop_depth` is
the one rule, used by the stage, by that calibration and by `stagegraph tune-rerank`'s simulation,
so the three can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: The margins (in units of the per-query score spread) that calibration and tune-rerank try.
MARGINS: tuple[float, ...] = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


class AdaptiveDepth(BaseModel):
    """The rerank stage's per-query depth rule (`adaptive_depth:` in YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: int = Field(10, ge=1, description="candidates scored per step, from the top of the upstream list")
    min_depth: int = Field(10, ge=1, description="always score at least this many")
    #: a number (score spreads), or "calibrated": the margin saved with the model by train-reranker
    margin: float | Literal["calibrated"] = "calibrated"


class AdaptiveCalibration(BaseModel):
    """What `train-reranker` saves about per-query depth: the margin it chose and the evidence."""

    model_config = ConfigDict(extra="allow")

    block: int
    min_depth: int
    margin: float
    max_depth: int
    tolerance: float
    queries: int
    mean_depth: float
    ndcg: float  # nDCG@10 with the chosen margin, on the held-out queries
    full_ndcg: float  # nDCG@10 at the full max_depth, same queries


def block_ends(depth: int, block: int, min_depth: int) -> list[int]:
    """The depths at which the rule is checked: min_depth, then every `block`, ending at `depth`."""
    first = min(max(min_depth, 1), depth)
    ends = [first]
    while ends[-1] < depth:
        ends.append(min(ends[-1] + block, depth))
    return ends


def should_stop(scores: np.ndarray, start: int, end: int, k: int, margin: float) -> bool:
    """After scoring positions [start, end) of `scores` (model scores in upstream order, the first
    `end` known): True when the block's best is `margin` spreads below the k-th best so far."""
    seen = np.asarray(scores[:end], dtype=np.float64)
    if end <= start or start == 0 or len(seen) < k:
        return False
    kth = np.partition(seen, len(seen) - k)[len(seen) - k]
    spread = float(seen.std())
    best_new = float(seen[start:end].max())
    return best_new < kth - margin * spread


def stop_depth(scores: np.ndarray, depth: int, k: int, policy: AdaptiveDepth, margin: float) -> int:
    """How many candidates the rule scores for one query, given all its model scores (upstream order)."""
    ends = block_ends(min(depth, len(scores)), policy.block, policy.min_depth)
    for start, end in zip(ends, ends[1:]):  # the first block [0, ends[0]) is always scored
        if should_stop(scores, start, end, k, margin):
            return end
    return ends[-1]


def calibrate(
    scores: Sequence[np.ndarray],
    quality_at: Callable[[list[int]], float],
    depth: int,
    k: int,
    policy: AdaptiveDepth,
    tolerance: float = 0.005,
    margins: Sequence[float] = MARGINS,
) -> AdaptiveCalibration:
    """Choose the margin with the smallest mean depth whose quality is within `tolerance` of full depth.

    `scores[i]` are query i's model scores in upstream order (at least `depth` of them, or all it
    has); `quality_at(depths)` is the mean nDCG@10 when query i keeps its first `depths[i]` candidates.
    """
    full = [min(depth, len(s)) for s in scores]
    full_quality = quality_at(full)
    best: tuple[float, float, float] | None = None  # (mean depth, -quality, margin)
    for margin in margins:
        depths = [stop_depth(s, depth, k, policy, margin) for s in scores]
        quality = quality_at(depths)
        if quality >= full_quality - tolerance:
            key = (float(np.mean(depths)), -quality, margin)
            if best is None or key < best:
                best = key
    if best is None:  # no margin is good enough: the largest one (the deepest) is the safe choice
        margin = max(margins)
        depths = [stop_depth(s, depth, k, policy, margin) for s in scores]
        best = (float(np.mean(depths)), -quality_at(depths), margin)
    return AdaptiveCalibration(
        block=policy.block, min_depth=policy.min_depth, margin=best[2], max_depth=depth, tolerance=tolerance,
        queries=len(scores), mean_depth=round(best[0], 2), ndcg=round(-best[1], 4), full_ndcg=round(full_quality, 4),
    )
