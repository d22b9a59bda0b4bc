"""Paired statistics of two systems' per-query values, each checked against scipy or statsmodels
(tests/test_compare.py): what `stagegraph.evaluation.compare` reports for every pair and measure.

* `paired_t_test` (scipy's `ttest_rel`, with the no-variance cases scipy leaves NaN), `randomisation_test`
  (two-sided sign flips, seeded), `cohen_d` (d_z);
* `holm`, `benjamini_hochberg`: p-values corrected over a family;
* `bootstrap_ci`: the percentile interval of the mean difference (scipy's `bootstrap`, seeded);
* `detectable_effect`, `minimum_detectable_difference`: the smallest effect a two-sided paired t-test
  detects with `power` at `alpha` over n queries (noncentral t, solved by brentq).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

#: the power at which the minimum detectable difference is computed
POWER = 0.8


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


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(pvalues, np.float64)
    return p if p.size == 0 else stats.false_discovery_control(p, method="bh")


def bootstrap_ci(system: np.ndarray, baseline: np.ndarray, resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Paired bootstrap confidence interval of the mean difference (percentile method), seeded."""
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    if d.size < 2:
        return None
    if np.ptp(d) == 0.0:
        return float(d[0]), float(d[0])  # every resample has the same mean
    result = stats.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                             vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def detectable_effect(n: int, alpha: float = 0.05, power: float = POWER) -> float | None:
    """The smallest standardised effect d_z a two-sided paired t-test over `n` queries detects with
    probability `power` at level `alpha` (the same figure as statsmodels' `TTestPower().solve_power`)."""
    if n < 2:
        return None
    from scipy import optimize

    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:
        shift = effect * np.sqrt(n)
        upper = float(stats.nct.sf(critical, df, shift))
        lower = float(stats.nct.cdf(-critical, df, shift))  # the far tail: NaN in scipy when it underflows
        upper = upper if np.isfinite(upper) else float(shift > critical)
        return upper + (lower if np.isfinite(lower) else 0.0) - power

    high = 1.0
    while shortfall(high) < 0:  # bracket the root; power grows with the effect
        high *= 2
    return float(optimize.brentq(shortfall, 1e-12, high, xtol=1e-14, rtol=1e-14, maxiter=500))


def minimum_detectable_difference(system: np.ndarray, baseline: np.ndarray, alpha: float = 0.05,
                                  power: float = POWER) -> float | None:
    """`detectable_effect` in the measure's own units: times the standard deviation of the differences."""
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    effect = detectable_effect(d.size, alpha, power)
    return None if effect is None else effect * float(d.std(ddof=1))


def cohen_d(system: np.ndarray, baseline: np.ndarray) -> float | None:
    d = np.asarray(system, np.float64) - np.asarray(baseline, np.float64)
    if d.size < 2:
        return None
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 0.0 if abs(d.mean()) <= 1e-12 else None  # a constant non-zero shift has no finite d
    return float(d.mean() / sd)
