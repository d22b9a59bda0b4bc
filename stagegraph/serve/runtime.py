"""Where requests' CPU work runs: compute slots, a bounded queue, deadlines, cancellation.

* `Slots`: at most `workers` computations at once, process-wide (searches, rerank calls, the CPU
  part of writes). With torch/FAISS pinned to `cores // workers` threads
  (`stagegraph.pipeline.threads.pin`), threads x concurrent executions never exceed the cores. A
  thread knows whether it holds a slot, and gives it back while it only waits (`yielded`): a request
  whose pairs wait for a shared cross-encoder call (`stagegraph.serve.batching`) holds no core.
* `Runtime`: a pool of threads fed by a queue. `submit` (on the event loop) admits a job or raises
  `Overloaded` at once when `queue` jobs already wait, or when those waiting would keep it past its
  deadline at the recent compute time (so above saturation the answer is a fast 503, not a slow
  504), with a Retry-After from the same estimate; `result` awaits it until its deadline (`DeadlineExceeded`) or until the client
  disconnects (`ClientGone`), and on either cancels it: a job still queued is dropped when a thread
  reaches it, a running search stops at its next stage boundary (`stagegraph.pipeline.cancel`) and
  its pairs leave the batcher. Nothing cancelled is finished in the background. A write runtime
  (`hold_slot=False`, `cancel_running=False`) lets a started write finish: it takes its slot only
  for the CPU part, never while it waits for the collection's writer lock.
* A job's function gets the `Job`: its queue time so far, and `resolve(value)` to answer early
  (a write answers once durable, then makes itself searchable).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from stagegraph.pipeline.cancel import Cancelled, cancellable

log = logging.getLogger(__name__)


#: admit a job only if its expected wait plus compute fits in this share of its deadline (the rest is
#: margin for an estimate made from recent averages on a shared machine)
ADMIT_SHARE = 0.8


class Overloaded(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class ClientGone(Exception):
    pass


class Draining(Exception):
    pass


class Slots:
    """Compute slots handed out first come, first served, that know which threads hold one.

    FIFO matters: with more requests in progress than slots (micro-batching), a plain semaphore wakes
    an arbitrary waiter and a request can starve behind later ones."""

    def __init__(self, n: int):
        self.n = int(n)
        self._free = self.n
        self._lock = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()
        self._local = threading.local()

    def held(self) -> bool:
        return bool(getattr(self._local, "held", False))

    def _acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # the releasing thread hands its slot straight to the oldest waiter

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a slot for the block (re-entrant: a thread that holds one keeps it)."""
        if self.held():
            yield
            return
        self._acquire()
        self._local.held = True
        try:
            yield
        finally:
            self._local.held = False
            self._release()

    @contextlib.contextmanager
    def yielded(self) -> Iterator[None]:
        """Give this thread's slot back while the block only waits; take one again after it."""
        if not self.held():
            yield
            return
        self._local.held = False
        self._release()
        try:
            yield
        finally:
            self._acquire()
            self._local.held = True


