"""Retrieval metrics as values, computed the way trec_eval (and ir_measures) computes them.

A metric is parsed from a string and printed back the same way. Both spellings are accepted
everywhere a metric is taken, the ir_measures one and stagegraph's older one, and reports print the
ir_measures names:

    ir_measures:  R@100  nDCG@10  nDCG  RR@10  RR(rel=2)@10  RR  AP  AP@100  P@10  Success@10
                  Judged@10  Bpref  ERR@10
    also read:    recall@100  ndcg@10  mrr@10  map  map@100  p@10  hit@10  recall(rel=2)@10

`(rel=R)` is the binary relevance threshold (a judged grade >= R counts as relevant; default 1).
nDCG and ERR take no threshold: they use the grades themselves (grades <= 0 gain nothing), as
trec_eval's `ndcg_cut` and gdeval do.

Definitions (checked against pytrec_eval, ir_measures' judged provider and gdeval in
tests/test_metrics.py and tests/test_ir_measures.py):

* `R@k`       relevant documents in the top k / all relevant documents of the query;
* `P@k`       relevant documents in the top k / k (trec_eval's `P_k`, even when fewer are ranked);
* `Success@k` 1 when any relevant document is in the top k (trec_eval's `success_k`, a.k.a. hit rate);
* `RR`, `RR@k` 1 / rank of the first relevant document (within the top k), else 0;
* `AP`, `AP@k` sum of precision at each relevant rank (within k) / all relevant documents;
* `nDCG`, `nDCG@k` DCG / ideal DCG with linear gains (the grades) and a log2(rank + 1) discount;
  the ideal ranking is built from every judged document of the query, retrieved or not;
* `Judged@k`  the share of the top min(k, ranked) documents that carry a judgment of any grade
  (ir_measures' definition; an empty ranking scores 0). A low Judged@k means the other measures
  count unjudged documents as not relevant: their values are then lower bounds;
* `Bpref`     trec_eval's bpref: for each judged relevant document retrieved, 1 - (judged
  non-relevant documents ranked above it, at most R) / min(R, N), summed and divided by R; unjudged
  documents are ignored (N = judged non-relevant, grades 0 <= g < rel);
* `ERR@k`     expected reciprocal rank, gdeval's definition: a document of grade g stops the user
  with probability (2^g - 1) / 2^4 (gdeval's maximum grade, 4).

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
    "ndcg": ("optional", "nDCG with graded gains and log2 discount (nDCG@k: cut at k)"),
    "mrr": ("optional", "reciprocal rank of the first relevant document (RR@k: within k)"),
    "map": ("optional", "mean average precision (AP@k: only ranks <= k count)"),
    "p": ("required", "precision at k"),
    "hit": ("required", "1 if any relevant document is in the top k"),
    "judged": ("optional", "share of the top k that is judged (Judged: of the whole ranking)"),
    "bpref": ("refused", "binary preference over judged documents (trec_eval's bpref)"),
    "err": ("required", "expected reciprocal rank at k (gdeval's gains)"),
}
ALIASES = {"r": "recall", "precision": "p", "success": "hit", "hit_rate": "hit", "rr": "mrr", "ap": "map"}
#: ir_measures' name of each metric (what reports print)
IR_MEASURES_NAMES = {"recall": "R", "ndcg": "nDCG", "mrr": "RR", "map": "AP", "p": "P", "hit": "Success",
                     "judged": "Judged", "bpref": "Bpref", "err": "ERR"}
#: metrics whose value does not depend on the grades beyond "judged or not", or on a threshold
_NO_REL = {"ndcg", "judged", "err"}
#: gdeval's largest grade: ERR's stopping probability of a grade g is (2^g - 1) / 2^ERR_MAX_GRADE
ERR_MAX_GRADE = 4
DEFAULT_METRICS: tuple[str, ...] = ("recall@10", "recall@100", "ndcg@10", "mrr@10", "map", "judged@10")

_PATTERN = re.compile(
    r"^\s*(?P<name>[a-z_]+)\s*(?:\(\s*rel\s*=\s*(?P<rel1>-?\d+)\s*\))?\s*"
    r"(?:@\s*(?P<k>\d+))?\s*(?:\(\s*rel\s*=\s*(?P<rel2>-?\d+)\s*\))?\s*$",
    re.IGNORECASE,
)


class MetricError(InputError):
    """A metric string that does not parse; the message lists the valid names."""


def _valid_names() -> str:
    def one(name: str, need: str) -> str:
        shown = IR_MEASURES_NAMES[name]
        return {"required": f"{shown}@k", "optional": f"{shown}, {shown}@k", "refused": shown}[need]

    return ", ".join(one(n, m[0]) for n, m in METRICS.items())


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
        if need == "refused" and self.k is not None:
            raise MetricError(f"metric {IR_MEASURES_NAMES[self.name]!r} takes no cut-off; write {IR_MEASURES_NAMES[self.name]}")
        if self.k is not None and self.k < 1:
            raise MetricError(f"the cut-off of {self.name!r} must be a positive integer, got {self.k}")
        if self.rel < 1:
            raise MetricError(f"the relevance threshold rel must be >= 1, got {self.rel}")
        if self.name in _NO_REL and self.rel != 1:
            shown = IR_MEASURES_NAMES[self.name]
            cut = f"@{self.k}" if self.k is not None else ""
            raise MetricError(
                f"{shown} does not take a relevance threshold (rel={self.rel}): "
                + ("it counts judged documents of any grade" if self.name == "judged"
                   else "it uses the grades themselves as gains, as trec_eval and gdeval do")
                + f". Write {shown}{cut}"
            )

    @classmethod
    def parse(cls, text: str | Metric) -> Metric:
        """`"nDCG@10"` or `"ndcg@10"` -> `Metric("ndcg", 10)`; also `"RR(rel=2)@10"`, `"AP"`, `"Judged@10"`."""
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
        """The ir_measures name, also the column header: `R@100`, `nDCG@10`, `RR@10`, `AP`, `Judged@10`."""
        rel = f"(rel={self.rel})" if self.rel != 1 else ""
        return f"{IR_MEASURES_NAMES[self.name]}{rel}" + (f"@{self.k}" if self.k is not None else "")

    @property
    def depth(self) -> int | None:
        """How many ranks the metric reads (None: the whole ranking)."""
        return self.k

    def compute(self, run: "GradedRun") -> np.ndarray:
        """Per-query values of this metric over `run` (one row per judged query)."""
        g = run.grades if self.k is None else run.grades[:, : self.k]
        all_grades, valid = run.judged_grades, run.judged_valid
        relevant = g >= self.rel
        n_rel = ((all_grades >= self.rel) & valid).sum(axis=1)
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
            ideal = -np.sort(-np.maximum(np.where(valid, all_grades, 0), 0), axis=1)[:, : self.k]
            idcg = (ideal * (1.0 / np.log2(np.arange(2, ideal.shape[1] + 2)))).sum(axis=1)
            return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
        if self.name == "judged":
            shown = np.minimum(run.lengths, g.shape[1])
            judged = run.judged[:, : g.shape[1]].sum(axis=1)
            return np.where(shown > 0, judged / np.maximum(shown, 1), 0.0)
        if self.name == "bpref":
            judged = run.judged
            is_rel = judged & (run.grades >= self.rel)
            is_nonrel = judged & (run.grades >= 0) & (run.grades < self.rel)
            n_nonrel = ((all_grades >= 0) & (all_grades < self.rel) & valid).sum(axis=1)
            above = np.cumsum(is_nonrel, axis=1)  # at a relevant rank this counts only ranks above it
            bound = np.minimum(n_nonrel, n_rel)[:, None].astype(np.float64)
            share = np.minimum(above, n_rel[:, None]) / np.where(bound > 0, bound, 1.0)
            credit = np.where(above > 0, 1.0 - share, 1.0)
            return np.where(n_rel > 0, (credit * is_rel).sum(axis=1) / safe_rel, 0.0)
        if self.name == "err":
            stop = (2.0 ** np.clip(g, 0, None) - 1.0) / 2.0**ERR_MAX_GRADE
            go_on = np.cumprod(1.0 - stop, axis=1)
            reached = np.concatenate([np.ones((g.shape[0], 1)), go_on[:, :-1]], axis=1)
            return (stop * reached / np.arange(1, g.shape[1] + 1)).sum(axis=1)
        raise MetricError(f"no implementation for {self.name!r}")  # pragma: no cover


@dataclass
class GradedRun:
    """A run matched with its judgments, one row per judged query (what every metric reads).

    grades[q, r]: the grade of the document at rank r + 1 (0 when unjudged or past the ranking);
    judged[q, r]: whether that document has a judgment (of any grade); lengths[q]: documents ranked;
    judged_grades[q, j] / judged_valid[q, j]: every judged grade of the query, padded (valid marks
    the real entries), including documents absent from the corpus, as trec_eval counts them."""

    grades: np.ndarray
    judged: np.ndarray
    lengths: np.ndarray
    judged_grades: np.ndarray
    judged_valid: np.ndarray


def label_of(metric: str | Metric) -> str:
    """The ir_measures name of `metric` (`"ndcg@10"` -> `nDCG@10`); a string that is no metric, as it is."""
    try:
        return Metric.parse(metric).label
    except ValueError:
        return str(metric)


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
