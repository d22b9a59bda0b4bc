"""`Report`: every figure of one evaluation, and how it is saved.

`report.json` is the contract other tools read (`stagegraph compare`, the pinned expectations, CI):

* top level: `dataset`, `split`, `mode`, `config` (the pipeline as `Pipeline.to_config()` gives it),
  `output` (the graph's last stage), `metrics` (their names), `dataset_fingerprint`, `queries`,
  `missing_queries`, `warmup_queries`, `cache_hits`, `end_to_end`, `versions`, `machine`, `created`,
  and `machine_load` (`cpus`, the 1-minute load average `load_start`/`load_end`, this run's own estimated
  share `own_start`/`own_end`, `busy_above`, `busy`: `stagegraph.evaluation.conditions`; null in
  reports written before it was recorded);
* `stages.<name>`: `metrics` (metric string -> mean over the judged queries; `null` for a metric
  listed in `not_applicable`: a stage that returns 10 documents has no recall@100), `latency_ms`
  (`n`, `p50`, `p95`, `p99`, `mean`, `max`; online mode, null on a cache hit), `throughput_qps`,
  `latency_alone_ms` (with `timing: isolated`: the stage run alone, not beside its neighbour branch),
  `queries` (how many it ranked), `missing`, `cache_hit`, `limit` (the most documents it returns)
  and `not_applicable` (metrics reading deeper than `limit`), and for a fusing stage
  `branches.<branch>` (what that branch alone contributed to the pool);
* `loss`: `at` (k), `missing` (relevant documents of judged queries missing from the output's top k)
  and `by` (how many were lost at each step: `never_retrieved`, `filtered`, `cut_by:<stage>`,
  `demoted_by:<stage>`, `beyond_depth:<reranker>`, `not_in_corpus`; the counts sum to `missing`);
  `loss.tsv` beside it lists each (`stagegraph.evaluation.loss`);
* `per_query`: the judged query ids and, per stage, each applicable metric's per-query values (a
  metric that does not apply to a stage has none), plus the per-query latencies (for the paired
  tests of `stagegraph compare` and the HTML plots).

Format 2 made "does not apply" `null`; format 1 wrote the truncated figure there. `Report.load` reads
both, and nulls (and drops the per-query values of) every metric a stage lists as not applicable, so a
reader never meets a number for a metric that does not apply, whoever wrote the file.

A report is plain data; `stagegraph.evaluation.writer.save_report(report, dir)` writes `report.json`,
`per_query.csv`, `report.html` and, when the rankings are at hand (a report fresh from `evaluate`,
not one read back from disk), `runs/<stage>.trec`.
"""

from __future__ import annotations

import csv
import io
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from stagegraph.errors import InputError
from stagegraph.evaluation.conditions import MachineLoad
from stagegraph.evaluation.loss import LossSummary
from stagegraph.hashing import library_versions as versions
from stagegraph.pipeline.timing import LatencySummary
from stagegraph.pipeline.executor import WorkerShare

#: below this many timed queries a percentile is flagged: P99 needs 100 for one query beyond it, P95 20
PERCENTILE_MIN = {"P95": 20, "P99": 100}
FORMAT_VERSION = 2  # 2: a metric that does not apply is null under `metrics`
LIBRARIES = (
    "stagegraph", "numpy", "scipy", "pydantic", "torch", "sentence-transformers", "transformers",
    "faiss-cpu", "rank-bm25", "bm25s", "onnxruntime",
)


class BranchContribution(BaseModel):
    """What one branch of a fusing stage brought to its pool, as means per query."""

    found: float  # pooled documents this branch ranked
    unique: float  # pooled documents only this branch ranked
    unique_relevant: float  # relevant pooled documents only this branch ranked


class StageReport(BaseModel):
    type: str
    inputs: list[str] = Field(default_factory=list)
    cutoff: int | None = None
    queries: int
    #: metric -> mean over the judged queries; None (null) for a metric in `not_applicable`
    metrics: dict[str, float | None]
    missing: int = 0
    latency_ms: LatencySummary | None = None  # as run: parallel branches share the cores
    latency_alone_ms: LatencySummary | None = None  # timing="isolated": the stage alone
    throughput_qps: float | None = None
    cache_hit: bool = False
    wall_ms: float = 0.0
    branches: dict[str, BranchContribution] = Field(default_factory=dict)
    #: the most documents the stage returns per query (its `k` or cut-off), None: unlimited
    limit: int | None = None
    #: metrics whose cut-off reads deeper than `limit`: shown as n/a (truncation is not loss)
    not_applicable: list[str] = Field(default_factory=list)
    #: a chunked collection judged per document: the chunks per retrieved document, on average
    chunks_per_document: float | None = None

    @model_validator(mode="after")
    def _no_figure_where_it_does_not_apply(self) -> StageReport:
        # both ways: listed as not applicable <=> null, so readers need to check only one of them
        for metric in self.not_applicable:
            if metric in self.metrics:
                self.metrics[metric] = None
        self.not_applicable += [m for m, v in self.metrics.items() if v is None and m not in self.not_applicable]
        return self


class EndToEnd(BaseModel):
    latency_ms: LatencySummary | None = None
    #: the stages whose time `latency_ms` includes (those not read from the cache); None in older reports
    includes: list[str] | None = None
    throughput_qps: float | None = None
    wall_ms: float = 0.0


