"""``search --engine ray``: topics split into parts searched by Ray actors, each opening the index once.

Each actor holds a ``PartSearcher`` (the model, the memory-mapped prefix cache and, for BM25, its own JVM) and
searches one part at a time; the driver writes each finished part beside the run (``search_parts``), so an
interrupted search resumes, and assembles the run in topic order: the file a single process writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dipair_rerank._java import jvm_signal_handlers_kept
from dipair_rerank.errors import DiPairError
from dipair_rerank.search_parts import PartResult, PartSearcher, PartsReport, PartTask, SearchOptions, search_in_parts

logger = logging.getLogger(__name__)


class SearchWorker:
    """A Ray actor: opens the index once, then searches the parts it is handed."""

    def __init__(self, options: SearchOptions):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer's own thread pool would take the other cores
        self.failure: DiPairError | None = None
        try:
            self.searcher: PartSearcher | None = PartSearcher(options)
        except DiPairError as exc:  # raised again by ready(): an actor's failed start reaches the driver as text only
            self.searcher, self.failure = None, exc

    def ready(self) -> None:
        if self.failure is not None:
            raise self.failure

    def search(self, task: PartTask) -> PartResult:
        assert self.searcher is not None
        return self.searcher.search(task)


@dataclass
class RayTimes:
    """Seconds spent starting Ray and the actors (model load, index open, warm-up), and searching."""

    startup_s: float = 0.0
    search_s: float = 0.0


@dataclass
class RaySearchReport(PartsReport):
    workers: int = 0
    times: RayTimes | None = None


def search_with_ray(topics: dict[str, str], run_path: str | Path, options: SearchOptions, *, workers: int,
                    address: str | None = None, progress: bool = True,
                    on_part: Callable[[int], None] | None = None) -> RaySearchReport:
    """Search ``topics`` on ``workers`` Ray actors of ``options.threads`` CPUs each and write the run at
    ``run_path`` (with its latency sidecar, every worker's timings merged).

    Args:
        address: a Ray cluster to join (default: start a local one, shut down afterwards); the index, the model
            and the candidates must be readable at the same paths on its nodes.
        on_part: called with each part's number once it is written beside the run.
    """
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise DiPairError("--engine ray needs Ray: pip install 'dipair-rerank[ray]'") from exc
    if workers < 1:
        raise DiPairError(f"--workers must be at least 1, got {workers}")
    times = RayTimes()

    def engine(tasks: list[PartTask]) -> Iterator[PartResult | None]:
        return _search_on_actors(tasks, options, workers=min(workers, len(tasks)), address=address, times=times)

    report = search_in_parts(topics, run_path, options, engine, progress=progress, on_part=on_part,
                             latency_extra={"engine": "ray", "workers": workers})
    return RaySearchReport(**vars(report), workers=workers, times=times)


def _search_on_actors(tasks: list[PartTask], options: SearchOptions, *, workers: int, address: str | None,
                      times: RayTimes) -> Iterator[PartResult | None]:
    """None once the actors are ready, then each part's result as it finishes; one part in flight per actor, so
    an idle actor takes the next."""
    import ray

    started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        with jvm_signal_handlers_kept():  # a JVM in this process survives Ray's crash reporters
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": workers * options.threads}))
    try:
        actor_class = ray.remote(num_cpus=options.threads)(SearchWorker)
        actors = [actor_class.remote(options) for _ in range(workers)]
        _get(ray, [actor.ready.remote() for actor in actors])
        times.startup_s = time.perf_counter() - started
        yield None
        started = time.perf_counter()
        queue = iter(tasks)
        running = {}
        for actor in actors:
            task = next(queue, None)
            if task is not None:
                running[actor.search.remote(task)] = actor
        while running:
            [finished], _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(finished)
            result = _get(ray, finished)
            task = next(queue, None)
            if task is not None:
                running[actor.search.remote(task)] = actor
            times.search_s = time.perf_counter() - started
            yield result
    finally:
        if started_here:
            with jvm_signal_handlers_kept():
                ray.shutdown()


def _get(ray, refs):
    """``ray.get``, a worker's DiPairError raised again here as itself (one line, no remote traceback)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, DiPairError):
            raise DiPairError(str(exc.cause)) from None
        raise
    except ray.exceptions.RayActorError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DiPairError(f"a Ray worker died ({first_line}); the finished parts are kept: rerun to resume"
                          ) from exc
