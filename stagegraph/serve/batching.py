"""Micro-batching: (query, document) pairs of concurrent requests share one cross-encoder call.

`BatchingScorer(inner, slots, ...)` stands in for a reranker stage's scorer (the object whose
`score(queries, docs)` runs the model; `install(pipeline, ...)` puts one in front of every
cross-encoder stage of a pipeline, from outside the stage). Each call is a request of pairs:

* the oldest waiting request leads: it waits until the pairs waiting add up to `max_tokens`
  (estimated from characters, capped at the model's max_length per pair), or `max_wait_s` has passed
  since it arrived, or every request in progress is already waiting here (then nobody else can
  come, so a lone request never waits); then it takes the oldest requests that fit the budget
  (always itself), runs one `inner.score` over all their pairs and hands each its scores;
* the others wait; requests that did not fit lead the next batch, while this one runs;
* while waiting a thread gives its compute slot back (`Slots.yielded`), and a leader takes one
  again only to run the model, so waiting holds no core;
* a request whose job is cancelled (`stagegraph.pipeline.cancel`) while it waits leaves the queue:
  its pairs are never scored.

The inner scorer still sorts the pairs by length into padded batches of its `batch_size`. With
`enabled=False` every call goes straight to the inner scorer (pairs are still counted). Scores do
not depend on which pairs share a call, up to float noise (fp32; ONNX int8 quantises activations
per batch, so its scores move slightly with the company a pair keeps).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stagegraph.pipeline.cancel import Cancelled, cancelled
from stagegraph.serve.runtime import Slots
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker


POLL_S = 0.02  # how often a waiting request looks at its cancellation


class _Request:
    __slots__ = ("queries", "docs", "tokens", "arrived", "taken", "done", "scores", "error")

    def __init__(self, queries: list[str], docs: list[str], tokens: int):
        self.queries, self.docs, self.tokens = queries, docs, tokens
        self.arrived = time.monotonic()
        self.taken = False
        self.done = False
        self.scores: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchingScorer:
    """A scorer that merges concurrent calls into shared model calls (see the module docstring)."""

    def __init__(self, inner: Any, slots: Slots, *, enabled: bool = True, max_tokens: int = 8192,
                 max_wait_s: float = 0.002, in_progress: Callable[[], int] | None = None,
                 on_batch: Callable[[int, int], None] | None = None):
        self.inner = inner
        self.slots = slots
        self.enabled = enabled
        self.max_tokens = int(max_tokens)
        self.max_wait_s = float(max_wait_s)
        self.in_progress = in_progress or (lambda: 0)
        self.on_batch = on_batch or (lambda requests, pairs: None)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._leading = False
        self.max_length = int(getattr(inner, "max_length", 512) or 512)

    def __getattr__(self, name: str) -> Any:  # tokenizer, backend, batch_size ... of the real scorer
        return getattr(self.__dict__["inner"], name)

    def _tokens(self, queries: Sequence[str], docs: Sequence[str]) -> int:
        cap = self.max_length
        return sum(min(cap, (len(q) + len(d)) // 4 + 3) for q, d in zip(queries, docs))

    def score(self, queries: Sequence[str], docs: Sequence[str], progress: bool = False) -> np.ndarray:
        if not len(queries):
            return np.empty(0, dtype=np.float32)
        if not self.enabled:
            scores = self.inner.score(queries, docs, progress=progress)
            self.on_batch(1, len(queries))
            return scores
        request = _Request(list(queries), list(docs), self._tokens(queries, docs))
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
        with self.slots.yielded():
            batch = self._wait_or_lead(request)
        if batch is not None:
            self._run(batch)
        if request.error is not None:
            raise request.error
        assert request.scores is not None
        return request.scores

    # -- waiting and leading --------------------------------------------------------------------
    def _leave(self, request: _Request) -> None:
        """Called with the lock held: a cancelled request that nobody took leaves the queue."""
        try:
            self._queue.remove(request)
        except ValueError:
            pass
        self._cond.notify_all()
        raise Cancelled("the request was cancelled while its pairs waited for a batch")

    def _wait_or_lead(self, request: _Request) -> list[_Request] | None:
        with self._cond:
            while True:
                if request.done:
                    return None
                if not request.taken:
                    if cancelled():
                        self._leave(request)
                    if not self._leading and self._queue and self._queue[0] is request:
                        return self._lead(request)
                self._cond.wait(POLL_S)

    def _lead(self, request: _Request) -> list[_Request]:
        """With the lock held: gather company for `request` (the oldest), take a batch, hand over the lead."""
        self._leading = True
        try:
            end = request.arrived + self.max_wait_s
            while True:
                waiting = sum(r.tokens for r in self._queue)
                remaining = end - time.monotonic()
                if waiting >= self.max_tokens or remaining <= 0 or len(self._queue) >= self.in_progress():
                    break
                self._cond.wait(min(remaining, POLL_S))
                if cancelled():
                    self._leave(request)
            batch, used = [], 0
            while self._queue and (not batch or used + self._queue[0].tokens <= self.max_tokens):
                item = self._queue.popleft()
                item.taken = True
                batch.append(item)
                used += item.tokens
            return batch
        finally:
            self._leading = False
            self._cond.notify_all()

    def _run(self, batch: list[_Request]) -> None:
        """Score every pair of `batch` in one call (in this thread, holding its slot), hand out the scores."""
        queries = [q for r in batch for q in r.queries]
        docs = [d for r in batch for d in r.docs]
        try:
            scores = np.asarray(self.inner.score(queries, docs), dtype=np.float32)
            at = 0
            for r in batch:
                r.scores = scores[at: at + len(r.queries)].copy()
                at += len(r.queries)
        except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the failure
            for r in batch:
                r.error = exc
        finally:
            with self._cond:
                for r in batch:
                    r.done = True
                self._cond.notify_all()
        self.on_batch(len(batch), len(queries))


def install(runner: Any, slots: Slots, **options: Any) -> list[str]:
    """Put a `BatchingScorer` in front of every cross-encoder stage a runner has bound; returns the
    names of the stages it wrapped.

    The seam is the bound stage's `scoring.scorer` (`stagegraph.stages.rerank.scorers.Scoring`):
    the one object between the stage's candidate handling and its model. A runner rebound to the next
    generation shares that object, so it is wrapped once."""
    wrapped = []
    for step in runner.steps:
        if not isinstance(step.stage, CrossEncoderReranker):
            continue
        scoring = runner.bound(step).scoring
        if not isinstance(scoring.scorer, BatchingScorer):
            scoring.scorer = BatchingScorer(scoring.scorer, slots, **options)
        wrapped.append(step.name)
    return wrapped
