"""`CandidatePool`: the fusing stage that joins parallel branches into one de-duplicated pool.

Per query it takes one ranking per upstream branch (`inputs[j][i]`) and returns their union,
scored by a fusion rule and cut to `k`. Ties in the fused score are broken by corpus row, lowest
first (`Ranking.from_scores`), so the pool never depends on branch or thread order.

Settings (`CandidatePoolConfig`) and their defaults:

* `method`: `rrf` (default), `combsum`, `combmnz`, `wsum`, `max` (formulas in
  `stagegraph.stages.fusion.methods`).
  - RRF uses ranks only: score(d) = sum_b w_b / (rrf_k + rank_b(d)), `rrf_k` = 60 as in Cormack,
    Clarke & Buettcher, "Reciprocal rank fusion outperforms Condorcet and individual rank learning
    methods", SIGIR 2009 (also Pyserini's and ranx's default; Haystack fixes it at 61). A branch that
    did not return d adds 0, by definition, so RRF takes no normalisation and no missing policy.
  - CombSUM and CombMNZ are Fox & Shaw (TREC-2, 1994); `wsum` is the weighted sum (CombSUM with
    explicit per-branch weights); `max` is CombMAX.
* `normalization` (score-based methods): `minmax` by default (Lee, SIGIR 1997, and ranx's default),
  or `none`, `zscore`, `rank` (see `stagegraph.stages.fusion.normalize`). Applied to each branch's list per query.
* `missing` (score-based methods), the named missing-document policy: what a branch contributes for
  a pooled document it did not return (see `stagegraph.stages.fusion.missing`):
  - `zero` (default): 0, the CombSUM reading of Fox & Shaw and the rule of ranx, PyTerrier, Haystack;
  - `min`: that branch's lowest normalised score for the query, the rule of Pyserini's hybrid search;
  - `skip`: nothing; the document is scored on the branches that returned it: sums become the
    document's weighted mean over those branches times the total weight, CombMNZ multiplies that by
    the number of branches that found it, `max` is the max over those branches.
* `weights`: one non-negative weight per input, in input order, or a mapping {branch name: weight};
  default 1 for every branch. `combsum` is the unweighted sum (use `wsum` for weights); `wsum` needs
  weights. Checked against the number and names of the inputs at run time.
* `k` = 100: the pool size.

The policy and normalisation in force are written into the config when it is built (an unset one
takes its method's default), so `to_config()`, the graph tree and reports always show them, and a
config that spells the defaults out has the same fingerprint as one that leaves them implicit.

Provenance: the executor records, for every pooled document, the score and rank each branch gave it
(`ranking.provenance[branch]`, NaN where the branch did not return it), keyed by the branch's step
name; weights given as a mapping are matched against those names (`inputs.names`).
`branch_contributions` counts, per branch, the pooled documents only that branch found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError, StageError
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, Inputs, StageConfig
from stagegraph.stages.base import StageBase
from stagegraph.stages.fusion import methods
from stagegraph.stages.fusion.align import Aligned, align
from stagegraph.stages.fusion.missing import fill_missing
from stagegraph.stages.fusion.normalize import NORMALIZERS
from stagegraph.stages.fusion.options import FusionMethod, MissingPolicy, Normalization
from stagegraph.pipeline.registry import register

DEFAULT_RRF_K = 60  # Cormack, Clarke & Buettcher (SIGIR 2009)
DEFAULT_NORMALIZATION = Normalization.MINMAX  # Lee (SIGIR 1997); ranx's default
DEFAULT_MISSING = MissingPolicy.ZERO  # Fox & Shaw (1994); ranx, PyTerrier, Haystack


class CandidatePoolConfig(StageConfig):
    """Settings of a `CandidatePool`; unset method-dependent fields are resolved to their defaults."""

    method: FusionMethod | None = None
    k: int = Field(100, ge=1)
    rrf_k: int | None = Field(None, ge=0)
    normalization: Normalization | None = None
    weights: list[float] | dict[str, float] | None = None
    missing: MissingPolicy | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        method = FusionMethod(data.get("method") or FusionMethod.RRF)
        data["method"] = method
        if method is FusionMethod.RRF:
            data["rrf_k"] = DEFAULT_RRF_K if data.get("rrf_k") is None else data["rrf_k"]
            data["normalization"] = data.get("normalization") or Normalization.NONE
            data["missing"] = data.get("missing") or MissingPolicy.ZERO
        else:
            data["normalization"] = data.get("normalization") or DEFAULT_NORMALIZATION
            data["missing"] = data.get("missing") or DEFAULT_MISSING
        return data

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: Any) -> Any:
        if weights is None:
            return None
        values = list(weights.values()) if isinstance(weights, dict) else list(weights)
        if not values:
            raise ValueError("weights is empty; give one weight per input, or leave it out for equal weights")
        bad = [w for w in values if not math.isfinite(w) or w < 0]
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if not any(values):
            raise ValueError("weights are all 0; at least one branch needs a positive weight")
        return weights

    @model_validator(mode="after")
    def _check_combination(self) -> CandidatePoolConfig:
        m = self.method
        if m is FusionMethod.RRF:
            if self.normalization is not Normalization.NONE:
                raise ValueError(
                    f"normalization={self.normalization} does not apply to rrf, which uses ranks only; "
                    "leave it out, or pick a score-based method (combsum, combmnz, wsum, max)"
                )
            if self.missing is not MissingPolicy.ZERO:
                raise ValueError(
                    f"missing={self.missing} does not apply to rrf: a branch that did not return a document "
                    "adds 0 by definition; leave it out, or pick a score-based method"
                )
        elif self.rrf_k is not None:
            raise ValueError(f"rrf_k applies to method rrf only, not {m}; leave it out")
        if m is FusionMethod.COMBSUM and self.weights is not None:
            raise ValueError("combsum is the unweighted sum; use method: wsum to give weights")
        if m is FusionMethod.WSUM and self.weights is None:
            raise ValueError("wsum needs weights (one per input, or {branch: weight}); use combsum for equal weights")
        return self


@register
class CandidatePool(StageBase):
    """Fuses the rankings of two or more branches into one pool of `k` documents per query.

    See the module docstring for every setting, its default and its source.
    """

    type_name = "pool"
    Config = CandidatePoolConfig
    arity = Arity.MANY

    def __init__(
        self,
        method: FusionMethod | str = FusionMethod.RRF,
        k: int = 100,
        rrf_k: int | None = None,
        normalization: Normalization | str | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        missing: MissingPolicy | str | None = None,
        name: str | None = None,
    ):
        if weights is not None and not isinstance(weights, Mapping):
            weights = list(weights)
        elif weights is not None:
            weights = dict(weights)
        self.config = self.make_config(
            name=name, method=method, k=k, rrf_k=rrf_k, normalization=normalization, weights=weights, missing=missing
        )

    @classmethod
    def from_config(cls, config: CandidatePoolConfig) -> CandidatePool:
        return cls._of_config(config)

    # -- inputs -----------------------------------------------------------------------------------
    def check_inputs(self, upstream: Sequence[tuple[str, int | None]]) -> None:
        """At composition: one weight per input branch (by position or by name)."""
        try:
            self.branch_weights([name for name, _ in upstream])
        except StageError as exc:
            raise InputError(str(exc)) from None

    def branch_weights(self, names: Sequence[str]) -> np.ndarray:
        """One float64 weight per branch, in input order; the errors say how to fix the config."""
        weights = self.config.weights
        shown = ", ".join(names)
        if weights is None:
            return np.ones(len(names))
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(names))
            absent = [n for n in names if n not in weights]
            if unknown or absent:
                raise StageError(
                    f"pool {self.name!r}: weights name branches {sorted(weights)} but its inputs are ({shown}); "
                    + (f"unknown: {unknown}; " if unknown else "")
                    + (f"no weight for: {absent}; " if absent else "")
                    + "give exactly one weight per input branch"
                )
            return np.array([weights[n] for n in names], dtype=np.float64)
        if len(weights) != len(names):
            raise StageError(
                f"pool {self.name!r} has {len(weights)} weights but {len(names)} inputs ({shown}); "
                f"give {len(names)} weights in input order, or a mapping {{branch: weight}}"
            )
        return np.asarray(weights, dtype=np.float64)

    # -- running ----------------------------------------------------------------------------------
    def bind(self, env: Environment) -> CandidatePool | KeyedPool:
        """Itself, except over a corpus whose ties are ordered by key rather than row (a segmented
        collection, `stagegraph.corpora.segmented`): then a pool that orders equal fused scores by key,
        so that the same chunks in any segment layout give the same pool."""
        tie_keys = getattr(env.corpus, "tie_keys", None)
        return self if tie_keys is None else KeyedPool(self, tie_keys)

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        return self.pool(queries, inputs)

    def pool(self, queries: Queries, inputs: Sequence[Sequence[Ranking]], tie_keys: Any = None) -> list[Ranking]:
        """Every query's fused pool; equal fused scores by row, or by `tie_keys(rows)` when given."""
        if not inputs:
            raise StageError(f"pool {self.name!r} got no inputs; put two or more branches before it: (a | b) >> pool")
        for j, branch in enumerate(inputs):
            if len(branch) != len(queries):
                raise StageError(
                    f"pool {self.name!r}: input {j} has {len(branch)} rankings for {len(queries)} queries; "
                    "every upstream stage must return one ranking per query"
                )
        weights = self.branch_weights(Inputs.wrap(inputs).names)
        return [self.fuse(per_query, weights, tie_keys) for per_query in zip(*inputs)]

    def fuse(self, rankings: Sequence[Ranking], weights: np.ndarray, tie_keys: Any = None) -> Ranking:
        """One query: the fused, de-duplicated pool of `rankings`."""
        cfg = self.config
        aligned = align(rankings)
        if cfg.method is FusionMethod.RRF:
            fused = methods.rrf(aligned.ranks, aligned.present, weights, cfg.rrf_k)
        else:
            normalised = NORMALIZERS[cfg.normalization](aligned.raw, aligned.ranks)
            values = fill_missing(normalised, aligned.present, cfg.missing)
            if cfg.method is FusionMethod.COMBMNZ:
                fused = methods.combmnz(values, weights, aligned.present)
            elif cfg.method is FusionMethod.MAX:
                fused = methods.weighted_max(values, weights)
            else:  # combsum (unit weights) and wsum
                fused = methods.weighted_sum(values, weights)
        return _pool(aligned, fused, cfg.k, tie_keys)


