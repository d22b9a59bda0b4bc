"""`backend: auto`: the fastest numeric backend whose quality matches fp32's, chosen on evidence.

`train-reranker` writes a small calibration set beside the model (`stagegraph_calibration.json`,
`CalibrationSet`): a few held-out training queries, each with the texts of its first-stage top
candidates, their upstream scores and their judged grades. At warm-up, a stage with `backend: auto`
runs `choose_backend`: every backend this CPU supports (`stagegraph.stages.rerank.cpu`) scores the
calibration queries one query at a time, taking turns query by query so that load from other
processes falls on all of them alike; each gets nDCG@10 of the stage's final order (its blend
included), and the fastest whose nDCG@10 is at most `tolerance` below torch fp32's is chosen.
The decision (`BackendChoice`, with every trial and the reason) is the stage's `backend_choice`;
the stage caches it per model, settings, CPU and library versions, so warm-up measures once.

A model without a calibration set (one from the hub) keeps torch fp32, and the reason says so.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stagegraph.stages.rerank.blend import BlendSpec, blend_scores

CALIBRATION_FILE = "stagegraph_calibration.json"
TOLERANCE = 0.005
#: The concrete backends `auto` chooses among, the reference first.
CANDIDATES = ("torch", "torch-bf16", "onnx", "onnx-int8")


class CalibrationQuery(BaseModel):
    text: str
    docs: list[str]  # the first stage's top candidates, as the stage scores them (title + text)
    upstream: list[float]  # their first-stage scores, best first
    grades: list[int]  # their judged grades (0: not judged relevant)
    judged: list[int]  # every positive grade judged for the query (the ideal DCG), retrieved or not


class CalibrationSet(BaseModel):
    format_version: int = 1
    source: str = ""  # dataset and split the queries come from
    depth: int = 0
    queries: list[CalibrationQuery] = Field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(len(q.docs) for q in self.queries)


def ndcg_at(grades_in_order: Sequence[int], judged: Sequence[int], k: int = 10) -> float:
    """nDCG@k with linear gains and a log2(rank + 1) discount, the ideal from every judged grade
    (the definition of `stagegraph.evaluation.measures`, for one query)."""
    gains = np.maximum(np.asarray(list(grades_in_order)[:k], dtype=np.float64), 0.0)
    ideal = np.sort(np.maximum(np.asarray(list(judged), dtype=np.float64), 0.0))[::-1][:k]
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    idcg = float((ideal * discount[: len(ideal)]).sum())
    return float((gains * discount[: len(gains)]).sum()) / idcg if idcg > 0 else 0.0


def final_ndcg(query: CalibrationQuery, model_scores: np.ndarray, blend: BlendSpec, k: int = 10) -> float:
    """nDCG@k of the order the stage gives one calibration query's candidates with these model scores."""
    final = blend_scores(model_scores, np.asarray(query.upstream, dtype=np.float32), blend)
    order = np.lexsort((np.arange(len(final)), -final))
    return ndcg_at([query.grades[i] for i in order], query.judged, k)


def save_calibration(directory: str | Path, calibration: CalibrationSet) -> Path:
    path = Path(directory) / CALIBRATION_FILE
    path.write_text(calibration.model_dump_json(), encoding="utf-8")
    return path


