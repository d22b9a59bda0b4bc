"""Comparing pipelines: for every pair of systems and every measure, the difference, how sure we are
of it, how big it is, and what these queries could have detected.

Input: saved reports (`report.json`) of several pipelines on the same dataset and split. The pairs
compared are every pair of reports (in the order given: the earlier one is the pair's reference), or,
with a `baseline`, each report against the baseline. For each pair and measure the per-query values
of the compared stage (by default each report's output stage) are paired by query id, and we report (the statistics: `stagegraph.evaluation.statistics`):

* the means and the mean difference (system - reference);
* a paired bootstrap 95% confidence interval of the mean difference (percentile method, `scipy.stats.
  bootstrap` over the per-query differences, `bootstrap` resamples from a seeded generator: the same
  inputs give the same interval);
* the effect size, Cohen's d_z = mean difference / standard deviation of the differences;
* p-values of a paired t-test (`scipy.stats.ttest_rel`, two-sided) and a paired randomisation test
  (two-sided, sign flips of the per-query differences, `permutations` draws from a generator seeded
  per pair, so a pair's raw p-value never depends on which other reports are in the call;
  p = (hits + 1) / (permutations + 1));
* both p-values corrected over the **family** of every (pair, measure) compared in this call, by
  Holm's step-down method (family-wise error) and by Benjamini-Hochberg (false discovery rate,
  `scipy.stats.false_discovery_control`); `significant` = Holm-corrected randomisation p < alpha.
  Adding a report adds pairs to the family: raw p-values stay, corrected ones grow;
* the minimum detectable difference: the smallest mean difference a two-sided paired t-test at
  `alpha` would detect with 80% power over this many queries, at the observed spread of the
  differences (`mdd`; noncentral t, solved with `scipy.optimize.brentq`);
* the latency of the compared stage and end to end (P50, P95), each side marked when it was not
  measured (a stage read from the cache has no latency; an end-to-end time that covers other stages
  on one side than on the other is not set against it).

A metric that does not apply to the compared stage of either report (null in `report.json`: a
reranker that keeps 10 has no recall@100) is not compared: it is listed under `skipped` with the
reason, and left out of the family. When nothing is left to compare, that is an error. A compared
stage whose Judged@10 is below 0.9 gets a warning: its measures count unjudged documents as not
relevant, so they are lower bounds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from stagegraph.errors import InputError
from stagegraph.evaluation.measures import Metric, label_of
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.statistics import (
    POWER,
    benjamini_hochberg,
    bootstrap_ci,
    cohen_d,
    holm,
    minimum_detectable_difference,
    paired_t_test,
    randomisation_test,
)

#: a compared stage below this Judged@10 gets a warning: its measures are lower bounds
JUDGED_WARNING = 0.9


class CompareError(InputError):
    """Reports that cannot be compared (another dataset, no common queries, unknown stage)."""


class MetricComparison(BaseModel):
    """One measure of one pair: `baseline` is the pair's reference (the baseline, or the earlier report)."""

    baseline: str = ""
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
    p_t_bh: float = 1.0
    p_rand_bh: float = 1.0
    cohen_d: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    mdd: float | None = None
    significant: bool = False

    @property
    def measure(self) -> str:
        """The ir_measures name (`nDCG@10`), as reports print it."""
        return label_of(self.metric)


class SkippedMetric(BaseModel):
    """A (system, metric) pair that was not compared, and why."""

    system: str
    stage: str
    metric: str
    reason: str


class LatencyDelta(BaseModel):
    baseline: str = ""
    system: str
    stage: str  # a stage name, or "end to end"
    baseline_p50: float | None
    system_p50: float | None
    baseline_p95: float | None
    system_p95: float | None
    #: why a side has no figure, or why the two are not set against each other (None: both measured alike)
    note: str | None = None

    @property
    def comparable(self) -> bool:
        return self.note is None

    @property
    def delta_p50(self) -> float | None:
        if not self.comparable or self.baseline_p50 is None or self.system_p50 is None:
            return None
        return self.system_p50 - self.baseline_p50

    @property
    def delta_p95(self) -> float | None:
        if not self.comparable or self.baseline_p95 is None or self.system_p95 is None:
            return None
        return self.system_p95 - self.baseline_p95


