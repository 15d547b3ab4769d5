"""RerankService: an index's re-ranker and first stage behind the micro-batcher; what the HTTP app calls.

The batcher's worker thread is the only thread that runs torch, ONNX Runtime or the JVM (Pyserini's searcher) after
start-up: the event loop validates requests and waits on futures (a reload loads and warms its new service on a
helper thread, over objects of its own, before any request reaches them). Requests in one batch are grouped by kind, each
group one call: docid re-ranks share one query encoding, one gather and one head call; text re-ranks share one
query encoding, one pass of the document branch and one head call; searches of the same depth share one
first-stage call and one head call.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import IndexIdentity, IndexLayout
from dipair_rerank.pipeline import DiPairSearcher, open_first_stage
from dipair_rerank.rerank import DiPairReranker, RankedHit
from dipair_rerank.serve.batching import MicroBatcher
from dipair_rerank.timing import StageTimer

logger = logging.getLogger(__name__)

FIRST_STAGES = ("bm25", "dense")
LOAD_ATTEMPTS = 3  # loads of an index whose folder was replaced (a build published) while it loaded
PROBLEMS_SHOWN = 3  # damaged files named in a failed verification, at most


@dataclass(frozen=True)
class ServeOptions:
    """What ``dipair-rerank serve`` is asked for (also passed, as JSON, to worker processes).

    Attributes:
        index: the index folder.
        first_stage: what /search retrieves with before re-ranking (dense needs an index built with --dense).
        threads: torch / ONNX Runtime / Lucene threads of this process (None: every core).
        batch_threads: threads of a batch of several requests (None: ``threads``); ``serve --workers N`` gives
            each worker its share of the cores for batches, and every core to a lone request.
        max_documents: candidates per /rerank request, and the largest k and depth of /search.
        max_document_chars: characters per document text (the model reads its first tokens only; longer texts
            are refused rather than tokenised in full).
        max_query_chars: characters per query.
        max_body_bytes: request bodies above this are refused (413) before being read whole or parsed (None:
            ``default_max_body_bytes`` of the limits above, room for the largest request they allow).
        max_wait_ms: how long a busy service's batch waits for more requests.
        max_batch_pairs: candidates in one batch at most: about 10 requests of 100. Why not more: the head's cost
            per pair rises beyond ~1,000 pairs (measured on DL19, one thread: 2.4 ms per 100 pairs at 500, 4.4 at
            1,500), and two batches of half the clients, taking turns, let one's HTTP work overlap the other's
            compute (16 clients: 136 requests/s capped at 1,000 pairs, 96 uncapped).
        text_batch_size: texts per document-encoder batch.
        heap_slack_mb: how far the C heap may grow past its working size before it is trimmed: RSS stays within
            this band over any number of requests (the re-ranker's batch-run default is 64 MB).
        access_log: one log line per request (client, method, path, status, milliseconds).
    """

    index: str
    first_stage: str = "bm25"
    threads: int | None = None
    batch_threads: int | None = None
    query_backend: str = "auto"
    max_documents: int = 1000
    max_document_chars: int = 20_000
    max_query_chars: int = 2_000
    max_body_bytes: int | None = None
    max_wait_ms: float = 2.0
    max_batch_pairs: int = 1024
    text_batch_size: int = 32
    heap_slack_mb: float = 16.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if self.max_body_bytes is None:
            object.__setattr__(self, "max_body_bytes", default_max_body_bytes(
                self.max_documents, self.max_document_chars, self.max_query_chars))


UTF8_MAX_BYTES = 4  # bytes of one character in UTF-8, at most
DOCUMENT_JSON_BYTES = 32  # around one document in a body: quotes, comma, {"text": ...}, indentation
BODY_SLACK_BYTES = 64 * 1024  # the rest: key names, top_n, return_documents, whitespace


def default_max_body_bytes(max_documents: int, max_document_chars: int, max_query_chars: int) -> int:
    """Room for the largest /rerank request the other limits allow, its texts sent as UTF-8: ``max_documents``
    texts of ``max_document_chars`` characters, 4 bytes each at most (about 76 MiB with the defaults). Non-ASCII
    texts sent as JSON \\u escapes (6 bytes a character, Python's json.dumps default) fit up to two thirds of
    those characters."""
    return (max_documents * (UTF8_MAX_BYTES * max_document_chars + DOCUMENT_JSON_BYTES)
            + UTF8_MAX_BYTES * max_query_chars + BODY_SLACK_BYTES)


@dataclass
class RerankJob:
    """Re-rank ``docids`` (from the cache) or ``texts`` (encoded now) for ``query``; scores come back in order."""

    query: str
    docids: list[str] | None = None
    texts: list[str] | None = None

    @property
    def size(self) -> int:
        return len(self.docids if self.docids is not None else self.texts or [])


@dataclass
class SearchJob:
    """First stage + DiPair: the top ``k``, the first ``depth`` candidates re-ranked."""

    query: str
    k: int
    depth: int

    @property
    def size(self) -> int:
        return max(self.k, self.depth)


BatchObserver = Callable[[str, int, int, dict[str, float]], None]
"""Called after each batch call with its kind (docids, texts, search), requests, candidates and stage times (ms)."""


class Outcome(NamedTuple):
    """A job's answer: scores in candidate order (rerank) or ranked hits (search), with its batch's timings."""

    value: list[float] | list[RankedHit]
    timing_ms: dict[str, float]
    batch_size: int


class RerankService:
    """Serve one index. ``start()`` before submitting jobs, ``stop()`` to finish them and end the worker."""

    def __init__(self, searcher: DiPairSearcher, options: ServeOptions, *, manifest: dict[str, Any] | None = None,
                 identity: IndexIdentity | None = None):
        self.searcher = searcher
        self.reranker = searcher.reranker
        self.cache = self.reranker.cache
        self.options = options
        self.manifest = manifest or {}
        self.identity = identity  # the build loaded (None: not read from a folder)
        self.batcher: MicroBatcher[RerankJob | SearchJob] = MicroBatcher(
            self._run_batch, max_wait_ms=options.max_wait_ms, size=lambda job: job.size,
            max_size=options.max_batch_pairs, on_exit=_detach_from_jvm)
        self.observe_batch: BatchObserver | None = None  # told of every batch call (the app's metrics)

    @classmethod
    def from_options(cls, options: ServeOptions, *, verify: bool = False) -> RerankService:
        """Load the index's model, cache and first stage, and warm every path, before any request is taken.

        Every file the service reads is opened (mapped) here, none later by path: a build published into the
        folder afterwards (a rename) leaves the loaded one intact. A build published while this loads would mix
        the two: the folder's identity is compared before and after, and the load repeated on the new build.
        ``verify``: re-hash the cache's files against the checksums recorded when it was built, refusing a damaged
        index (a reload's check: about a second per GB)."""
        if options.first_stage not in FIRST_STAGES:
            raise DiPairError(f"unknown first stage {options.first_stage!r} (choose {', '.join(FIRST_STAGES)})")
        layout = IndexLayout(options.index)
        for _ in range(LOAD_ATTEMPTS):
            identity = layout.identity()
            service = cls._open(layout, options, identity, verify)
            try:
                current = layout.identity()
            except DiPairError:
                current = None  # between the two renames of a publish
            if current == identity:
                service.warm_up()
                return service
            service.close()
            logger.warning("the index at %s was replaced while it loaded: loading the new build", options.index)
        raise DiPairError(f"the index at {options.index} was replaced each of {LOAD_ATTEMPTS} times it was loaded; "
                          "load it once its builds have finished")

    @classmethod
    def _open(cls, layout: IndexLayout, options: ServeOptions, identity: IndexIdentity, verify: bool
              ) -> RerankService:
        manifest = layout.manifest()
        reranker = DiPairReranker.from_index(
            options.index, threads=options.threads, batch_threads=options.batch_threads,
            query_backend=options.query_backend, heap_slack_mb=options.heap_slack_mb)
        try:
            if verify:
                problems = reranker.cache.verify()
                if problems:
                    more = f" (and {len(problems) - PROBLEMS_SHOWN} more)" if len(problems) > PROBLEMS_SHOWN else ""
                    named = [problem.replace(f"{layout.root}{os.sep}", "") for problem in problems[:PROBLEMS_SHOWN]]
                    raise DiPairError(f"the build in the folder is damaged: {'; '.join(named)}{more}")
            first_stage = open_first_stage(layout, options.first_stage)
        except BaseException:
            reranker.close()
            raise
        return cls(DiPairSearcher(reranker, first_stage), options, manifest=manifest, identity=identity)

    def warm_up(self) -> None:
        """First calls allocate, optimise (ONNX), JIT-compile (the JVM) and fault in cache rows: pay that before the
        port opens."""
        started = time.perf_counter()
        if not self.cache.map_in():  # every row resident and mapped: the first requests gather as fast as later ones
            logger.info("the cache is not mapped in ahead (over a quarter of memory, or unsupported): rows fault in "
                        "on their first request")
        self.reranker.warm_up()
        self.reranker.rerank_texts("warm up", ["a warm-up text", "another, a little longer, warm-up text"])
        self.searcher.search_many(["warm up", "a second warm-up query"], k=10)
        self.reranker.timer = StageTimer()
        logger.info("warmed up in %.1f s", time.perf_counter() - started)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def close(self) -> None:
        """Stop (the jobs queued are finished first), then release the index: Lucene's reader and the re-ranker's
        threads; the cache's maps and the model go with the last reference to this service."""
        self.stop()
        try:
            closer = getattr(self.searcher.first_stage, "close", None)
            if closer is not None:
                closer()
            self.reranker.close()
        finally:
            if threading.current_thread() is not threading.main_thread():
                _detach_from_jvm()  # a helper thread that called into the JVM (Lucene's close)

    # ----- what the app asks ----------------------------------------------------------------------------------
    def unknown_docids(self, docids: Sequence[str]) -> list[str]:
        """The docids not in the index, in request order (read-only lookup: safe beside the worker)."""
        rows = self.cache.rows(docids, strict=False)
        return [docids[i] for i in (rows < 0).nonzero()[0]]

    def health(self) -> dict[str, Any]:
        stats = self.batcher.stats
        return {
            "status": "ok" if self.batcher.running else "stopped",
            "index": str(self.options.index),
            "index_build": self.identity.build if self.identity else None,
            "index_published": self.identity.published if self.identity else None,
            "model": self.manifest.get("model"),
            "model_fingerprint": self.cache.model_fingerprint,
            "documents": self.cache.num_docs,
            "codec": self.cache.codec.name,
            "first_stage": self.options.first_stage,
            "max_documents": self.options.max_documents,
            "threads": self.reranker.threads,
            "batch_threads": self.reranker.batch_threads,
            "pid": os.getpid(),
            "served": {"requests": stats.jobs, "batches": stats.batches, "largest_batch": stats.largest},
        }

    # ----- the worker thread ----------------------------------------------------------------------------------
    def _run_batch(self, jobs: list[RerankJob | SearchJob], queued_ms: list[float]) -> list[Outcome]:
        groups: dict[tuple[str, int], list[int]] = {}
        for position, job in enumerate(jobs):
            if isinstance(job, SearchJob):
                key = ("search", job.depth)
            else:
                key = ("docids", 0) if job.docids is not None else ("texts", 0)
            groups.setdefault(key, []).append(position)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for (kind, depth), members in groups.items():
            group = [jobs[i] for i in members]
            timer = self.reranker.timer = StageTimer()  # a fresh timer per call: nothing accumulates over requests
            started = time.perf_counter()
            values = self._run_group(kind, depth, group)
            shared = {stage: round(sum(ms for ms, _ in entries), 3) for stage, entries in timer.batches.items()}
            batch_ms = round((time.perf_counter() - started) * 1000.0, 3)
            self._observe(kind, group, shared)
            shared["batch"] = batch_ms
            for position, value in zip(members, values):
                outcomes[position] = Outcome(value, {"queue": round(queued_ms[position], 3), **shared}, len(group))
        return outcomes  # type: ignore[return-value]  (every position filled above)

    def _observe(self, kind: str, group: list[Any], stage_ms: dict[str, float]) -> None:
        if self.observe_batch is not None:
            try:
                self.observe_batch(kind, len(group), sum(job.size for job in group), stage_ms)
            except Exception:  # metrics must never fail a batch
                logger.exception("recording a batch's metrics failed")

    def _run_group(self, kind: str, depth: int, jobs: list[Any]) -> list[Any]:
        queries = [job.query for job in jobs]
        if kind == "docids":
            return self.reranker.score_encoded(self.reranker.encode_queries(queries), [job.docids for job in jobs])
        if kind == "texts":
            return self.reranker.score_texts(queries, [job.texts for job in jobs],
                                             batch_size=self.options.text_batch_size)
        hits = self.searcher.search_many(queries, k=max(job.k for job in jobs), depth=depth,
                                         threads=self.reranker.batch_threads)
        return [found[: job.k] for found, job in zip(hits, jobs)]


def _detach_from_jvm() -> None:
    """A thread that called into the JVM must detach before it ends, or the JVM keeps its state forever."""
    jnius = sys.modules.get("jnius")
    if jnius is not None:
        try:
            jnius.detach()
        except Exception as exc:  # noqa: BLE001  (never attached, or the JVM is gone: nothing to release)
            logger.debug("jnius.detach: %s", exc)