def load_calibration(model_dir: Path | None) -> CalibrationSet | None:
    """The calibration set beside a model directory, or None when it has none (or an unreadable one)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return CalibrationSet.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


class BackendTrial(BaseModel):
    backend: str
    tried: bool
    reason: str  # why it was (not) tried, or why it failed
    ndcg: float | None = None
    delta: float | None = None  # nDCG@10 minus torch fp32's
    ms_per_query: float | None = None  # mean time to score one calibration query's candidates
    within_tolerance: bool | None = None


class BackendChoice(BaseModel):
    """What `backend: auto` picked at warm-up, and why."""

    model_config = ConfigDict(extra="forbid")

    chosen: str
    reason: str
    tolerance: float = TOLERANCE
    cpu: str = ""
    calibration_queries: int = 0
    calibration_pairs: int = 0
    trials: list[BackendTrial] = Field(default_factory=list)
    cached: bool = False  # read back from an earlier warm-up on this machine

    def line(self) -> str:
        """One line for a console or a log."""
        tried = [t for t in self.trials if t.tried and t.ms_per_query is not None]
        table = "; ".join(
            f"{t.backend} {t.ms_per_query:.0f} ms/query, nDCG@10 {t.ndcg:.4f} ({t.delta:+.4f})" for t in tried
        )
        skipped = "; ".join(f"{t.backend} not tried: {t.reason}" for t in self.trials if not t.tried)
        parts = [f"backend auto picked {self.chosen}: {self.reason}"]
        if table:
            parts.append(f"calibration ({self.calibration_queries} held-out queries, {self.calibration_pairs} pairs): {table}")
        if skipped:
            parts.append(skipped)
        return ". ".join(parts)


def choose_backend(
    build: Callable[[str], Any],
    supported: Sequence[tuple[str, bool, str]],
    calibration: CalibrationSet,
    blend: BlendSpec,
    *,
    tolerance: float = TOLERANCE,
    cpu: str = "",
) -> tuple[BackendChoice, dict[str, Any]]:
    """Try each supported backend on the calibration set; return the choice and the scorers built.

    `supported` lists (backend, may try, why) with torch fp32 first; `build(backend)` returns a
    scorer (`.score(queries, docs)`) or raises.
    """
    trials: dict[str, BackendTrial] = {}
    scorers: dict[str, Any] = {}
    for backend, ok, why in supported:
        if not ok:
            trials[backend] = BackendTrial(backend=backend, tried=False, reason=why)
            continue
        try:
            scorers[backend] = build(backend)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            trials[backend] = BackendTrial(backend=backend, tried=False, reason=f"could not load: {' '.join(str(exc).split())[:160]}")
            continue
        trials[backend] = BackendTrial(backend=backend, tried=True, reason=why)
    names = list(scorers)
    queries = calibration.queries
    elapsed = {b: 0.0 for b in names}
    ndcgs: dict[str, list[float]] = {b: [] for b in names}
    if queries:  # one untimed pass of the first query: lazy initialisation is not a backend's speed
        for b in names:
            scorers[b].score([queries[0].text] * len(queries[0].docs), queries[0].docs)
    for i, query in enumerate(queries):
        turn = names[i % len(names):] + names[: i % len(names)] if names else []
        for b in turn:
            t0 = time.perf_counter()
            scores = scorers[b].score([query.text] * len(query.docs), query.docs)
            elapsed[b] += time.perf_counter() - t0
            ndcgs[b].append(final_ndcg(query, np.asarray(scores, dtype=np.float32), blend))
    reference = "torch" if "torch" in names else (names[0] if names else "torch")
    base = float(np.mean(ndcgs[reference])) if ndcgs.get(reference) else math.nan
    for b in names:
        ndcg = float(np.mean(ndcgs[b])) if ndcgs[b] else math.nan
        t = trials[b]
        t.ndcg = round(ndcg, 4)
        t.delta = round(ndcg - base, 4)
        t.ms_per_query = round(1000 * elapsed[b] / max(len(queries), 1), 1)
        t.within_tolerance = bool(ndcg >= base - tolerance - 1e-12)
    good = [b for b in names if trials[b].within_tolerance]
    if not good:
        chosen, reason = "torch", "no backend could be measured; torch fp32 is the reference"
    else:
        chosen = min(good, key=lambda b: elapsed[b])
        ref = trials[reference]
        if chosen == reference:
            reason = "torch fp32 was the fastest backend within tolerance on this CPU"
        else:
            c = trials[chosen]
            reason = (
                f"the fastest backend whose nDCG@10 is within {tolerance} of torch fp32's "
                f"({c.ms_per_query:.0f} vs {ref.ms_per_query:.0f} ms per query, {ref.ms_per_query / max(c.ms_per_query, 1e-9):.2f}x; "
                f"nDCG@10 {c.ndcg:.4f} vs {ref.ndcg:.4f})"
            )
        slower_rejected = [b for b in names if not trials[b].within_tolerance and elapsed[b] < elapsed[chosen]]
        if slower_rejected:
            reason += "; faster but rejected on quality: " + ", ".join(
                f"{b} ({trials[b].delta:+.4f})" for b in slower_rejected
            )
    choice = BackendChoice(
        chosen=chosen, reason=reason, tolerance=tolerance, cpu=cpu, calibration_queries=len(queries),
        calibration_pairs=calibration.pairs, trials=[trials[b] for b, _, _ in supported],
    )
    return choice, scorers
