"""Latency summaries: per-query nanosecond timings in, P50/P95/P99/mean/max in milliseconds out.

Percentiles use numpy's default linear interpolation over the measured (non-warm-up) queries;
`n` says how many there were, so a P99 over 30 queries can be read for what it is.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel


class LatencySummary(BaseModel):
    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def from_ns(cls, timings_ns: np.ndarray) -> LatencySummary | None:
        values = np.asarray(timings_ns, dtype=np.float64) / 1e6
        if values.size == 0:
            return None
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(
            n=int(values.size),
            p50=float(p50),
            p95=float(p95),
            p99=float(p99),
            mean=float(values.mean()),
            max=float(values.max()),
        )
