"""MicroBatcher alone: batches form from what arrives together, a lone job never waits, a failing job fails
alone, stop finishes what was queued."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dipair_rerank.serve.batching import BatcherStopped, MicroBatcher


class Recorder:
    """run_batch that records each batch; fails a job named "bad" (the whole batch raises), can be held."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, jobs: list[str], queued_ms: list[float]) -> list[object]:
        self.hold.wait(10)
        self.batches.append(list(jobs))
        if "bad" in jobs:
            raise ValueError("bad job")
        return [ValueError("refused") if job == "refused" else job.upper() for job in jobs]


@pytest.fixture()
def recorder():
    return Recorder()


def _batcher(recorder, **kwargs) -> MicroBatcher:
    batcher = MicroBatcher(recorder, **kwargs)
    batcher.start()
    return batcher


def _worker_busy_with_first(batcher: MicroBatcher, recorder):
    """Hold the worker on a job named "first", so that the jobs submitted next queue behind it."""
    recorder.hold.clear()
    first = batcher.submit_future("first")
    time.sleep(0.05)
    return first


def test_jobs_queued_together_run_as_one_batch_in_order(recorder):
    batcher = _batcher(recorder)
    first = _worker_busy_with_first(batcher, recorder)
    rest = [batcher.submit_future(name) for name in ("a", "b", "c")]
    recorder.hold.set()
    assert [f.result(5) for f in [first, *rest]] == ["FIRST", "A", "B", "C"]
    assert recorder.batches == [["first"], ["a", "b", "c"]] and batcher.stats.largest == 3
    batcher.stop()


def test_a_lone_job_does_not_wait_a_busy_batch_does(recorder):
    batcher = _batcher(recorder, max_wait_ms=400)
    started = time.perf_counter()
    assert batcher.submit_future("alone").result(5) == "ALONE"
    assert time.perf_counter() - started < 0.3  # not the 400 ms wait
    recorder.hold.clear()
    held = batcher.submit_future("x")
    time.sleep(0.05)
    pair = [batcher.submit_future("y"), batcher.submit_future("z")]
    recorder.hold.set()
    [f.result(5) for f in [held, *pair]]  # a batch of two: the service is busy now
    early = batcher.submit_future("early")
    time.sleep(0.1)
    late = batcher.submit_future("late")  # arrives within the busy batch's wait
    assert early.result(5) == "EARLY" and late.result(5) == "LATE"
    assert recorder.batches[-1] == ["early", "late"]
    batcher.stop()


def test_a_job_that_queued_behind_a_batch_waits_for_company(recorder):
    """Two clients would otherwise take turns forever, each request alone: the one that had to queue waits."""
    batcher = _batcher(recorder, max_wait_ms=400)
    recorder.hold.clear()
    first = batcher.submit_future("a")
    time.sleep(0.05)
    queued = batcher.submit_future("b")  # arrives while "a" runs
    recorder.hold.set()
    first.result(5)
    time.sleep(0.05)
    company = batcher.submit_future("c")  # "a"'s client, back with its next request
    assert queued.result(5) == "B" and company.result(5) == "C"
    assert recorder.batches == [["a"], ["b", "c"]]
    batcher.stop()


def test_a_busy_batch_stops_waiting_once_the_last_batchs_clients_are_back(recorder):
    """A closed loop of clients: the batch after one of three starts as soon as three have come, not after the
    whole wait (which would idle the worker between every two batches)."""
    batcher = _batcher(recorder, max_wait_ms=2000)
    first = _worker_busy_with_first(batcher, recorder)
    trio = [batcher.submit_future(name) for name in ("a", "b", "c")]
    recorder.hold.set()
    [f.result(5) for f in [first, *trio]]
    started = time.perf_counter()
    again = [batcher.submit_future(name) for name in ("d", "e", "f")]  # the three clients, answered, are back
    assert [f.result(5) for f in again] == ["D", "E", "F"]
    assert time.perf_counter() - started < 1.0 and recorder.batches[-1] == ["d", "e", "f"]
    batcher.stop()


def test_batches_stop_growing_at_max_jobs_and_max_size(recorder):
    batcher = _batcher(recorder, max_jobs=2, size=len, max_size=100)
    first = _worker_busy_with_first(batcher, recorder)
    futures = [batcher.submit_future(name) for name in ("a", "b", "c", "d" * 200, "e")]
    recorder.hold.set()
    [f.result(5) for f in [first, *futures]]
    assert recorder.batches == [["first"], ["a", "b"], ["c", "d" * 200], ["e"]]
    batcher.stop()


def test_a_failing_job_fails_alone(recorder):
    batcher = _batcher(recorder)
    first = _worker_busy_with_first(batcher, recorder)
    good, bad, refused = (batcher.submit_future(name) for name in ("good", "bad", "refused"))
    recorder.hold.set()
    assert first.result(5) == "FIRST" and good.result(5) == "GOOD"
    with pytest.raises(ValueError, match="bad job"):
        bad.result(5)
    with pytest.raises(ValueError, match="refused"):
        refused.result(5)
    assert batcher.submit_future("after").result(5) == "AFTER"  # the worker lives on
    batcher.stop()


def test_stop_finishes_queued_jobs_then_refuses_new_ones_and_restarts(recorder):
    batcher = _batcher(recorder)
    recorder.hold.clear()
    queued = [batcher.submit_future(str(i)) for i in range(5)]
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    time.sleep(0.05)
    recorder.hold.set()
    stopper.join(5)
    assert [f.result(0) for f in queued] == ["0", "1", "2", "3", "4"] and not batcher.running
    with pytest.raises(BatcherStopped):
        batcher.submit_future("late")
    batcher.start()  # a second lifespan
    assert batcher.submit_future("again").result(5) == "AGAIN"
    batcher.stop()


def test_a_cancelled_job_is_skipped(recorder):
    batcher = _batcher(recorder)
    first = _worker_busy_with_first(batcher, recorder)
    gone = batcher.submit_future("gone")
    kept = batcher.submit_future("kept")
    assert gone.cancel()  # its client went away before the worker reached it
    recorder.hold.set()
    assert first.result(5) == "FIRST" and kept.result(5) == "KEPT"
    assert ["gone"] not in recorder.batches and all("gone" not in batch for batch in recorder.batches)
    batcher.stop()


def test_submit_awaits_without_blocking_the_event_loop(recorder):
    batcher = _batcher(recorder)

    async def main() -> list[str]:
        return await asyncio.gather(*(batcher.submit(name) for name in ("p", "q", "r")))

    assert asyncio.run(main()) == ["P", "Q", "R"]
    batcher.stop()
