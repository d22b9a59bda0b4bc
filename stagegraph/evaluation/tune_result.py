"""What a `tune_rerank` run is given and what it finds, as records: `TuneSettings` (what it varies,
and its limits), and `TuneResult` with its parts (every configuration as a `TunePoint` of
`RerankStep`s, the backend evidence, the per-query-depth verdicts, the verifications).

Records only: `stagegraph.evaluation.tune_rerank` measures and decides, and
`stagegraph.evaluation.tune_report` shows a result (summary lines, frontier, HTML, CSV, `save`).
Both read these records; neither is read by them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.stages.rerank.calibration import TOLERANCE
from stagegraph.stages.rerank.depth import MARGINS

DEPTHS = (10, 20, 30, 50, 100)
K = 10


class TuneSettings(BaseModel):
    """Everything `tune_rerank` varies, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_ms: float = Field(200.0, gt=0, description="P95 rerank time per query the recommendation must fit")
    depths: tuple[int, ...] = DEPTHS
    block: int = Field(10, ge=1, description="candidates per timed call; every depth must be a multiple")
    models: tuple[str, ...] = ()  # besides the config's cross-encoders
    backends: tuple[str, ...] | None = None  # None: every backend this CPU supports
    margins: tuple[float, ...] = MARGINS
    cascade_depths: tuple[int, ...] = (50, 100)
    cascade_ks: tuple[int, ...] = (20, 30)
    k: int = K
    tolerance: float = TOLERANCE
    calibration_queries: int = Field(20, ge=1)
    prune: bool = True
    warmup: int = Field(2, ge=0, description="queries scored once untimed per scorer before the timed pass")
    max_queries: int | None = Field(None, ge=1)
    time_limit_s: float | None = Field(None, gt=0)


class RerankStep(BaseModel):
    """One cross-encoder stage of a configuration."""

    model_config = ConfigDict(frozen=True)

    model: str
    label: str  # the model's short name
    backend: str
    depth: int
    k: int
    margin: float | None = None  # adaptive_depth's margin; None: fixed depth


class TunePoint(BaseModel):
    """One configuration: its stages, quality and cost on the tuned queries."""

    label: str
    kind: Literal["pool", "fixed", "adaptive", "cascade"]
    steps: list[RerankStep] = Field(default_factory=list)
    ndcg: float
    mean_ms: float
    p95_ms: float
    pairs: float = 0.0  # pairs scored per query, mean
    calibrated: bool = False  # an adaptive point with the margin train-reranker calibrated
    pareto: bool = False


class BackendRow(BaseModel):
    """One model x backend, measured on the calibration queries (the evidence for pruning)."""

    model: str
    backend: str
    supported: bool
    reason: str
    kept: bool = False
    ndcg: float | None = None  # at the deepest depth, on the calibration queries
    delta: float | None = None
    ms_per_query: float | None = None


class DepthVerdict(BaseModel):
    """Per-query depth against fixed depth for one scorer, at the same mean cost."""

    scorer: str
    margin: float
    calibrated: bool
    adaptive_ndcg: float
    adaptive_mean_ms: float
    fixed_ndcg_same_cost: float  # fixed depths interpolated to the adaptive point's mean cost
    best_fixed_label: str  # the best fixed depth that costs no more on average
    best_fixed_ndcg: float
    gain: float  # adaptive - interpolated fixed


class Verification(BaseModel):
    """A configuration re-run as a real pipeline: measured against estimated cost."""

    label: str
    queries: int
    ndcg_estimated: float
    ndcg_measured: float
    mean_ms_estimated: float
    mean_ms_measured: float
    p95_ms_estimated: float
    p95_ms_measured: float


class TuneResult(BaseModel):
    """One tuning run: where and how it ran, every configuration measured, and what it recommends."""

    dataset: str
    split: str
    queries: int  # tuned queries (complete for every scorer carried to the end)
    queries_total: int
    stopped_early: bool = False
    budget_ms: float
    k: int
    cpu: str
    machine: str = ""
    settings: TuneSettings
    pool: str
    pool_ndcg: float
    backends: list[BackendRow] = Field(default_factory=list)
    points: list[TunePoint] = Field(default_factory=list)
    recommended: str | None = None
    ninety: str | None = None  # cheapest point reaching 90% of the maximum gain over the pool
    naive: str | None = None  # the slowest model, torch fp32, the deepest depth
    auto_picks: dict[str, str] = Field(default_factory=dict)  # model -> what the auto rule chose here
    depth_verdicts: list[DepthVerdict] = Field(default_factory=list)
    verifications: list[Verification] = Field(default_factory=list)
    recommended_yaml: str = ""
    seconds: float = 0.0
    lines: list[str] = Field(default_factory=list)

    def point(self, label: str | None) -> TunePoint | None:
        return next((p for p in self.points if p.label == label), None)

    def near_naive(self, tolerance: float = 0.005, share: float = 0.25) -> TunePoint | None:
        """The cheapest configuration within `tolerance` nDCG@10 of the naive setting at no more than
        `share` of its mean time (issue 17's target), or None."""
        naive = self.point(self.naive)
        if naive is None:
            return None
        cheap = [p for p in self.points if p.ndcg >= naive.ndcg - tolerance and p.mean_ms <= share * naive.mean_ms]
        return min(cheap, key=lambda p: p.mean_ms) if cheap else None
