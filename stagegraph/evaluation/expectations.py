"""Pinned expectations (in the spirit of Pyserini's 2CR): expected figures kept as data, checked.

Every `configs/expectations/*.yaml` is a list of entries:

```yaml
- id: bm25-scifact-test          # unique across all files
  dataset: scifact               # a folder under the shared datasets, or "sample"
  split: test
  config: configs/bm25.yaml      # a bundled config (stagegraph.configs), else a path
  stage: bm25                    # the stage whose output is scored (default: the graph's output)
  command: stagegraph eval configs/bm25.yaml --dataset ../shared/datasets/scifact --out out/bm25-scifact
  metrics: {ndcg@10: {expected: 0.6789, tolerance: 0.002}}
  cost: fast                     # fast (< 1 min on 2 cores) | slow (minutes)
  mode: batch                    # optional: batch (default, quality only) | online
  notes: free text               # optional
```

`select` keeps the entries whose dataset is present (`available`) and, unless `slow=True` (or
STAGEGRAPH_SLOW=1), whose cost is fast. `check` builds the graph from the config, evaluates it
(without the stage cache, so a changed stage can never pass on an old result) and compares each
metric with its expected value: |measured - expected| <= tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stagegraph.errors import InputError
from stagegraph.evaluation.measures import Metric

from stagegraph.configs import EXPECTATIONS_DIR, bundled


class ExpectationError(InputError):
    """An expectations file that cannot be read; the message names the file, the entry and the field."""


class Pinned(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected: float
    tolerance: float = Field(ge=0)


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    dataset: str
    split: str = "test"
    config: str
    stage: str | None = None
    command: str
    metrics: dict[str, Pinned]
    cost: Literal["fast", "slow"] = "fast"
    mode: Literal["batch", "online"] = "batch"
    notes: str | None = None
    source: str = Field(default="", exclude=True)  # the file it came from

    @field_validator("metrics")
    @classmethod
    def _canonical(cls, value: dict[str, Pinned]) -> dict[str, Pinned]:
        if not value:
            raise ValueError("give at least one metric, e.g. {ndcg@10: {expected: 0.5, tolerance: 0.002}}")
        return {str(Metric.parse(name)): pinned for name, pinned in value.items()}

    def config_path(self) -> Path:
        """An absolute path as it is; else the bundled config of that name; else relative to the cwd."""
        path = Path(self.config)
        if path.is_absolute():
            return path
        return bundled(self.config) or path.resolve()


class Outcome(BaseModel):
    """The result of checking one expectation."""

    id: str
    dataset: str
    status: Literal["passed", "failed", "skipped", "error", "listed"]
    reason: str = ""
    measured: dict[str, float | None] = Field(default_factory=dict)  # None: the metric does not apply
    failures: list[str] = Field(default_factory=list)


def load_file(path: Path) -> list[Expectation]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExpectationError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ExpectationError(f"{path}: an expectations file is a YAML list of entries (`- id: ...`)")
    out = []
    for i, entry in enumerate(data, start=1):
        where = f"{path}: entry {i}" + (f" ({entry.get('id')})" if isinstance(entry, dict) and entry.get("id") else "")
        if not isinstance(entry, dict):
            raise ExpectationError(f"{where}: each entry is a mapping with id, dataset, config, metrics, ...")
        try:
            out.append(Expectation(**entry, source=str(path)))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ExpectationError(f"{where}: {problems}") from None
    return out


def load_expectations(directory: Path | str = EXPECTATIONS_DIR) -> list[Expectation]:
    """Every entry of every `*.yaml` under `directory`; ids must be unique across files."""
    directory = Path(directory)
    entries: list[Expectation] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        for entry in load_file(path):
            if entry.id in seen:
                raise ExpectationError(f"{path}: id {entry.id!r} is already used in {seen[entry.id]}; ids must be unique")
            seen[entry.id] = str(path)
            entries.append(entry)
    return entries


def dataset_available(name: str) -> bool:
    """Whether `name` can be loaded here without a download: the bundled sample or a local folder."""
    try:
        from stagegraph.corpora.registry import SAMPLE_DIR, SAMPLE_NAME, dataset_dirs
    except ImportError:
        return False
    if name == SAMPLE_NAME:
        return (SAMPLE_DIR / "corpus.jsonl").is_file()
    return any((folder / name).is_dir() for folder in dataset_dirs())


def slow_enabled() -> bool:
    return os.environ.get("STAGEGRAPH_SLOW", "").strip().lower() in ("1", "true", "yes")


def skip_reason(entry: Expectation, slow: bool | None = None,
                available: Callable[[str], bool] = dataset_available) -> str | None:
    """Why `entry` is not run here, or None when it is."""
    slow = slow_enabled() if slow is None else slow
    if not available(entry.dataset):
        return f"dataset {entry.dataset!r} is not present (set STAGEGRAPH_DATASETS or place it under shared/datasets)"
    if entry.cost == "slow" and not slow:
        return "cost: slow (set STAGEGRAPH_SLOW=1 to run it)"
    return None


def select(entries: Iterable[Expectation], slow: bool | None = None,
           available: Callable[[str], bool] = dataset_available) -> list[Expectation]:
    return [e for e in entries if skip_reason(e, slow, available) is None]


def _default_graph_loader(path: Path) -> Any:
    from stagegraph.pipeline.compose import Pipeline

    return Pipeline.from_yaml(path)


def _default_dataset_loader(name: str) -> Any:
    from stagegraph.corpora.registry import load_dataset

    return load_dataset(name, progress=False)


def check(
    entry: Expectation,
    *,
    work_dir: Path | str | None = None,
    graph_loader: Callable[[Path], Any] = _default_graph_loader,
    dataset_loader: Callable[[str], Any] = _default_dataset_loader,
    progress: bool = False,
) -> Outcome:
    """Evaluate `entry`'s pipeline on its dataset and compare every pinned metric."""
    from stagegraph.evaluation.evaluate import evaluate
    from stagegraph.pipeline.stage import Environment

    graph = graph_loader(entry.config_path())
    dataset = dataset_loader(entry.dataset)
    work = Path(work_dir or os.environ.get("STAGEGRAPH_HOME") or ".stagegraph")
    env = Environment(corpus=dataset.corpus, work_dir=work, progress=progress)
    report = evaluate(graph, dataset, split=entry.split, metrics=list(entry.metrics), mode=entry.mode,
                      env=env, cache=None, warmup=0, progress=progress)
    stage = entry.stage or report.output
    if stage not in report.stages:
        return Outcome(id=entry.id, dataset=entry.dataset, status="error",
                       reason=f"no stage {stage!r} in {entry.config}; stages: {', '.join(report.stages)}")
    measured = {m: report.stages[stage].metrics[m] for m in entry.metrics}
    limit = report.stages[stage].limit
    failures = [
        f"{m}: does not apply to stage {stage!r}, which returns at most {limit} documents; pin a metric it can reach"
        if measured[m] is None else
        f"{m}: measured {measured[m]:.4f}, expected {p.expected:.4f} ± {p.tolerance:g} "
        f"(off by {measured[m] - p.expected:+.4f})"
        for m, p in entry.metrics.items()
        if measured[m] is None or abs(measured[m] - p.expected) > p.tolerance + 1e-12
    ]
    return Outcome(id=entry.id, dataset=entry.dataset, status="failed" if failures else "passed",
                   measured=measured, failures=failures)
