"""Run the service under uvicorn: load and warm first, then open the port; SIGTERM drains and exits 0; SIGHUP
reloads the index; with several workers, a worker that dies is replaced."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipair_rerank.errors import DiPairError
from dipair_rerank.serve.service import ServeOptions

if TYPE_CHECKING:
    import uvicorn

BACKLOG = 2048  # uvicorn's default
RETRY_SECONDS = 30.0  # a replacement worker that failed to start (e.g. a damaged index on disk) is tried again after
HEALTHCHECK_SECONDS = 5.0  # a worker that answers no ping for this long is hung: killed and replaced (uvicorn's 5)


def bind(host: str, port: int) -> socket.socket:
    """Bind without listening (connections are refused until the service is warm), failing fast on a port in use
    before a long load.

    The socket says it is TCP (``proto``): asyncio turns Nagle off (TCP_NODELAY) only on accepted connections that
    do, and with Nagle on every keep-alive request after the first waits ~40 ms for a delayed ACK (the bug in
    uvicorn's own pre-bound sockets, reported upstream as uvicorn #3149)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DiPairError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)  # worker processes serve the same socket
    return sock


def run_server(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
               log_level: str = "info", api_key: str | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C. ``workers`` > 1: that many processes, each with its own model and batcher,
    sharing the socket (and, through the page cache, the cache files); a batch runs on ``threads // workers``
    threads, a lone request on ``threads`` (under load every worker is busy with batches; a lone request most
    likely has the machine to itself).

    ``api_key``: required on every endpoint but /health (None: no key; listening beyond loopback then prints a
    warning). Worker processes get it in their environment (DIPAIR_API_KEY), never on a command line or in the
    options JSON; their metrics go to a temporary folder (prometheus_client's multiprocess mode) removed at exit.

    SIGHUP to this process reloads the index in every worker (``reload.py``); a worker that dies is replaced
    (``Supervisor``)."""
    import uvicorn

    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.serve.app import OPTIONS_ENV, create_app
    from dipair_rerank.serve.guard import API_KEY_ENV, check_api_key, exposure_warning
    from dipair_rerank.serve.metrics import MULTIPROC_ENV, configure_access_log
    from dipair_rerank.serve.reload import GENERATION_ENV, VERIFY_ENV, configure_event_log
    from dipair_rerank.serve.service import RerankService

    if workers < 1:
        raise DiPairError(f"--workers must be at least 1, got {workers}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the service handles it: by default SIGHUP ends the process
    configure_event_log()
    os.environ.pop(MULTIPROC_ENV, None)  # one process keeps its metrics in memory; several get a folder of ours
    if api_key is not None:
        check_api_key(api_key, "the API key")
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    IndexLayout(options.index).manifest()  # a wrong --index fails before the port is taken
    sock = bind(host, port)
    address = f"http://{host}:{sock.getsockname()[1]}"
    config_args = {"log_level": log_level, "access_log": False, "timeout_graceful_shutdown": None}  # ours: metrics.py
    if workers == 1:
        if options.access_log:
            configure_access_log()
        service = RerankService.from_options(options)
        sock.listen(BACKLOG)  # warm: from now on connections queue until uvicorn accepts them
        health = service.health()
        print(f"serving {options.index} at {address} ({health['documents']} documents, build "
              f"{health['index_build']}, model {health['model_fingerprint'][:12]}, codec {health['codec']}, first "
              f"stage {options.first_stage}); API docs at {address}/docs", flush=True)
        _exit_zero_after_sigterm()  # only now: a SIGTERM while loading should simply end the process
        app = create_app(service, api_key=api_key)
        uvicorn.Server(uvicorn.Config(app, backlog=BACKLOG, **config_args)).run(sockets=[sock])
        return
    threads = options.threads or os.cpu_count() or 1
    per_worker = max(1, threads // workers)
    # what the worker processes (spawned: fresh interpreters) read from the environment they inherit
    os.environ[OPTIONS_ENV] = json.dumps(asdict(replace(options, threads=threads, batch_threads=per_worker)))
    if api_key is not None:
        os.environ[API_KEY_ENV] = api_key
    else:
        os.environ.pop(API_KEY_ENV, None)
    metrics_dir = tempfile.mkdtemp(prefix="dipair-serve-metrics-")  # every worker's metrics, added up per scrape
    os.environ[MULTIPROC_ENV] = metrics_dir
    control_dir = tempfile.mkdtemp(prefix="dipair-serve-control-")  # the reload count the workers watch
    os.environ[GENERATION_ENV] = str(Path(control_dir) / "generation")
    os.environ.pop(VERIFY_ENV, None)  # the first workers load as a single process does; replacements verify
    try:
        sock.listen(BACKLOG)  # connections queue from now on, answered once a worker has loaded (not refused)
        batch = f"{per_worker} thread{'s' * (per_worker > 1)} per batch"
        print(f"serving {options.index} at {address} with {workers} worker processes ({batch}, {threads} for a lone "
              "request; requests wait until a worker has loaded the model)", flush=True)
        config = uvicorn.Config("dipair_rerank.serve.app:app_from_environment", factory=True, workers=workers,
                                backlog=BACKLOG, **config_args)
        _supervise(config, sock, options.index)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)


def _supervise(config: uvicorn.Config, sock: socket.socket, index: str) -> None:
    """uvicorn's multiprocess supervisor over our socket (not ``uvicorn.run``, whose own socket misses TCP_NODELAY),
    with our ``Supervisor``'s replacements and reloads: on SIGTERM it stops the workers, each draining its
    requests, and returns."""
    supervisor_class(index)(config, [sock]).run()


def supervisor_class(index: str) -> type:
    """``Supervisor`` over uvicorn's ``Multiprocess`` (imported only here: the [serve] extra)."""
    import uvicorn
    import uvicorn.config
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors.multiprocess import Process

    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.serve.reload import GENERATION_ENV, VERIFY_ENV, events, write_generation

    takes_target = "target" in inspect.signature(Multiprocess).parameters  # a constructor argument in older uvicorns
    startup_failure = getattr(uvicorn.config, "STARTUP_FAILURE", 1)  # the exit status of a worker that cannot start
    layout = IndexLayout(index)

    class Supervisor(Multiprocess):  # type: ignore[misc, valid-type]
        """uvicorn's supervisor, which replaces a dead worker, with these changes:

        - one line says which worker died (and how) and which replaces it. A replacement loads, verifies (the
          cache's checksums: the folder may hold a newer build by now) and warms its index before uvicorn
          listens in it; until then the other workers take every connection from the shared socket;
        - a replacement that fails to start while another worker runs (a damaged index on disk) is tried again
          after RETRY_SECONDS, instead of uvicorn's stopping the whole service;
        - SIGHUP makes every worker reload its index (a reload count in a file they watch), instead of uvicorn's
          restart of every process; a replacement that loads a newer build than the others serve makes them
          reload too, so that the service converges on one build."""

        def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]):
            if takes_target:
                super().__init__(config, target=uvicorn.Server(config).run, sockets=sockets)
            else:
                super().__init__(config, sockets=sockets)
            self.generation_file = Path(os.environ[GENERATION_ENV])
            self.generation = 0
            write_generation(self.generation_file, self.generation)
            self.loaded = _identity(layout)  # the build the workers were last told to serve
            self.retry_at: dict[int, float] = {}  # slot -> when to start its worker again

        def _process(self) -> Any:
            if takes_target:
                return Process(self.config, self.target, self.sockets)
            return Process(self.config, self.sockets)

        def init_processes(self) -> None:
            super().init_processes()
            os.environ[VERIFY_ENV] = "1"  # inherited by every worker started from now on: the replacements

        def keep_subprocess_alive(self) -> None:
            if self.should_exit.is_set():
                return
            for slot, process in enumerate(self.processes):
                if slot in self.retry_at:
                    if time.monotonic() >= self.retry_at[slot]:
                        del self.retry_at[slot]
                        self._replace(slot, "a worker failed to start earlier")
                    continue
                if process.is_alive(timeout=HEALTHCHECK_SECONDS):
                    continue
                hung = process.process.exitcode is None
                process.kill()  # a hung worker; a dead one is only reaped
                process.join()
                if self.should_exit.is_set():
                    return
                code = process.process.exitcode
                if code == startup_failure:
                    others = [p for i, p in enumerate(self.processes) if i != slot and i not in self.retry_at
                              and p.process.is_alive()]
                    if not others:
                        events.error("worker %s failed to start and no other worker runs: stopping", process.pid)
                        self.should_exit.set()
                        return
                    events.warning("worker %s failed to start (its log says why): serving on %d other worker(s), "
                                   "trying again in %.0f s", process.pid, len(others), RETRY_SECONDS)
                    self.retry_at[slot] = time.monotonic() + RETRY_SECONDS
                    continue
                how = "hung (no answer to pings) and was killed" if hung else f"died ({_exit_status(code)})"
                self._replace(slot, f"worker {process.pid} {how}")

        def _replace(self, slot: int, what: str) -> None:
            process = self._process()
            process.start()
            self.processes[slot] = process
            events.warning("%s; worker %s replaces it, taking requests once it has loaded and warmed the index",
                           what, process.pid)
            on_disk = _identity(layout)
            if on_disk is not None and on_disk != self.loaded:
                events.warning("the index at %s holds build %s, not the one the workers were told to serve: the "
                               "replacement loads it, and the other workers reload", index, on_disk.build)
                self._reload_all("a newer build on disk")

        def handle_hup(self) -> None:
            self._reload_all("SIGHUP")

        def _reload_all(self, cause: str) -> None:
            self.generation += 1
            write_generation(self.generation_file, self.generation)
            self.loaded = _identity(layout) or self.loaded
            events.info("%s: every worker reloads %s (each keeps serving what it has if the build on disk cannot "
                        "be loaded)", cause, index)

    return Supervisor


def _identity(layout: Any) -> Any:
    try:
        return layout.identity()
    except DiPairError:
        return None


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _exit_zero_after_sigterm() -> None:
    """uvicorn drains on SIGTERM, then re-raises the signal under the handler found at start: make that one a
    no-op, so a graceful stop returns normally (exit status 0) instead of dying by the signal."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