class PerQuery(BaseModel):
    """Per-query values: metrics aligned with `qids`, latencies aligned with `latency_qids`."""

    qids: list[str] = Field(default_factory=list)
    metrics: dict[str, dict[str, list[float]]] = Field(default_factory=dict)  # stage -> metric -> values
    latency_qids: list[str] = Field(default_factory=list)
    latency_ms: dict[str, list[float]] = Field(default_factory=dict)  # stage or "end_to_end" -> values


class Report(BaseModel):
    format_version: int = FORMAT_VERSION
    dataset: str
    split: str
    mode: str
    timing: str = "concurrent"
    #: chunk rankings scored as document rankings by this rule (maxp, firstp, sum), or None
    aggregate: str | None = None
    config: dict[str, Any] | None = None
    output: str
    metrics: list[str]
    dataset_fingerprint: str
    corpus_docs: int = 0
    queries: int
    missing_queries: int = 0
    warmup_queries: int = 0
    cache_hits: int = 0
    end_to_end: EndToEnd = Field(default_factory=EndToEnd)
    #: where the run ran (`local`, `ray`) and, distributed, what each worker did
    executor: str = "local"
    workers: list[WorkerShare] = Field(default_factory=list)
    stages: dict[str, StageReport]
    versions: dict[str, str] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    #: how busy the machine was when the run began and ended; None in older reports
    machine_load: MachineLoad | None = None
    created: str = ""
    per_query: PerQuery = Field(default_factory=PerQuery)
    #: where the relevant documents missing from the output's top k were lost; None in older reports
    loss: LossSummary | None = None

    # Rankings of every stage and the corpus ids, for the TREC run files; not serialised.
    _runs: dict[str, list] = PrivateAttr(default_factory=dict)
    _run_qids: list[str] = PrivateAttr(default_factory=list)
    _corpus: Any = PrivateAttr(default=None)
    _losses: list = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _no_per_query_values_where_it_does_not_apply(self) -> Report:
        for name, stage in self.stages.items():
            values = self.per_query.metrics.get(name, {})
            for metric in stage.not_applicable:
                values.pop(metric, None)
        self.format_version = max(self.format_version, FORMAT_VERSION)  # an older file, now in this shape
        return self

    def attach_runs(self, qids: Sequence[str], runs: dict[str, list], corpus: Any) -> None:
        self._run_qids, self._runs, self._corpus = list(qids), dict(runs), corpus

    def attach_losses(self, losses: list) -> None:
        self._losses = list(losses)

    @property
    def losses(self) -> list:
        """Every `Loss` (query, document, where it was lost) when attached by `evaluate`, else empty."""
        return self._losses

    @property
    def runs(self) -> tuple[list[str], dict[str, list], Any]:
        """(query ids, rankings per stage, corpus) when attached by `evaluate`, else empty."""
        return self._run_qids, self._runs, self._corpus

    # -- access -----------------------------------------------------------------------------------
    def metric(self, stage: str, metric: str) -> float | None:
        """The stage's mean `metric`; None where it does not apply (the stage returns too few documents)."""
        try:
            return self.stages[stage].metrics[metric]
        except KeyError:
            raise KeyError(
                f"the report has no {metric!r} for stage {stage!r}; stages: {', '.join(self.stages)}; "
                f"metrics: {', '.join(self.metrics)}"
            ) from None

    @property
    def timed_queries(self) -> int | None:
        """How many queries the latency percentiles are over (the fewest of any timed stage), None if none."""
        counts = [s.latency_ms.n for s in self.stages.values() if s.latency_ms is not None]
        return min(counts) if counts else None

    def thin_percentiles(self) -> list[str]:
        """The percentiles that rest on too few queries to mean more than "about the slowest" (`PERCENTILE_MIN`)."""
        n = self.timed_queries
        return [] if n is None else [p for p, need in PERCENTILE_MIN.items() if n < need]

    # -- files ------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Report:
        """Read `report.json` (or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        if not path.is_file():
            raise InputError(f"{path}: no report here; `stagegraph eval ... --out DIR` writes DIR/report.json")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            problem = " ".join(str(exc).split())[:300]
            raise InputError(f"{path}: not a stagegraph report.json ({problem}); write one with `stagegraph eval ... --out DIR`") from None

    def per_query_csv(self) -> str:
        """Long format: one row per (stage, query) with every metric and the query's latency."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["stage", "qid", *self.metrics, "latency_ms"])
        lat_pos = {q: i for i, q in enumerate(self.per_query.latency_qids)}
        for stage in self.stages:
            values = self.per_query.metrics.get(stage, {})
            latencies = self.per_query.latency_ms.get(stage)
            for i, qid in enumerate(self.per_query.qids):
                row = [stage, qid] + [f"{values[m][i]:.6g}" if m in values else "" for m in self.metrics]
                j = lat_pos.get(qid)
                row.append(f"{latencies[j]:.6g}" if latencies and j is not None else "")
                writer.writerow(row)
        return buf.getvalue()


def machine_info() -> dict[str, Any]:
    """CPU count, CPU model name (from /proc/cpuinfo where there is one), platform and Python."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": model or "unknown",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    return versions(LIBRARIES, python=True)


def load_reports(paths: Sequence[str | os.PathLike[str]]) -> list[Report]:
    return [Report.load(p) for p in paths]
