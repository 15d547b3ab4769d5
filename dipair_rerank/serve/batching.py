"""Micro-batching: requests that arrive together run as one batch on one worker thread.

Why one thread: torch, ONNX Runtime and the JVM each parallelise a call over the cores themselves; requests
computed side by side would fight for the same two cores (and torch's spinning OpenMP workers make that worse,
see ``rerank.SMALL_HEAD_CALL``), while one call over many requests' candidates costs far less than one call per
request. The event loop only parses, validates and waits; everything numeric happens on this thread.

When to wait: a request that finds the service idle runs at once (waiting could only add latency: nothing else
is coming). The service is busy when a request had to queue behind a running batch, or the last batch held more
than one: then a batch waits up to ``max_wait_ms`` for requests still on their way (the clients just answered
send their next ones), bounded also by ``max_jobs`` and ``max_size`` (candidates in one head call). Without that
wait, two clients would take turns forever, each request alone and each waiting for the other's. The wait ends
early once as many have come as can be expected: every request queued when the batch began, plus one per request
of the last batch (its clients, just answered). A closed loop of clients thus waits for a fraction of a
millisecond, not the whole ``max_wait_ms``, between batches.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Job = TypeVar("Job")

_STOP = object()


class BatcherStopped(RuntimeError):
    """The batcher no longer takes jobs (the service is shutting down)."""


@dataclass
class BatchStats:
    """What the batcher has done: for /health and for tests that check requests were batched."""

    batches: int = 0
    jobs: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> batches of that size

    def add(self, size: int) -> None:
        self.batches += 1
        self.jobs += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


@dataclass
class _Entry(Generic[Job]):
    job: Job
    future: Future
    submitted: float  # perf_counter at submit: the job's queue time is measured from here


class MicroBatcher(Generic[Job]):
    """Run ``run_batch(jobs, queued_ms)`` on one thread over jobs submitted from an event loop.

    ``run_batch`` returns one result per job, in order; a result that is an exception fails only its job. If
    ``run_batch`` itself raises for a batch of several jobs, each job is retried alone, so one bad job cannot fail
    the requests it happened to share a batch with.

    Args:
        run_batch: computes a batch; called on the worker thread only.
        max_wait_ms: how long a busy service's batch waits for more jobs.
        max_jobs: jobs per batch at most.
        size: a job's weight (e.g. its candidates); a batch stops growing at ``max_size`` in all.
        on_exit: called on the worker thread as it ends (e.g. to detach it from the JVM).
    """

    def __init__(self, run_batch: Callable[[list[Job], list[float]], Sequence[Any]], *, max_wait_ms: float = 2.0,
                 max_jobs: int = 64, size: Callable[[Job], int] = lambda job: 1, max_size: int = 8192,
                 on_exit: Callable[[], None] | None = None, name: str = "dipair-batcher"):
        self._run_batch = run_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_jobs = max_jobs
        self._size = size
        self.max_size = max_size
        self._on_exit = on_exit
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._busy = False
        self._last = 0  # jobs in the last batch: their clients may be sending their next ones
        self.stats = BatchStats()

    # ----- event-loop side ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (again, after a ``stop``: an app's lifespan may run more than once)."""
        if self._accepting:
            return
        self._busy = False
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._accepting = True
        self._thread.start()

    def submit_future(self, job: Job) -> Future:
        """Queue ``job``; the returned future completes on the worker thread."""
        if not self._accepting:
            raise BatcherStopped("the service is shutting down")
        future: Future = Future()
        self._queue.put(_Entry(job, future, time.perf_counter()))
        return future

    async def submit(self, job: Job) -> Any:
        """Queue ``job`` and wait for its result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_future(job))

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish every job already queued, then end the worker thread."""
        if not self._accepting:
            return
        self._accepting = False
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----- worker side ----------------------------------------------------------------------------------------
    def _collect(self) -> tuple[list[_Entry], bool]:
        """The next batch (blocking for its first job), and whether the stop marker was reached."""
        try:
            first = self._queue.get_nowait()
            busy = True  # it queued behind the last batch
            expected = 1 + self._queue.qsize() + self._last  # the queued jobs, and the last batch's clients
        except queue.Empty:
            first = self._queue.get()
            busy = self._busy
            expected = self._last  # the first is one of the last batch's clients (or the service was idle)
        if first is _STOP:
            return [], True
        batch, size = [first], self._size(first.job)
        deadline = None
        while len(batch) < self.max_jobs and size < self.max_size:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                if not (busy or len(batch) > 1):
                    break  # an idle service runs a lone request at once
                if len(batch) >= expected:
                    break  # every request that could be on its way has come
                if deadline is None:
                    deadline = time.perf_counter() + self.max_wait
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
            size += self._size(entry.job)
        return batch, False

    def _work(self) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = self._collect()
                batch = [entry for entry in batch if entry.future.set_running_or_notify_cancel()]  # gone clients
                if batch:
                    self._busy, self._last = len(batch) > 1, len(batch)
                    self.stats.add(len(batch))
                    self._run(batch)
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _run(self, batch: list[_Entry]) -> None:
        try:
            results = self._compute(batch)
        except Exception as exc:  # noqa: BLE001  (a failed batch must not end the worker)
            if len(batch) > 1:
                logger.warning("a batch of %d failed (%s: %s); running its jobs one by one", len(batch),
                               type(exc).__name__, exc)
                for entry in batch:
                    self._run([entry])
                return
            results = [exc]
        for entry, result in zip(batch, results):
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def _compute(self, batch: list[_Entry]) -> list[Any]:
        started = time.perf_counter()
        queued_ms = [(started - entry.submitted) * 1000.0 for entry in batch]
        results = list(self._run_batch([entry.job for entry in batch], queued_ms))
        if len(results) != len(batch):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        return results
