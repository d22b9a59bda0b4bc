"""`MetricsStage` (`type: metrics`): a pipeline's own declaration of the metrics it is scored with.

`MetricsStage` (`type: metrics`) lets a YAML pipeline say which metrics to report. It passes its
input through unchanged; `stagegraph.evaluation.evaluate` reads its settings and scores every stage's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import field_validator

from stagegraph.corpora.types import Queries
from stagegraph.evaluation.measures import DEFAULT_METRICS, Metric, parse_metrics
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.registry import register
from stagegraph.pipeline.stage import Arity, StageConfig
from stagegraph.stages.base import StageBase


class MetricsConfig(StageConfig):
    metrics: tuple[str, ...] = DEFAULT_METRICS

    @field_validator("metrics", mode="before")
    @classmethod
    def _parse(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        return tuple(str(m) for m in parse_metrics(value))  # type: ignore[arg-type]


@register
class MetricsStage(StageBase):
    """Declares the metrics a pipeline is scored with; passes its single input through unchanged.

    Put it last in a YAML pipeline (`- {type: metrics, metrics: [recall@100, ndcg@10]}`);
    `stagegraph.evaluation.evaluate` then scores the output of every other stage with these metrics.
    """

    type_name = "metrics"
    Config = MetricsConfig
    arity = Arity.ONE

    def __init__(self, metrics: Iterable[str] | str = DEFAULT_METRICS, name: str | None = None):
        self.config = self.make_config(name=name, metrics=metrics)

    @classmethod
    def from_config(cls, config: MetricsConfig) -> MetricsStage:
        return cls._of_config(config)

    @property
    def metrics(self) -> list[Metric]:
        return parse_metrics(self.config.metrics)

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        return list(inputs[0])
