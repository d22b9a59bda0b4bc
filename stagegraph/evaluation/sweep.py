"""Parameter sweeps: one setting of one stage over several values, quality against P95 latency.

`sweep(graph, dataset, stage="rerank", param="depth", values=[10, 20, 50, 100])` evaluates the graph
once per value, with the stage rebuilt from its config with that field replaced (validated by the
stage's pydantic `Config`). A stage cache is shared by the runs, so stages upstream of the swept one
are computed once and read back afterwards; the swept stage and everything downstream of it run
every time, and are the ones timed. For each value the sweep records the output stage's metrics,
the swept stage's P50/P95 and the P95 of the *changed path* (per query, the sum of the latencies of
the swept stage and every stage after it), the cost a user pays for the setting.

Files under `out`: `<param>=<value>/` (each full report), `sweep.csv`, `sweep.svg` and `sweep.html`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from stagegraph import atomic
from stagegraph.errors import InputError
from stagegraph.corpora.types import Dataset
from stagegraph.pipeline.cache import StageCache
from stagegraph.evaluation.evaluate import DEFAULT, evaluate
from stagegraph.pipeline.executor import Mode
from stagegraph.pipeline.compose import Pipeline, as_pipeline
from stagegraph.pipeline.graph import Step
from stagegraph.evaluation.report import Report
from stagegraph.evaluation.svg import standalone, xy_plot
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.writer import save_report


class SweepError(InputError):
    """A sweep that cannot run: an unknown stage or field, or a value the stage's config refuses."""


class SweepPoint(BaseModel):
    value: Any
    metrics: dict[str, float | None]  # the output stage's metrics (None: does not apply, see Report)
    stage_metrics: dict[str, float | None]  # the swept stage's own metrics
    stage_p50_ms: float | None = None
    stage_p95_ms: float | None = None
    path_p95_ms: float | None = None  # the swept stage and everything downstream, per query
    throughput_qps: float | None = None
    report: str | None = None  # the directory of this value's full report


class SweepResult(BaseModel):
    dataset: str
    split: str
    mode: str
    stage: str
    param: str
    output: str
    primary: str
    metrics: list[str]
    points: list[SweepPoint] = Field(default_factory=list)

    def to_csv(self) -> str:
        head = [self.param, *self.metrics, *(f"{self.stage}:{m}" for m in self.metrics),
                "stage_p50_ms", "stage_p95_ms", "path_p95_ms", "throughput_qps"]
        lines = [",".join(head)]
        for p in self.points:
            cells = [str(p.value), *(_figure(p.metrics[m], ".6g", "") for m in self.metrics),
                     *(_figure(p.stage_metrics[m], ".6g", "") for m in self.metrics)]
            cells += ["" if v is None else f"{v:.6g}" for v in (p.stage_p50_ms, p.stage_p95_ms, p.path_p95_ms, p.throughput_qps)]
            lines.append(",".join(cells))
        return "\n".join(lines) + "\n"

    def plot_svg(self) -> str:
        points = [(p.path_p95_ms or p.stage_p95_ms or 0.0, p.metrics[self.primary], f"{self.param}={p.value}")
                  for p in self.points if p.metrics[self.primary] is not None]  # n/a: no point to draw
        return xy_plot(
            {f"{self.output} {self.primary}": points},
            f"{self.primary} vs P95 latency, sweeping {self.stage}.{self.param}",
            f"P95 ms of {self.stage} and the stages after it (per query)",
            self.primary,
        )

    def to_html(self) -> str:
        rows = "".join(
            f"<tr><td>{escape(str(p.value))}</td>" + "".join(f"<td>{_figure(p.metrics[m], '.4f', 'n/a')}</td>" for m in self.metrics)
            + "".join(f"<td>{'–' if v is None else f'{v:.3f}'}</td>" for v in (p.stage_p50_ms, p.stage_p95_ms, p.path_p95_ms))
            + "</tr>"
            for p in self.points
        )
        head = "".join(f"<th>{escape(m)}</th>" for m in self.metrics)
        css = ("body{font:14px system-ui,sans-serif;margin:24px auto;max-width:900px}table{border-collapse:collapse}"
               "th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}th{background:#f6f6f6}")
        return (
            f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sweep {escape(self.param)}</title>"
            f"<style>{css}</style></head><body><h1>Sweep of {escape(self.stage)}.{escape(self.param)}</h1>"
            f"<p>{escape(self.dataset)} / {escape(self.split)}, {escape(self.mode)} mode; quality of the output "
            f"stage <b>{escape(self.output)}</b>.</p>{self.plot_svg()}"
            f"<table><thead><tr><th>{escape(self.param)}</th>{head}<th>{escape(self.stage)} P50 ms</th>"
            f"<th>{escape(self.stage)} P95 ms</th><th>path P95 ms</th></tr></thead><tbody>{rows}</tbody></table>"
            "</body></html>\n"
        )

    def save(self, out: str | os.PathLike[str]) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "sweep.csv", self.to_csv())
        atomic.write_text(out / "sweep.svg", standalone(self.plot_svg()))
        atomic.write_text(out / "sweep.html", self.to_html())
        atomic.write_text(out / "sweep.json", self.model_dump_json(indent=2))


