"""Blending a cross-encoder's scores with the upstream ranking, and the metadata that carries it.

A reranker fine-tuned on a few hundred queries can be weaker than the candidate pool it reorders. The
blend is the safety net: per query, the final score is

    alpha * minmax(cross-encoder score) + (1 - alpha) * upstream signal

where the upstream signal is the min-max normalised upstream score (`upstream="score"`) or a linear
rank prior, 1 for the first candidate down to 0 for the last (`upstream="rank"`). `alpha=1` is the
plain cross-encoder, `alpha=0` keeps the upstream order. `stagegraph train-reranker` picks alpha on
held-out training queries and saves it in the model directory as `stagegraph_reranker.json`
(`RerankerMetadata`), which `CrossEncoderReranker` reads unless its config sets `blend` itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

METADATA_FILE = "stagegraph_reranker.json"


class BlendSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(1.0, ge=0.0, le=1.0)
    upstream: Literal["score", "rank"] = "rank"


class RerankerMetadata(BaseModel):
    """What `train-reranker` records beside the weights: how it was trained and how to use it."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 1
    base_model: str = ""
    dataset: str = ""
    split: str = ""
    blend: BlendSpec = BlendSpec()
    dev: dict[str, float] = Field(default_factory=dict)


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant (or empty) array becomes zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def rank_prior(n: int) -> np.ndarray:
    """1.0 for the first of `n` candidates, falling linearly to 0.0 for the last."""
    if n <= 1:
        return np.ones(n, dtype=np.float64)
    return 1.0 - np.arange(n, dtype=np.float64) / (n - 1)


def blend_scores(ce_scores: np.ndarray, upstream_scores: np.ndarray, spec: BlendSpec) -> np.ndarray:
    """Final float32 scores of one query's candidates (given in upstream order)."""
    ce = np.asarray(ce_scores, dtype=np.float64)
    if spec.alpha >= 1.0:
        return ce.astype(np.float32)
    prior = minmax(upstream_scores) if spec.upstream == "score" else rank_prior(len(ce))
    return (spec.alpha * minmax(ce) + (1.0 - spec.alpha) * prior).astype(np.float32)