class Job:
    """One request's work: its function, deadline, state, and the future its handler awaits."""

    __slots__ = ("fn", "deadline", "loop", "future", "enqueued", "started", "finished", "reason", "_answered")

    def __init__(self, fn: Callable[[Job], Any], deadline: float, loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.deadline = deadline
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.enqueued = time.perf_counter()
        self.started: float | None = None
        self.finished: float | None = None
        self.reason: str | None = None  # why it was cancelled: deadline, disconnected, draining
        self._answered = False

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def is_cancelled(self) -> bool:
        if self.reason is None and time.monotonic() >= self.deadline:
            self.reason = "deadline"
        return self.reason is not None

    @property
    def queue_s(self) -> float:
        return ((self.started or time.perf_counter()) - self.enqueued)

    @property
    def compute_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """Answer the handler (once; later answers are ignored). Safe from any thread."""
        if self._answered:
            return
        self._answered = True

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _dropped(reason: str | None) -> BaseException:
    return {"disconnected": ClientGone(), "draining": Draining()}.get(reason or "", DeadlineExceeded())


class Runtime:
    """Threads that run admitted jobs, at most `slots.n` of them computing at once (see the module docstring)."""

    def __init__(self, name: str, *, threads: int, queue: int, slots: Slots, metrics: Any = None,
                 hold_slot: bool = True, cancel_running: bool = True):
        self.name = name
        self.slots = slots
        self.queue_size = int(queue)
        self.thread_count = int(threads)
        self.metrics = metrics
        self.hold_slot = hold_slot
        self.cancel_running = cancel_running
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._waiting = 0  # admitted, not yet computing (queued, or dequeued and waiting for a slot)
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._compute_ewma = 0.05
        #: jobs dropped before they began (cancelled, past their deadline, or drained) and jobs
        #: stopped at a stage boundary after they began: neither was finished
        self.dropped = 0
        self.abandoned = 0
        self.completed = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._threads and not self._stopping:
                return
            self._stopping = False
            self._threads = [threading.Thread(target=self._work, name=f"stagegraph-{self.name}-{i}", daemon=True)
                             for i in range(self.thread_count)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Drop what is queued (503), let running jobs finish within `timeout`; True when all did."""
        with self._cond:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._waiting -= len(queued)
            self._cond.notify_all()
        for job in queued:
            job.cancel("draining")
            job.resolve(error=Draining())
            self.dropped += 1
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = []
        self._gauge()
        return not alive

    # -- admission ------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        """Jobs that have started and not finished (computing, or waiting inside, e.g. in the batcher)."""
        return self._running

    def expected_wait(self) -> float:
        """Seconds a job admitted now would wait, at the recent compute time: the jobs ahead of it per
        slot, plus one more round when every slot is busy (counted whole: an estimate that errs long)."""
        busy = 1 if self._running >= self.slots.n else 0
        return (self._waiting / max(1, self.slots.n) + busy) * self._compute_ewma

    def retry_after(self) -> int:
        return max(1, math.ceil(self.expected_wait() + self._compute_ewma))

    def submit(self, fn: Callable[[Job], Any], timeout_s: float) -> Job:
        """Admit `fn` with a deadline `timeout_s` from now, or raise `Overloaded` / `Draining` at once."""
        if not self._threads:
            self.start()
        job = Job(fn, time.monotonic() + timeout_s, asyncio.get_running_loop())
        with self._cond:
            if self._stopping:
                raise Draining()
            # full: `queue` jobs wait, or those waiting would keep this one past its deadline anyway
            if self._waiting >= self.queue_size or (
                    self._waiting >= 1 and self.expected_wait() + self._compute_ewma > ADMIT_SHARE * timeout_s):
                raise Overloaded(self.retry_after())
            self._queue.append(job)
            self._waiting += 1
            self._cond.notify()
        self._gauge()
        return job

    async def result(self, job: Job, disconnected: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """The job's value; `DeadlineExceeded` at its deadline, `ClientGone` when `disconnected()`
        completes first. Either way the job is cancelled (see the module docstring)."""
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        waits = {job.future} if watcher is None else {job.future, watcher}
        try:
            done, _ = await asyncio.wait(waits, timeout=max(0.0, job.deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is cancelling this request (shutdown timeout)
            job.cancel("draining")
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if job.future in done:
            return job.future.result()
        if watcher is not None and watcher in done:
            job.cancel("disconnected")
            raise ClientGone()
        job.cancel("deadline")
        raise DeadlineExceeded()

    # -- the threads ----------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(self._waiting)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            return self._queue.popleft()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if job.is_cancelled():
                self._leave_queue(job, started=False)
                continue
            if self.hold_slot:
                with self.slots.hold():
                    self._run(job)
            else:
                self._run(job)

    def _leave_queue(self, job: Job, *, started: bool) -> None:
        with self._cond:
            self._waiting -= 1
            if started:
                self._running += 1
        self._gauge()
        if not started:  # dropped before it began: its handler has been told (or is told now)
            self.dropped += 1
            job.resolve(error=_dropped(job.reason))

    def _run(self, job: Job) -> None:
        if job.is_cancelled():  # its deadline passed while it waited for a slot
            self._leave_queue(job, started=False)
            return
        self._leave_queue(job, started=True)
        job.started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.queue_seconds.labels(self.name).observe(job.queue_s)
        try:
            if self.cancel_running:
                with cancellable(job.is_cancelled):
                    value = job.fn(job)
            else:
                value = job.fn(job)
            job.finished = time.perf_counter()
            self.completed += 1
            job.resolve(value)
        except Cancelled:
            job.finished = time.perf_counter()
            self.abandoned += 1
            job.resolve(error=_dropped(job.reason))
        except BaseException as exc:  # noqa: BLE001 - handed to the request's handler, which maps it
            job.finished = time.perf_counter()
            job.resolve(error=exc)
        finally:
            with self._cond:
                self._running -= 1
            self._compute_ewma = 0.8 * self._compute_ewma + 0.2 * job.compute_s
            if self.metrics is not None:
                self.metrics.compute_seconds.labels(self.name).observe(job.compute_s)