def _figure(value: float | None, spec: str, missing: str) -> str:
    """A metric as text; `missing` where it does not apply (None)."""
    return missing if value is None else format(value, spec)


def parse_values(text: str) -> list[Any]:
    """`"10,20,50"` -> [10, 20, 50]; floats, true/false and strings are kept as such."""
    out: list[Any] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low = part.lower()
        if low in ("true", "false"):
            out.append(low == "true")
            continue
        for cast in (int, float):
            try:
                out.append(cast(part))
                break
            except ValueError:
                pass
        else:
            out.append(part)
    if not out:
        raise SweepError("no values to sweep; give a comma-separated list such as 10,20,50,100")
    return out


def with_setting(graph: Pipeline, stage: str, param: str, value: Any) -> Pipeline:
    """A copy of `graph` whose stage `stage` is rebuilt with `param = value` (other stages shared).
    A dotted `param` (`expand.fb_docs`) sets one field of a nested setting the config already has."""
    step = graph.step(stage)
    current = step.stage
    fields = type(current.config).model_fields
    name, _, sub = param.partition(".")
    if name not in fields or name == "name":
        raise SweepError(
            f"stage {stage!r} ({current.type_name}) has no setting {name!r}; its settings: "
            f"{', '.join(f for f in fields if f != 'name')}"
        )
    if sub:
        nested = getattr(current.config, name)
        if not isinstance(nested, BaseModel) or sub not in type(nested).model_fields:
            have = ", ".join(f"{name}.{f}" for f in type(nested).model_fields) if isinstance(nested, BaseModel) else ""
            raise SweepError(f"stage {stage!r} has no setting {param!r}; " + (
                f"its {name!r} settings: {have}" if have else f"set {name!r} in the config first, then sweep its fields"))
        param, value = name, {**nested.model_dump(), sub: value}
    try:
        config = type(current.config)(**{**dict(current.config), param: value})
    except ValidationError as exc:
        raise SweepError(f"{stage}.{param} = {value!r} is refused: {exc.errors()[0]['msg']}") from None
    rebuilt = type(current).from_config(config)
    return Pipeline([Step(s.name, rebuilt if s.name == stage else s.stage, s.inputs, s.cutoff) for s in graph.steps])


