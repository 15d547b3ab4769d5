"""What the service exposes about itself: Prometheus metrics (GET /metrics, through ``prometheus_client``) and one
access-log line per request.

Metrics (seconds, as Prometheus names them):

    dipair_requests_total{endpoint, status}          requests answered (endpoint: the route, or "other")
    dipair_request_duration_seconds{endpoint}        request received -> answer sent, in this process
    dipair_queue_duration_seconds                    how long a request waited for the batch worker
    dipair_stage_duration_seconds{kind, stage}       one batch call's time in a stage: first_stage, query_encoding,
                                                     document_encoding, gather, head (kind: docids, texts, search)
    dipair_batch_requests{kind}                      requests computed together in one call
    dipair_batch_candidates{kind}                    candidates (query-document pairs) of one call
    dipair_model_info{model, fingerprint}            1 for the model served

With ``serve --workers N`` every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (a temporary
folder the main process creates for them and removes at exit: prometheus_client's multiprocess mode), and a scrape,
whichever worker answers it, adds up all workers: counters and histograms over every worker since the service
started, including workers that have exited; the model info as last set.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "dipair_rerank.serve.access"
access_log = logging.getLogger(ACCESS_LOGGER)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_REQUESTS = (1, 2, 4, 8, 16, 32, 64)
BATCH_CANDIDATES = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)


def multiprocess_dir() -> str | None:
    """The folder shared by worker processes, when prometheus_client runs in multiprocess mode (it decides that
    from ``PROMETHEUS_MULTIPROC_DIR`` when first imported)."""
    from prometheus_client import values

    folder = os.environ.get(MULTIPROC_ENV)
    return folder if folder and values.ValueClass is not values.MutexValue else None


class ServeMetrics:
    """The service's metrics. In one process they live in a registry of their own (several apps in one process,
    as in tests, keep separate counts); in multiprocess mode in the shared folder, collected at each scrape."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.folder = multiprocess_dir()
        self.registry = None if self.folder else CollectorRegistry()
        at: dict[str, Any] = {"registry": self.registry}
        self.requests = Counter("dipair_requests", "Requests answered, by endpoint and HTTP status",
                                ("endpoint", "status"), **at)
        self.latency = Histogram("dipair_request_duration_seconds", "Request received to answer sent",
                                 ("endpoint",), buckets=SECONDS, **at)
        self.queue = Histogram("dipair_queue_duration_seconds", "Time a request waited for the batch worker",
                               buckets=SECONDS, **at)
        self.stages = Histogram("dipair_stage_duration_seconds", "One batch call's time in a stage of the query path",
                                ("kind", "stage"), buckets=SECONDS, **at)
        self.batch_requests = Histogram("dipair_batch_requests", "Requests computed together in one batch call",
                                        ("kind",), buckets=BATCH_REQUESTS, **at)
        self.batch_candidates = Histogram("dipair_batch_candidates", "Candidates scored in one batch call",
                                          ("kind",), buckets=BATCH_CANDIDATES, **at)
        self.model = Gauge("dipair_model_info", "The model served (1), by name and fingerprint",
                           ("model", "fingerprint"), multiprocess_mode="mostrecent", **at)
        self._model: tuple[str, str] | None = None

    # ----- recording ------------------------------------------------------------------------------------------
    def set_model(self, model: str | None, fingerprint: str) -> None:
        """Name the model served (after a model change the former one reads 0)."""
        labels = (model or "", fingerprint)
        if self._model is not None and self._model != labels:
            self.model.labels(*self._model).set(0)
        self.model.labels(*labels).set(1)
        self._model = labels

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_queue(self, ms: float) -> None:
        self.queue.observe(ms / 1000.0)

    def observe_batch(self, kind: str, requests: int, candidates: int, stage_ms: dict[str, float]) -> None:
        """One batch call (requests of one kind sharing a head call): its size and each stage's time."""
        self.batch_requests.labels(kind).observe(requests)
        self.batch_candidates.labels(kind).observe(candidates)
        for stage, ms in stage_ms.items():
            self.stages.labels(kind, stage).observe(ms / 1000.0)

    # ----- the scrape -----------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """(the Prometheus text format, its content type): every worker's values in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.folder)
        return generate_latest(registry), CONTENT_TYPE_LATEST


# ----- one line per request -------------------------------------------------------------------------------------
def configure_access_log() -> None:
    """Access lines at INFO to stderr, whatever the rest of logging is set to (uvicorn's own access log is off)."""
    if not any(getattr(handler, "_dipair_access", False) for handler in access_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._dipair_access = True  # type: ignore[attr-defined]
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


class Observe:
    """Count and time every HTTP request (metrics by endpoint and status) and log it in one line: client, method,
    path (as sent, without the query string), status, milliseconds. Headers are never logged."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, endpoints: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers: an exception it did not handle

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            self.metrics.observe_request(path if path in self.endpoints else "other", status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info('%s "%s %s" %d %.1f ms', client[0] if client else "-", scope["method"],
                                _printable(scope.get("raw_path") or path.encode()), status, seconds * 1000.0)


def _printable(raw: bytes, limit: int = 200) -> str:
    """A path as sent, safe on one log line: non-printable characters escaped, at most ``limit`` characters."""
    text = raw[:limit].decode("latin-1")
    text = "".join(ch if ch.isprintable() and ch != '"' else f"\\x{ord(ch):02x}" for ch in text)
    return text + ("..." if len(raw) > limit else "")