class Family(BaseModel):
    """What one correction covers: every (pair, measure) compared in this call."""

    pairs: list[tuple[str, str]] = Field(default_factory=list)
    measures: list[str] = Field(default_factory=list)
    size: int = 0
    corrections: list[str] = Field(default_factory=lambda: ["holm", "benjamini-hochberg"])

    def describe(self) -> str:
        return (f"{self.size} comparisons ({len(self.pairs)} pair{'s' if len(self.pairs) != 1 else ''} x "
                f"{len(self.measures)} measure{'s' if len(self.measures) != 1 else ''})")


class Comparison(BaseModel):
    baseline: str | None  # None: every pair of systems was compared
    systems: list[str]
    dataset: str
    split: str
    alpha: float
    permutations: int
    seed: int
    bootstrap: int = 10_000
    power: float = POWER
    family: Family = Field(default_factory=Family)
    metrics: list[MetricComparison] = Field(default_factory=list)
    latency: list[LatencyDelta] = Field(default_factory=list)
    skipped: list[SkippedMetric] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


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
    baseline: int | None = None,
    stage: str | None = None,
    metrics: Sequence[str] | None = None,
    permutations: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
    bootstrap: int = 10_000,
) -> Comparison:
    """Compare every pair of `reports` (or each with `reports[baseline]`); see the module docstring."""
    if len(reports) < 2:
        raise CompareError("compare needs at least two reports")
    labels = _unique(list(labels) if labels else [f"{r.dataset}:{r.output}" for r in reports])
    first = reports[0 if baseline is None else baseline]
    for r, label in zip(reports, labels):
        if (r.dataset_fingerprint, r.split) != (first.dataset_fingerprint, first.split):
            raise CompareError(
                f"{label} was evaluated on {r.dataset}/{r.split} (corpus {r.dataset_fingerprint[:12]}), "
                f"{labels[reports.index(first)]} on {first.dataset}/{first.split} ({first.dataset_fingerprint[:12]}); "
                "compare runs on one dataset split"
            )
    names = [_canonical(m) for m in metrics] if metrics else [
        m for m in first.metrics if all(m in r.metrics for r in reports)]
    if not names:
        raise CompareError(f"the reports share no metric; {labels[0]} has {', '.join(reports[0].metrics)}")
    if baseline is None:
        pairs = [(i, j) for i in range(len(reports)) for j in range(i + 1, len(reports))]
    else:
        pairs = [(baseline, j) for j in range(len(reports)) if j != baseline]
    result = Comparison(baseline=None if baseline is None else labels[baseline],
                        systems=[l for i, l in enumerate(labels) if i != baseline], dataset=first.dataset,
                        split=first.split, alpha=alpha, permutations=permutations, seed=seed, bootstrap=bootstrap)
    warnings: list[str] = []
    compared = {i: _stage(r, stage, label) for i, (r, label) in enumerate(zip(reports, labels))}
    for i, j in pairs:
        ref, sys_, ref_label, sys_label = reports[i], reports[j], labels[i], labels[j]
        r_stage, s_stage = compared[i], compared[j]
        common = [q for q in ref.per_query.qids if q in set(sys_.per_query.qids)]
        if len(common) != len(ref.per_query.qids) or len(common) != len(sys_.per_query.qids):
            warnings.append(f"{sys_label} vs {ref_label}: {len(common)} queries in common; only those are paired")
        if not common:
            raise CompareError(f"{sys_label} and {ref_label} have no query in common")
        for metric in names:
            why = _not_applicable(ref, r_stage, metric, ref_label) or _not_applicable(sys_, s_stage, metric, sys_label)
            if why:
                result.skipped.append(SkippedMetric(system=sys_label, stage=s_stage, metric=metric, reason=why))
                continue
            bv, sv = _values(ref, r_stage, metric, common, ref_label), _values(sys_, s_stage, metric, common, sys_label)
            ci = bootstrap_ci(sv, bv, bootstrap, seed)
            result.metrics.append(
                MetricComparison(
                    baseline=ref_label, system=sys_label, stage=s_stage, metric=metric, baseline_mean=float(bv.mean()),
                    system_mean=float(sv.mean()), delta=float(sv.mean() - bv.mean()), n=len(common),
                    p_t=paired_t_test(sv, bv), p_rand=randomisation_test(sv, bv, permutations, seed),
                    cohen_d=cohen_d(sv, bv), ci_low=None if ci is None else ci[0], ci_high=None if ci is None else ci[1],
                    mdd=minimum_detectable_difference(sv, bv, alpha),
                )
            )
        result.latency += _latency(ref, sys_, r_stage, s_stage, ref_label, sys_label)
    if not result.metrics:
        reasons = "; ".join(dict.fromkeys(s.reason for s in result.skipped))
        raise CompareError(f"nothing to compare: {reasons}; pick a metric that applies (--metrics) or another --stage")
    for p_field in ("p_t", "p_rand"):
        raw = [getattr(c, p_field) for c in result.metrics]
        for c, p_holm, p_bh in zip(result.metrics, holm(raw), benjamini_hochberg(raw)):
            setattr(c, f"{p_field}_holm", float(p_holm))
            setattr(c, f"{p_field}_bh", float(p_bh))
    for c in result.metrics:
        c.significant = c.p_rand_holm < alpha
    result.family = Family(pairs=list(dict.fromkeys((c.baseline, c.system) for c in result.metrics)),
                           measures=list(dict.fromkeys(c.metric for c in result.metrics)), size=len(result.metrics))
    warnings += _judged_warnings(reports, labels, compared)
    result.warnings = warnings
    return result