class UpstreamOnlyCache:
    """Serves only the steps upstream of the swept stage from `cache`; the swept stage and what follows
    always run, so their latency is measured on every sweep, even a repeated one. Saves go through."""

    def __init__(self, cache: StageCache, serve: set[str]):
        self.cache, self.serve = cache, serve

    @classmethod
    def for_graph(cls, cache: StageCache, graph: Pipeline, stage: str, queries, env: Environment) -> UpstreamOnlyCache:
        from stagegraph.pipeline.executor import step_keys  # the executor's own cache keys, so they always agree

        keys = step_keys(graph.steps, queries, env)
        changed = set(downstream_of(graph, stage))
        return cls(cache, {keys[s.name] for s in graph.steps if s.name not in changed})

    def load(self, key: str):
        return self.cache.load(key) if key in self.serve else None

    def save(self, key: str, rankings) -> None:
        self.cache.save(key, rankings)


def downstream_of(graph: Pipeline, stage: str) -> list[str]:
    """`stage` and every step that reads from it, directly or not, in graph order."""
    changed = {stage}
    for step in graph.steps:
        if any(i in changed for i in step.inputs):
            changed.add(step.name)
    return [s.name for s in graph.steps if s.name in changed]


def sweep(
    graph: Pipeline | object,
    dataset: Dataset,
    stage: str,
    param: str,
    values: Sequence[Any] | str,
    out: str | os.PathLike[str] | None = None,
    metrics: Iterable[str] | None = DEFAULT,
    split: str = "test",
    mode: Mode = "online",
    env: Environment | None = None,
    cache: StageCache | None = None,
    warmup: int = 3,
    progress: bool = True,
    primary: str | None = None,
) -> SweepResult:
    graph = as_pipeline(graph)
    values = parse_values(values) if isinstance(values, str) else list(values)
    try:
        graph.step(stage)
    except KeyError as exc:
        raise SweepError(str(exc.args[0])) from None
    graphs = [with_setting(graph, stage, param, v) for v in values]  # validate every value first
    if cache is None:
        cache_dir = Path(out) / "cache" if out is not None else Path(tempfile.mkdtemp(prefix="stagegraph-sweep-"))
        cache = StageCache(cache_dir)
    env = env or Environment(corpus=dataset.corpus, progress=progress)
    result: SweepResult | None = None
    for value, g in zip(values, graphs):
        upstream = UpstreamOnlyCache.for_graph(cache, g, stage, dataset.split(split)[0], env)
        report = evaluate(g, dataset, split=split, metrics=metrics, mode=mode, env=env, cache=upstream,
                          warmup=warmup, progress=progress)
        if result is None:
            names = report.metrics
            chosen = primary or ("ndcg@10" if "ndcg@10" in names else names[0])
            if chosen not in names:
                raise SweepError(f"primary metric {chosen!r} is not among the metrics computed: {', '.join(names)}")
            result = SweepResult(dataset=dataset.name, split=split, mode=mode, stage=stage, param=param,
                                 output=report.output, primary=chosen, metrics=names)
        report_dir = None
        if out is not None:
            report_dir = Path(out) / f"{param}={value}"
            save_report(report, report_dir)
        result.points.append(_point(report, g, stage, value, report_dir))
    assert result is not None
    if out is not None:
        result.save(out)
    return result


def _point(report: Report, graph: Pipeline, stage: str, value: Any, report_dir: Path | None) -> SweepPoint:
    swept = report.stages[stage]
    path = [n for n in downstream_of(graph, stage) if n in report.stages]
    per_query = [report.per_query.latency_ms.get(n) for n in path]
    path_p95 = None
    if per_query and all(v for v in per_query):
        path_p95 = float(np.percentile(np.sum(np.array(per_query, dtype=np.float64), axis=0), 95))
    lat = swept.latency_ms
    return SweepPoint(
        value=value,
        metrics=report.stages[report.output].metrics,
        stage_metrics=swept.metrics,
        stage_p50_ms=lat.p50 if lat else None,
        stage_p95_ms=lat.p95 if lat else None,
        path_p95_ms=path_p95,
        throughput_qps=swept.throughput_qps,
        report=str(report_dir) if report_dir is not None else None,
    )
