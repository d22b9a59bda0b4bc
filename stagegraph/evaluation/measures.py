"""Retrieval metrics as values, computed the way trec_eval computes them.

A metric is parsed from a string and printed back the same way:

    recall@100   ndcg@10   mrr@10   map   map@100   p@10   hit@10   recall(rel=2)@10

`(rel=R)` is the binary relevance threshold (a judged grade >= R counts as relevant; default 1).
nDCG takes no threshold: the gain of a document is its grade (grades <= 0 gain nothing), as in
trec_eval, whose `ndcg_cut` also ignores `-l`.

Definitions (checked against pytrec_eval in tests/test_metrics.py):

* `recall@k`  relevant documents in the top k / all relevant documents of the query;
* `p@k`       relevant documents in the top k / k (trec_eval's `P_k`, even when fewer are ranked);
* `hit@k`     1 when any relevant document is in the top k (trec_eval's `success_k`, a.k.a. hit rate);
* `mrr@k`     1 / rank of the first relevant document within the top k, else 0;
* `map`, `map@k` sum of precision at each relevant rank (within k) / all relevant documents;
* `ndcg@k`    DCG@k / ideal DCG@k with linear gains (the grades) and a log2(rank + 1) discount; the
  ideal ranking is built from every judged document of the query, retrieved or not.

`stagegraph.evaluation.scoring.score_run` computes them over a whole run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stagegraph.errors import InputError

#: Metric names and what they mean; `k` says whether the cut-off is required, optional or refused.
METRICS: dict[str, tuple[str, str]] = {
    "recall": ("required", "relevant retrieved in the top k / all relevant"),
    "ndcg": ("required", "nDCG with graded gains and log2 discount, cut at k"),
    "mrr": ("required", "reciprocal rank of the first relevant document within k"),
    "map": ("optional", "mean average precision (map@k: only ranks <= k count)"),
    "p": ("required", "precision at k"),
    "hit": ("required", "1 if any relevant document is in the top k"),
}
ALIASES = {"r": "recall", "precision": "p", "success": "hit", "hit_rate": "hit", "rr": "mrr", "ap": "map"}
DEFAULT_METRICS: tuple[str, ...] = ("recall@10", "recall@100", "ndcg@10", "mrr@10", "map")

_PATTERN = re.compile(
    r"^\s*(?P<name>[a-z_]+)\s*(?:\(\s*rel\s*=\s*(?P<rel1>-?\d+)\s*\))?\s*"
    r"(?:@\s*(?P<k>\d+))?\s*(?:\(\s*rel\s*=\s*(?P<rel2>-?\d+)\s*\))?\s*$",
    re.IGNORECASE,
)


class MetricError(InputError):
    """A metric string that does not parse; the message lists the valid names."""


def _valid_names() -> str:
    return ", ".join(f"{n}@k" if m[0] == "required" else f"{n}, {n}@k" for n, m in METRICS.items())


@dataclass(frozen=True, order=True)
class Metric:
    """One metric with its parameters; `str(metric)` is the canonical name (`ndcg@10`)."""

    name: str
    k: int | None = None
    rel: int = 1

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise MetricError(f"unknown metric {self.name!r}; valid metrics: {_valid_names()}")
        need = METRICS[self.name][0]
        if need == "required" and self.k is None:
            raise MetricError(f"metric {self.name!r} needs a cut-off, e.g. {self.name}@10")
        if self.k is not None and self.k < 1:
            raise MetricError(f"the cut-off of {self.name!r} must be a positive integer, got {self.k}")
        if self.rel < 1:
            raise MetricError(f"the relevance threshold rel must be >= 1, got {self.rel}")
        if self.name == "ndcg" and self.rel != 1:
            raise MetricError(
                "ndcg uses the grades themselves as gains, as trec_eval does; a binary threshold "
                f"(rel={self.rel}) does not apply to it. Write ndcg@{self.k}"
            )

    @classmethod
    def parse(cls, text: str | Metric) -> Metric:
        """`"ndcg@10"` -> `Metric("ndcg", 10)`; also `"recall(rel=2)@100"`, `"map"`, `"P@10"`."""
        if isinstance(text, Metric):
            return text
        match = _PATTERN.match(str(text))
        if not match:
            raise MetricError(
                f"cannot read metric {text!r}; write NAME@K or NAME(rel=R)@K. Valid metrics: {_valid_names()}"
            )
        name = match["name"].lower()
        name = ALIASES.get(name, name)
        if match["rel1"] and match["rel2"]:
            raise MetricError(f"metric {text!r} gives rel twice; give it once, e.g. {name}(rel=2)@10")
        rel = int(match["rel1"] or match["rel2"] or 1)
        k = int(match["k"]) if match["k"] is not None else None
        return cls(name, k, rel)

    def __str__(self) -> str:
        rel = f"(rel={self.rel})" if self.rel != 1 else ""
        cut = f"@{self.k}" if self.k is not None else ""
        return f"{self.name}{rel}{cut}"

    @property
    def label(self) -> str:
        """A short column header: `R@100`, `nDCG@10`, `MRR@10`, `MAP`, `P@10`, `Hit@10`."""
        base = {"recall": "R", "ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "p": "P", "hit": "Hit"}[self.name]
        rel = f"(rel={self.rel})" if self.rel != 1 else ""
        return f"{base}{rel}" + (f"@{self.k}" if self.k is not None else "")

    @property
    def depth(self) -> int | None:
        """How many ranks the metric reads (None: the whole ranking)."""
        return self.k

    def compute(self, grades: np.ndarray, judged_grades: np.ndarray) -> np.ndarray:
        """Per-query values from a queries x ranks matrix of grades (0 = unjudged or padding) and a
        queries x judged matrix of every judged grade per query (padded with 0)."""
        g = grades if self.k is None else grades[:, : self.k]
        relevant = g >= self.rel
        n_rel = (judged_grades >= self.rel).sum(axis=1)
        safe_rel = np.maximum(n_rel, 1)
        if self.name == "recall":
            return np.where(n_rel > 0, relevant.sum(axis=1) / safe_rel, 0.0)
        if self.name == "p":
            return relevant.sum(axis=1) / self.k
        if self.name == "hit":
            return relevant.any(axis=1).astype(np.float64)
        if self.name == "mrr":
            first = np.argmax(relevant, axis=1)
            return np.where(relevant.any(axis=1), 1.0 / (first + 1), 0.0)
        if self.name == "map":
            ranks = np.arange(1, g.shape[1] + 1)
            precision = np.cumsum(relevant, axis=1) / ranks
            return np.where(n_rel > 0, (precision * relevant).sum(axis=1) / safe_rel, 0.0)
        if self.name == "ndcg":
            gains = np.maximum(g, 0).astype(np.float64)
            discount = 1.0 / np.log2(np.arange(2, g.shape[1] + 2))
            dcg = (gains * discount).sum(axis=1)
            ideal = -np.sort(-np.maximum(judged_grades, 0), axis=1)[:, : self.k]
            idcg = (ideal * (1.0 / np.log2(np.arange(2, ideal.shape[1] + 2)))).sum(axis=1)
            return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
        raise MetricError(f"no implementation for {self.name!r}")  # pragma: no cover


def parse_metrics(metrics: Iterable[str | Metric] | str) -> list[Metric]:
    """Parse a list (or a comma-separated string) of metrics, keeping order and dropping repeats."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    out: list[Metric] = []
    for m in metrics:
        metric = Metric.parse(m)
        if metric not in out:
            out.append(metric)
    if not out:
        raise MetricError(f"no metrics given; valid metrics: {_valid_names()}")
    return out
