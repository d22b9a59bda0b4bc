"""Comparing pipelines: per-metric deltas against a baseline with paired significance tests.

Input: saved reports (`report.json`) of several pipelines on the same dataset and split. For each
system other than the baseline and each metric, the per-query values of the compared stage (by
default each report's output stage) are paired by query id, and we report:

* the means and the delta (system - baseline);
* a paired t-test (`scipy.stats.ttest_rel`, two-sided);
* a paired randomisation test (two-sided, sign flips of the per-query differences, `permutations`
  draws from a seeded generator; p = (hits + 1) / (permutations + 1));
* Holm's step-down correction applied to each test's p-values across *all* comparisons in the run
  (every system x metric), and `significant` = Holm-corrected randomisation p < alpha;
* Cohen's d for paired samples (d_z = mean difference / standard deviation of the differences);
* the latency deltas (P50 and P95, ms) of the compared stage and end to end.

A metric that does not apply to the compared stage of either report (null in `report.json`: a
reranker that keeps 10 has no recall@100) is not compared: it is listed under `skipped` with the
reason, and left out of the Holm correction. When nothing is left to compare, that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from stagegraph.errors import InputError
from stagegraph.evaluation.report import Report


class CompareError(InputError):
    """Reports that cannot be compared (another dataset, no common queries, unknown stage)."""


class MetricComparison(BaseModel):
    system: str
    stage: str
    metric: str
    baseline_mean: float
    system_mean: float
    delta: float
    n: int
    p_t: float
    p_rand: float
    p_t_holm: float = 1.0
    p_rand_holm: float = 1.0
    cohen_d: float | None
    significant: bool = False


class SkippedMetric(BaseModel):
    """A (system, metric) pair that was not compared, and why."""

    system: str
    stage: str
    metric: str
    reason: str


class LatencyDelta(BaseModel):
    system: str
    stage: str  # a stage name, or "end to end"
    baseline_p50: float | None
    system_p50: float | None
    baseline_p95: float | None
    system_p95: float | None

    @property
    def delta_p50(self) -> float | None:
        return None if self.baseline_p50 is None or self.system_p50 is None else self.system_p50 - self.baseline_p50

    @property
    def delta_p95(self) -> float | None:
        return None if self.baseline_p95 is None or self.system_p95 is None else self.system_p95 - self.baseline_p95


class Comparison(BaseModel):
    baseline: str
    systems: list[str]
    dataset: str
    split: str
    alpha: float
    permutations: int
    seed: int
    metrics: list[MetricComparison] = Field(default_factory=list)
    latency: list[LatencyDelta] = Field(default_factory=list)
    skipped: list[SkippedMetric] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def paired_t_test(system: np.ndarray, baseline: np.ndarray) -> float:
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    if d.size < 2 or np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        # No variance: identical runs (p = 1) or a constant shift (p = 0), where scipy gives NaN.
        return 1.0 if d.size == 0 or abs(d.mean()) <= 1e-12 else 0.0
    return float(stats.ttest_rel(system, baseline).pvalue)


def randomisation_test(system: np.ndarray, baseline: np.ndarray, permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired randomisation (sign-flip) test of the mean difference."""
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, min(permutations, 4_000_000 // max(d.size, 1)))
    while done < permutations:
        m = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ d) / d.size
        hits += int(np.count_nonzero(means >= observed - 1e-12))
        done += m
    return (hits + 1) / (permutations + 1)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order."""
    p = np.asarray(pvalues, np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def cohen_d(system: np.ndarray, baseline: np.ndarray) -> float | None:
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 0.0 if abs(d.mean()) <= 1e-12 else None  # a constant non-zero shift has no finite d
    return float(d.mean() / sd)


def label_for(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    return p.parent.name if p.name == "report.json" else p.name if p.is_dir() else p.stem


def _unique(labels: list[str]) -> list[str]:
    out: list[str] = []
    for label in labels:
        name, i = label or "report", 2
        while name in out:
            name, i = f"{label}-{i}", i + 1
        out.append(name)
    return out


def compare(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    baseline: int = 0,
    stage: str | None = None,
    metrics: Sequence[str] | None = None,
    permutations: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Compare every report with `reports[baseline]`; see the module docstring for the figures."""
    if len(reports) < 2:
        raise CompareError("compare needs at least two reports: a baseline and a system")
    labels = _unique(list(labels) if labels else [f"{r.dataset}:{r.output}" for r in reports])
    base, base_label = reports[baseline], labels[baseline]
    warnings: list[str] = []
    for r, label in zip(reports, labels):
        if (r.dataset_fingerprint, r.split) != (base.dataset_fingerprint, base.split):
            raise CompareError(
                f"{label} was evaluated on {r.dataset}/{r.split} (corpus {r.dataset_fingerprint[:12]}), the baseline "
                f"{base_label} on {base.dataset}/{base.split} ({base.dataset_fingerprint[:12]}); compare runs on one dataset split"
            )
    names = list(metrics) if metrics else [m for m in base.metrics if all(m in r.metrics for r in reports)]
    if not names:
        raise CompareError(f"the reports share no metric; the baseline has {', '.join(base.metrics)}")
    result = Comparison(baseline=base_label, systems=[l for i, l in enumerate(labels) if i != baseline],
                        dataset=base.dataset, split=base.split, alpha=alpha, permutations=permutations, seed=seed)
    b_stage = _stage(base, stage, base_label)
    for i, (r, label) in enumerate(zip(reports, labels)):
        if i == baseline:
            continue
        s_stage = _stage(r, stage, label)
        common = [q for q in base.per_query.qids if q in set(r.per_query.qids)]
        if len(common) != len(base.per_query.qids) or len(common) != len(r.per_query.qids):
            warnings.append(f"{label}: {len(common)} queries in common with the baseline; only those are paired")
        if not common:
            raise CompareError(f"{label} and the baseline {base_label} have no query in common")
        for metric in names:
            why = _not_applicable(base, b_stage, metric, base_label) or _not_applicable(r, s_stage, metric, label)
            if why:
                result.skipped.append(SkippedMetric(system=label, stage=s_stage, metric=metric, reason=why))
                continue
            bv, sv = _values(base, b_stage, metric, common, base_label), _values(r, s_stage, metric, common, label)
            result.metrics.append(
                MetricComparison(
                    system=label, stage=s_stage, metric=metric, baseline_mean=float(bv.mean()),
                    system_mean=float(sv.mean()), delta=float(sv.mean() - bv.mean()), n=len(common),
                    p_t=paired_t_test(sv, bv), p_rand=randomisation_test(sv, bv, permutations, seed),
                    cohen_d=cohen_d(sv, bv),
                )
            )
        result.latency += _latency(base, r, b_stage, s_stage, label)
    if not result.metrics:
        reasons = "; ".join(dict.fromkeys(s.reason for s in result.skipped))
        raise CompareError(f"nothing to compare: {reasons}; pick a metric that applies (--metrics) or another --stage")
    for p_field, holm_field in (("p_t", "p_t_holm"), ("p_rand", "p_rand_holm")):
        adjusted = holm([getattr(c, p_field) for c in result.metrics])
        for c, p in zip(result.metrics, adjusted):
            setattr(c, holm_field, float(p))
    for c in result.metrics:
        c.significant = c.p_rand_holm < alpha
    result.warnings = warnings
    return result