def _canonical(metric: str) -> str:
    """The name reports key a metric by (`nDCG@10` -> `ndcg@10`); a string that is no metric, as it is."""
    try:
        return str(Metric.parse(metric))
    except ValueError:
        return metric


def _judged_warnings(reports: Sequence[Report], labels: Sequence[str], compared: dict[int, str]) -> list[str]:
    out = []
    for i, (r, label) in enumerate(zip(reports, labels)):
        judged = r.stages[compared[i]].metrics.get("judged@10")
        if judged is not None and judged < JUDGED_WARNING:
            out.append(f"{label}'s stage {compared[i]!r} has Judged@10 {judged:.2f} (< {JUDGED_WARNING}): unjudged "
                       "documents count as not relevant, so its measures are lower bounds")
    return out


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
    shown = label_of(metric)
    return f"{shown} does not apply to {label}'s stage {stage!r}, which returns at most {limit} documents"


def _values(report: Report, stage: str, metric: str, qids: list[str], label: str) -> np.ndarray:
    per_stage = report.per_query.metrics.get(stage, {})
    if metric not in per_stage:
        raise CompareError(f"{label} has no per-query {metric!r} for stage {stage!r}; re-run eval with --metrics {metric}")
    pos = {q: i for i, q in enumerate(report.per_query.qids)}
    values = np.asarray(per_stage[metric], np.float64)
    return values[[pos[q] for q in qids]]


def _latency(base: Report, system: Report, b_stage: str, s_stage: str, base_label: str, label: str) -> list[LatencyDelta]:
    """The compared stages' and end-to-end latencies, each pair noted when they are not measured alike."""
    out = []
    for name, b, s in ((s_stage, base.stages[b_stage], system.stages[s_stage]), ("end to end", base, system)):
        if name == "end to end":
            b_lat, s_lat = b.end_to_end.latency_ms, s.end_to_end.latency_ms
            b_cover, s_cover = _covered(b), _covered(s)
            note = None if b_cover == s_cover else (
                f"not comparable: {base_label}'s covers {', '.join(b_cover) or 'no stage'}, "
                f"{label}'s {', '.join(s_cover) or 'no stage'} (the others came from the cache)")
        else:
            b_lat, s_lat = b.latency_ms, s.latency_ms
            cached = [lbl for lbl, st in ((base_label, b), (label, s)) if st.cache_hit]
            note = f"not measured: {' and '.join(cached)} read it from the cache" if cached else None
        out.append(LatencyDelta(
            baseline=base_label, system=label, stage=name, note=note,
            baseline_p50=b_lat.p50 if b_lat else None, system_p50=s_lat.p50 if s_lat else None,
            baseline_p95=b_lat.p95 if b_lat else None, system_p95=s_lat.p95 if s_lat else None,
        ))
    return out


