"""Reload the index under a running service without refusing a request, and the log lines that say what happened.

A reload loads the folder's current build aside (model, cache, first stage; the cache's checksums verified; warmed),
starts its batch worker, swaps the reference the endpoints read (on the event loop: a request reads it once, so
every answer comes from one build), lets the old service finish the batches queued on it, then closes it. A reload
that fails (a damaged or incompatible index, or none in the folder) keeps the service loaded and says why in one
line, in the log and in the answer of ``POST /admin/reload``.

What asks for one: SIGHUP to the service's process (``serve --workers 1``); with ``--workers N``, SIGHUP to the main
process, which counts reloads in a small file every worker watches (a worker started later reads the count before
it loads, so it never reloads what it has just loaded); ``POST /admin/reload`` (this worker at once, the others
through the main process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.serve.service import RerankService, ServeOptions, _detach_from_jvm

EVENTS_LOGGER = "dipair_rerank.serve.events"
events = logging.getLogger(EVENTS_LOGGER)
"""Workers dying and replaced, reloads done or refused: one line each, at INFO or WARNING, whatever --verbose says."""

GENERATION_ENV = "DIPAIR_SERVE_GENERATION"
"""The file in which the main process of ``serve --workers N`` counts reloads (its path, for the workers)."""

VERIFY_ENV = "DIPAIR_SERVE_VERIFY"
"""Set (to 1) for the workers started after the first ones: a replacement verifies the cache's checksums, as a
reload does, since the folder may hold a build published after the service started."""

WATCH_SECONDS = 0.5  # how often a worker reads the reload count: a reload starts within this of SIGHUP


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (not the stream it was created with, which a
    test's output capture may have closed since)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_event_log() -> None:
    """Event lines at INFO to stderr, whatever the rest of logging is set to."""
    if not any(isinstance(handler, _Stderr) for handler in events.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, DiPairError) else f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``ok`` (serving the folder's build now), ``changed`` (a new build was swapped in)."""

    ok: bool
    changed: bool
    message: str
    build: str | None

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"error": self.message, "index_build": self.build}
        return {"status": "reloaded" if self.changed else "unchanged", "message": self.message,
                "index_build": self.build, "pid": os.getpid()}


class LiveService:
    """The service the endpoints answer with: ``current``, swapped whole by ``reload``.

    Args:
        service: the service loaded at start.
        adopt: called with a new service before it takes requests (the app's metrics follow it).
        load: loads a service from the options (default: ``RerankService.from_options`` with verification).
    """

    def __init__(self, service: RerankService, *, adopt: Callable[[RerankService], None] | None = None,
                 load: Callable[[ServeOptions], RerankService] | None = None):
        self.current = service
        self._adopt = adopt
        self._load = load or (lambda options: RerankService.from_options(options, verify=True))
        self._lock: asyncio.Lock | None = None
        self.closed = False

    async def reload(self, cause: str) -> ReloadOutcome:
        """Serve the folder's current build: load it aside, swap, close the old one. Concurrent calls run one
        after the other (a later one finds the build loaded: nothing to do)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            old = self.current
            index = old.options.index
            if self.closed:
                return ReloadOutcome(False, False, "the service is shutting down", _build(old))
            try:
                on_disk = IndexLayout(index).identity()
            except DiPairError as exc:
                return self._refused(cause, old, one_line(exc))
            if on_disk == old.identity:
                outcome = ReloadOutcome(True, False, f"already serving build {_build(old)} of {index}", _build(old))
                events.info("reload (%s) in worker %d: %s", cause, os.getpid(), outcome.message)
                return outcome
            started = time.perf_counter()
            try:
                new = await asyncio.to_thread(_aside, self._load, old.options)
            except Exception as exc:  # noqa: BLE001  (whatever it is, the loaded service keeps serving)
                return self._refused(cause, old, one_line(exc))
            if self.closed:
                await asyncio.to_thread(new.close)
                return ReloadOutcome(False, False, "the service is shutting down", _build(old))
            if self._adopt is not None:
                self._adopt(new)
            new.start()
            self.current = new  # from here every request goes to the new build
            await asyncio.to_thread(old.close)  # its queued batches finish first
            change = (f"build {_build(old)} -> {_build(new)}" if _build(old) != _build(new)
                      else f"build {_build(new)}, published again")  # the same manifest in a new folder
            message = (f"reloaded {index}: {change} ({new.cache.num_docs} documents, model "
                       f"{new.cache.model_fingerprint[:12]}) in {time.perf_counter() - started:.1f} s")
            events.info("reload (%s) in worker %d: %s", cause, os.getpid(), message)
            return ReloadOutcome(True, True, message, _build(new))

    def _refused(self, cause: str, old: RerankService, reason: str) -> ReloadOutcome:
        message = f"reload of {old.options.index} failed, still serving build {_build(old)}: {reason}"
        events.warning("reload (%s) in worker %d: %s", cause, os.getpid(), message)
        return ReloadOutcome(False, False, message, _build(old))


def _build(service: RerankService) -> str | None:
    return service.identity.build if service.identity is not None else None


def _aside(load: Callable[[ServeOptions], RerankService], options: ServeOptions) -> RerankService:
    """``load`` on a helper thread, detached from the JVM afterwards (its warm-up searched with Lucene)."""
    try:
        return load(options)
    finally:
        if threading.current_thread() is not threading.main_thread():
            _detach_from_jvm()


# ----- what asks for a reload -----------------------------------------------------------------------------------
@dataclass
class Generation:
    """The reload count of ``serve --workers N``, as a worker sees it: ``seen`` was read before the worker loaded
    its index, so only a later SIGHUP makes it reload."""

    path: Path
    seen: int
    main_pid: int

    @classmethod
    def from_environment(cls) -> Generation | None:
        path = os.environ.get(GENERATION_ENV)
        return None if not path else cls(Path(path), read_generation(Path(path)) or 0, os.getppid())

    def changed(self) -> bool:
        count = read_generation(self.path)
        if count is None or count == self.seen:
            return False
        self.seen = count
        return True

    def ask_main(self) -> None:
        """Ask the main process to have every worker reload (as SIGHUP to it does)."""
        if os.getppid() == self.main_pid:
            os.kill(self.main_pid, signal.SIGHUP)


def read_generation(path: Path) -> int | None:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return None


def write_generation(path: Path, count: int) -> None:
    """Replace the count whole (a worker never reads half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(count))
    os.replace(tmp, path)


class ReloadTriggers:
    """While the app runs: SIGHUP to this process reloads it (where the event loop runs on the main thread: not
    in tests' in-process clients), and with a ``generation`` a new reload count does."""

    def __init__(self, live: LiveService, generation: Generation | None):
        self.live = live
        self.generation = generation
        self._tasks: set[asyncio.Task] = set()
        self._signal = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._spawn, "SIGHUP")
            self._signal = True
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread, or no SIGHUP on this platform: POST /admin/reload still works
        if self.generation is not None:
            self._keep(asyncio.ensure_future(self._watch()))

    def _spawn(self, cause: str) -> None:
        self._keep(asyncio.ensure_future(self.live.reload(cause)))

    def _keep(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        assert self.generation is not None
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self.generation.changed():
                await self.live.reload("asked by the main process")

    async def stop(self) -> None:
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # while draining: by default SIGHUP ends the process
        self.live.closed = True
        for task in list(self._tasks):
            task.cancel()