class KeyedPool:
    """A `CandidatePool` bound to a corpus that orders ties by key (`CandidatePool.bind`)."""

    def __init__(self, stage: CandidatePool, tie_keys: Any):
        self.stage, self.tie_keys = stage, tie_keys

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        return self.stage.pool(queries, inputs, self.tie_keys)


def _pool(aligned: Aligned, fused: np.ndarray, k: int, tie_keys: Any = None) -> Ranking:
    """The top `k` of the union by fused score.

    Same order as `Ranking.from_scores` (float32 score desc, row asc) in one stable sort: the union's
    rows are already ascending, so a stable sort on the score keeps ties in row order. With
    `tie_keys` (rows -> int64 keys), ties are ordered by key instead.
    """
    scores = fused.astype(np.float32)
    if tie_keys is not None:
        order = np.lexsort((tie_keys(aligned.rows), -scores))[:k]
        return Ranking(aligned.rows.take(order), scores.take(order))
    order = (-scores).argsort(kind="stable")[:k]
    return Ranking(aligned.rows.take(order), scores.take(order))


def branch_contributions(rankings: Sequence[Ranking], branch_names: Sequence[str]) -> dict[str, int]:
    """Per branch, how many pooled documents (over all `rankings`) only that branch returned.

    Reads the provenance the executor attaches: `ranking.provenance[branch].found`.
    """
    counts = dict.fromkeys(branch_names, 0)
    for ranking in rankings:
        if len(ranking) == 0:
            continue
        missing = [n for n in branch_names if n not in ranking.provenance]
        if missing:
            raise KeyError(
                f"ranking has no trace of branch(es) {missing}; traced steps: {sorted(ranking.provenance)}. "
                "Pass the rankings a pipeline produced (they carry provenance) and its branch names"
            )
        present = np.stack([ranking.provenance[n].found for n in branch_names])
        alone = present.sum(axis=0) == 1
        for b, name in enumerate(branch_names):
            counts[name] += int(np.count_nonzero(present[b] & alone))
    return counts