def _covered(report: Report) -> list[str]:
    """The stages whose time a report's end-to-end latency includes (those not read from the cache)."""
    if report.end_to_end.includes is not None:
        return list(report.end_to_end.includes)
    return [name for name, stage in report.stages.items() if not stage.cache_hit]


def to_csv(result: Comparison) -> str:
    lines = ["baseline,system,stage,metric,measure,baseline_mean,value,delta,ci_low,ci_high,n,cohen_d,mdd,"
             "p_t,p_rand,p_t_holm,p_rand_holm,p_t_bh,p_rand_bh,significant"]

    def g(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    for c in result.metrics:
        lines.append(
            f"{c.baseline},{c.system},{c.stage},{c.metric},{c.measure},{c.baseline_mean:.6g},{c.system_mean:.6g},"
            f"{c.delta:.6g},{g(c.ci_low)},{g(c.ci_high)},{c.n},{g(c.cohen_d)},{g(c.mdd)},{c.p_t:.6g},{c.p_rand:.6g},"
            f"{c.p_t_holm:.6g},{c.p_rand_holm:.6g},{c.p_t_bh:.6g},{c.p_rand_bh:.6g},{int(c.significant)}"
        )
    return "\n".join(lines) + "\n"


def _rows(result: Comparison) -> tuple[list[str], list[list[str]]]:
    head = ["reference", "system", "measure", "reference mean", "system mean", "difference [95% CI]", "d_z",
            "MDD", "p (t, raw)", "p (t, Holm)", "p (rand., raw)", "p (rand., Holm)", "p (rand., BH)"]
    rows = []
    for c in result.metrics:
        ci = "" if c.ci_low is None else f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
        rows.append([c.baseline, c.system, c.measure, f"{c.baseline_mean:.4f}", f"{c.system_mean:.4f}",
                     f"{c.delta:+.4f}{ci}", "" if c.cohen_d is None else f"{c.cohen_d:+.2f}",
                     "" if c.mdd is None else f"{c.mdd:.4f}", _p(c.p_t), _p(c.p_t_holm), _p(c.p_rand),
                     _p(c.p_rand_holm), _p(c.p_rand_bh)])
    return head, rows


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _caption(result: Comparison) -> str:
    return (f"{result.dataset}/{result.split}, {result.metrics[0].n} queries. Paired t-test and randomisation test "
            f"({result.permutations:,} sign flips, seed {result.seed}); corrected over the family of "
            f"{result.family.describe()} by Holm (family-wise) and Benjamini-Hochberg (false discovery rate). "
            f"95% CI: paired bootstrap ({result.bootstrap:,} resamples, percentile). d_z: mean difference / sd of "
            f"the differences. MDD: the smallest difference a paired t-test at alpha={result.alpha:g} detects with "
            f"{result.power:.0%} power over these queries.")


def to_markdown(result: Comparison) -> str:
    """The comparison as a Markdown table with its caption, ready to paste."""
    head, rows = _rows(result)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + _caption(result) + "\n"


def to_latex(result: Comparison) -> str:
    """The comparison as a LaTeX `table` (booktabs), ready to paste."""
    head, rows = _rows(result)

    def tex(cell: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("<", r"$<$"), ("@", "@")):
            cell = cell.replace(a, b)
        return cell

    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lll" + "r" * (len(head) - 3) + "}",
             r"\toprule", " & ".join(tex(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + tex(_caption(result)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
