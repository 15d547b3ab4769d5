"""Run the service under uvicorn: load and warm first, then open the port; SIGTERM drains and exits 0."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from dipair_rerank.errors import DiPairError
from dipair_rerank.serve.service import ServeOptions

if TYPE_CHECKING:
    import uvicorn

BACKLOG = 2048  # uvicorn's default


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
    options JSON; their metrics go to a temporary folder (prometheus_client's multiprocess mode) removed at exit."""
    import uvicorn

    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.serve.app import OPTIONS_ENV, create_app
    from dipair_rerank.serve.guard import API_KEY_ENV, check_api_key, exposure_warning
    from dipair_rerank.serve.metrics import MULTIPROC_ENV, configure_access_log
    from dipair_rerank.serve.service import RerankService

    if workers < 1:
        raise DiPairError(f"--workers must be at least 1, got {workers}")
    os.environ.pop(MULTIPROC_ENV, None)  # one process keeps its metrics in memory; several get a folder of ours
    if api_key is not None:
        check_api_key(api_key, "the API key")
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    IndexLayout(options.index).manifest()  # a wrong --index fails before the port is taken
    sock = bind(host, port)
    address = f"http://{host}:{sock.getsockname()[1]}"
    config_args = dict(log_level=log_level, access_log=False, timeout_graceful_shutdown=None)  # ours: metrics.py
    if workers == 1:
        if options.access_log:
            configure_access_log()
        service = RerankService.from_options(options)
        sock.listen(BACKLOG)  # warm: from now on connections queue until uvicorn accepts them
        health = service.health()
        print(f"serving {options.index} at {address} ({health['documents']} documents, model "
              f"{health['model_fingerprint'][:12]}, codec {health['codec']}, first stage {options.first_stage}); "
              f"API docs at {address}/docs", flush=True)
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
    try:
        sock.listen(BACKLOG)  # connections queue from now on, answered once a worker has loaded (not refused)
        batch = f"{per_worker} thread{'s' * (per_worker > 1)} per batch"
        print(f"serving {options.index} at {address} with {workers} worker processes ({batch}, {threads} for a lone "
              "request; requests wait until a worker has loaded the model)", flush=True)
        config = uvicorn.Config("dipair_rerank.serve.app:app_from_environment", factory=True, workers=workers,
                                backlog=BACKLOG, **config_args)
        _supervise(config, sock)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(config: uvicorn.Config, sock: socket.socket) -> None:
    """uvicorn's multiprocess supervisor over our socket (not ``uvicorn.run``, whose own socket misses TCP_NODELAY):
    on SIGTERM it stops the workers, each draining its requests, and returns. Its constructor lost its ``target``
    argument in later uvicorn versions."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess).parameters:
        supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])
    else:
        supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()


def _exit_zero_after_sigterm() -> None:
    """uvicorn drains on SIGTERM, then re-raises the signal under the handler found at start: make that one a
    no-op, so a graceful stop returns normally (exit status 0) instead of dying by the signal."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