def _stage(report: Report, stage: str | None, label: str) -> str:
    name = stage or report.output
    if name not in report.stages:
        raise CompareError(f"{label} has no stage {name!r}; its stages: {', '.join(report.stages)}")
    return name


def _not_applicable(report: Report, stage: str, metric: str, label: str) -> str | None:
    """Why `metric` does not apply to `stage` of `report` (null in report.json), or None when it does."""
    if metric not in report.stages[stage].not_applicable:
        return None
    limit = report.stages[stage].limit
    return f"{metric} does not apply to {label}'s stage {stage!r}, which returns at most {limit} documents"


def _values(report: Report, stage: str, metric: str, qids: list[str], label: str) -> np.ndarray:
    per_stage = report.per_query.metrics.get(stage, {})
    if metric not in per_stage:
        raise CompareError(f"{label} has no per-query {metric!r} for stage {stage!r}; re-run eval with --metrics {metric}")
    pos = {q: i for i, q in enumerate(report.per_query.qids)}
    values = np.asarray(per_stage[metric], np.float64)
    return values[[pos[q] for q in qids]]


def _latency(base: Report, system: Report, b_stage: str, s_stage: str, label: str) -> list[LatencyDelta]:
    out = []
    pairs = [(base.stages[b_stage].latency_ms, system.stages[s_stage].latency_ms, s_stage),
             (base.end_to_end.latency_ms, system.end_to_end.latency_ms, "end to end")]
    for b, s, name in pairs:
        out.append(LatencyDelta(
            system=label, stage=name,
            baseline_p50=b.p50 if b else None, system_p50=s.p50 if s else None,
            baseline_p95=b.p95 if b else None, system_p95=s.p95 if s else None,
        ))
    return out


def to_csv(result: Comparison) -> str:
    lines = ["system,stage,metric,baseline,value,delta,n,p_t,p_rand,p_t_holm,p_rand_holm,cohen_d,significant"]
    for c in result.metrics:
        d = "" if c.cohen_d is None else f"{c.cohen_d:.6g}"
        lines.append(
            f"{c.system},{c.stage},{c.metric},{c.baseline_mean:.6g},{c.system_mean:.6g},{c.delta:.6g},{c.n},"
            f"{c.p_t:.6g},{c.p_rand:.6g},{c.p_t_holm:.6g},{c.p_rand_holm:.6g},{d},{int(c.significant)}"
        )
    return "\n".join(lines) + "\n"
