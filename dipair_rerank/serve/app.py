"""The HTTP app over a RerankService: POST /rerank, POST /search, GET /health, GET /metrics,
POST /admin/reload, and FastAPI's /docs.

``/rerank`` takes the common re-rank API shape (Cohere, Jina, Text Embeddings Inference: ``query``, ``documents``,
``top_n``; answers ``results: [{index, relevance_score}]``), so existing re-rank clients can point at it, or
``docids`` of the index, which use its cache and never encode a document.

Every error is one line of JSON, ``{"error": "..."}``, with a 4xx status for the client's mistakes: FastAPI's
validation errors (a list of dicts per field) are reduced to their first problem, said in words.

With an API key every endpoint but /health needs ``Authorization: Bearer <key>`` (guard.py); every request is
counted, timed and logged in one line (metrics.py). The endpoints read the service from a ``LiveService``, which a
reload swaps whole (reload.py): each request is answered by one build of the index.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictStr, field_validator, model_validator
from pydantic_core import to_json
from starlette.exceptions import HTTPException

from dipair_rerank import __version__
from dipair_rerank.errors import DiPairError
from dipair_rerank.serve.batching import BatcherStopped
from dipair_rerank.serve.guard import API_KEY_ENV, BodyLimit, RequireKey, check_api_key
from dipair_rerank.serve.metrics import Observe, ServeMetrics, configure_access_log
from dipair_rerank.serve.reload import VERIFY_ENV, Generation, LiveService, ReloadTriggers, configure_event_log
from dipair_rerank.serve.service import Outcome, RerankJob, RerankService, SearchJob, ServeOptions

logger = logging.getLogger(__name__)

OPTIONS_ENV = "DIPAIR_SERVE_OPTIONS"
"""ServeOptions as JSON, for the worker processes of ``serve --workers N`` (each builds its own service). The API
key is not among them: it travels in ``DIPAIR_API_KEY`` (guard.API_KEY_ENV)."""

UNKNOWN_SHOWN = 10  # unknown docids named in an error, at most


# ----- request and response shapes (the OpenAPI schema at /docs) ----------------------------------------------------
def _check_query(query: str) -> None:
    if not query.strip():
        raise ValueError("query is empty")


class RerankRequest(BaseModel):
    """Either ``documents`` (texts) or ``docids`` (of the index), not both."""

    query: StrictStr = Field(description="the search query", examples=["what is a qubit"])
    documents: list[StrictStr] | None = Field(
        None, description='candidate texts, as strings or {"text": ...} objects; results index into this list')
    docids: list[StrictStr] | None = Field(
        None, description="candidate docids of the index: their cached blocks are scored, nothing is encoded")
    top_n: int | None = Field(None, ge=1, description="return the best top_n only (default: all, best first)")
    return_documents: bool = Field(False, description="include each result's text (with documents)")

    @field_validator("documents", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        """Accept Cohere/Jina-style ``{"text": ...}`` objects beside plain strings."""
        if isinstance(value, list):
            return [item["text"] if isinstance(item, dict) and "text" in item else item for item in value]
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RerankRequest:
        _check_query(self.query)
        if self.documents is not None and self.docids is not None:
            raise ValueError("give documents or docids, not both")
        if self.documents is None and self.docids is None:
            raise ValueError("give documents (texts) or docids (of the index)")
        return self


class SearchRequest(BaseModel):
    query: StrictStr = Field(description="the search query", examples=["what is a qubit"])
    k: int = Field(10, ge=1, description="results to return")
    depth: int = Field(100, ge=1, description="first-stage candidates re-ranked by DiPair (the rest follow them)")

    @model_validator(mode="after")
    def _query(self) -> SearchRequest:
        _check_query(self.query)
        return self


class TextDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="position in the request's documents or docids")
    docid: str | None = Field(None, description="with docids only")
    relevance_score: float
    document: TextDocument | None = Field(None, description="with return_documents only")


class RerankResponse(BaseModel):
    results: list[RerankResult]
    timing_ms: dict[str, float] = Field(description="queue, the batch's stages (shared by its requests), total")
    batch_size: int = Field(description="requests computed together in this request's batch")


class SearchHit(BaseModel):
    docid: str
    relevance_score: float = Field(description="DiPair's score; candidates beyond depth keep first-stage order "
                                   "below every re-ranked one")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    first_stage: str
    timing_ms: dict[str, float]
    batch_size: int


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 503)
}


class ReloadResponse(BaseModel):
    status: str = Field(description="reloaded (a new build swapped in) or unchanged (the folder's build was loaded)")
    message: str
    index_build: str | None = Field(description="the build now served (the manifest's sha256, first 16 digits)")
    pid: int = Field(description="the worker process that answered")


class Answer(JSONResponse):
    """A JSON answer rendered by pydantic-core, several times faster than the json module on a 100-result answer:
    time the event loop spends beside every batch."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


# ----- errors as one line of JSON -----------------------------------------------------------------------------------
def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return Answer({"error": message}, status_code=status, headers=headers)


def describe_validation_error(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """(status, one line) for FastAPI's list of validation errors: the first problem, where it is."""
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    kind = first.get("type", "")
    path = [part for part in first.get("loc", ()) if part != "body"]
    if kind == "json_invalid":
        position = f" at character {path[0]}" if path else ""
        return 400, f"malformed JSON ({first.get('ctx', {}).get('error', 'decode error')}{position})"
    if not path and kind == "missing":
        return 400, "the request has no body: send a JSON object"
    if not path and kind in ("model_attributes_type", "dict_type", "model_type"):
        if isinstance(first.get("input"), (bytes, str)):
            return 400, "the body must be a JSON object sent with Content-Type: application/json"
        return 422, "the body must be a JSON object"
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {message}{more}" if where else f"{message}{more}"


# ----- the app ------------------------------------------------------------------------------------------------------
def create_app(service: RerankService, *, api_key: str | None = None, generation: Generation | None = None
               ) -> FastAPI:
    """The app over ``service`` (loaded and warmed already); its lifespan starts and stops the batch worker.
    With ``api_key`` every endpoint but /health answers 401 unless sent ``Authorization: Bearer <api_key>``.

    SIGHUP (where the app's event loop runs on the main thread) and POST /admin/reload reload the index in place;
    ``generation``: this is a worker of ``serve --workers N``, which also reloads when the main process says so."""
    options = service.options
    metrics = ServeMetrics()

    def adopt(new: RerankService) -> None:
        metrics.set_model(new.manifest.get("model"), new.cache.model_fingerprint)
        new.observe_batch = metrics.observe_batch

    adopt(service)
    live = LiveService(service, adopt=adopt)
    triggers = ReloadTriggers(live, generation)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live.current.start()
        triggers.start()
        try:
            yield
        finally:
            await triggers.stop()
            live.current.stop()  # uvicorn has let the requests in flight finish; this finishes anything still queued

    app = FastAPI(title="dipair-rerank", version=__version__, lifespan=lifespan,
                  description="DiPair re-ranking over a Pyserini index: re-rank texts or the index's docids, or "
                  "search (first stage + DiPair). Concurrent requests are micro-batched into one head call.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        return error_response(*describe_validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(_request: Any, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def compute(service: RerankService, job: RerankJob | SearchJob) -> Outcome:
        try:
            outcome = await service.batcher.submit(job)
            metrics.observe_queue(outcome.timing_ms["queue"])
            return outcome
        except BatcherStopped as exc:
            raise HTTPException(503, str(exc)) from exc
        except DiPairError as exc:
            raise HTTPException(422, str(exc)) from exc
        except Exception as exc:  # a bug: answer in one line, keep the traceback in the log, keep serving
            logger.exception("request failed")
            raise HTTPException(500, f"internal error ({type(exc).__name__}: {str(exc)[:200]})") from exc

    def check_query(query: str) -> None:
        if len(query) > options.max_query_chars:
            raise HTTPException(422, f"query has {len(query)} characters, over the limit of {options.max_query_chars}")

    @app.post("/rerank", response_model=None, responses={200: {"model": RerankResponse}, **ERRORS})
    async def rerank(request: RerankRequest) -> JSONResponse:
        """Score each candidate for the query; results best first (ties by position)."""
        started = time.perf_counter()
        service = live.current  # one build for the whole request: a reload swaps this reference, never its parts
        check_query(request.query)
        name = "documents" if request.documents is not None else "docids"
        candidates: list[str] = request.documents if request.documents is not None else request.docids  # type: ignore[assignment]
        if not candidates:
            raise HTTPException(422, f"{name} is empty: give at least one")
        if len(candidates) > options.max_documents:
            raise HTTPException(422, f"{len(candidates)} {name}, over the limit of {options.max_documents} "
                                "(--max-documents)")
        if request.documents is not None:
            for position, text in enumerate(request.documents):
                if len(text) > options.max_document_chars:
                    raise HTTPException(422, f"documents[{position}] has {len(text)} characters, over the limit of "
                                        f"{options.max_document_chars} (--max-document-chars)")
            job = RerankJob(request.query, texts=request.documents)
        else:
            unknown = service.unknown_docids(candidates)
            if unknown:
                named = ", ".join(unknown[:UNKNOWN_SHOWN])
                more = f" and {len(unknown) - UNKNOWN_SHOWN} more" if len(unknown) > UNKNOWN_SHOWN else ""
                raise HTTPException(422, f"unknown docids (not in the index): {named}{more}")
            job = RerankJob(request.query, docids=candidates)
        outcome = await compute(service, job)
        scores: list[float] = outcome.value  # type: ignore[assignment]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: request.top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if request.docids is not None:
                result["docid"] = request.docids[i]
            elif request.return_documents:
                result["document"] = {"text": candidates[i]}
            results.append(result)
        return Answer({"results": results, "timing_ms": _total(outcome, started),
                             "batch_size": outcome.batch_size})

    @app.post("/search", response_model=None, responses={200: {"model": SearchResponse}, **ERRORS})
    async def search(request: SearchRequest) -> JSONResponse:
        """The index's first stage, then DiPair over its top ``depth``; the top ``k``, best first."""
        started = time.perf_counter()
        check_query(request.query)
        for name in ("k", "depth"):
            if getattr(request, name) > options.max_documents:
                raise HTTPException(422, f"{name}={getattr(request, name)} is over the limit of "
                                    f"{options.max_documents} (--max-documents)")
        outcome = await compute(live.current, SearchJob(request.query, request.k, request.depth))
        results = [{"docid": hit.docid, "relevance_score": hit.score} for hit in outcome.value]  # type: ignore[union-attr]
        return Answer({"results": results, "first_stage": options.first_stage,
                             "timing_ms": _total(outcome, started), "batch_size": outcome.batch_size})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The model (fingerprint), the index (its build: the manifest's sha256, and when it was published;
        documents, codec), this worker's pid and what it has served."""
        return live.current.health()

    @app.post("/admin/reload", response_model=None, responses={200: {"model": ReloadResponse}, 409: {
        "model": ErrorResponse, "description": "the folder's build could not be loaded; the loaded one is served"},
        **ERRORS})
    async def reload() -> JSONResponse:
        """Serve the build the index folder holds now: loaded aside (checksums verified, warmed), then swapped
        in; requests are answered throughout, each by one build. A build that cannot be loaded (damaged,
        incompatible, missing) is refused with 409 and the reason. With several workers, this one reloads
        before answering and the others follow (GET /health says which build a worker serves)."""
        outcome = await live.reload("POST /admin/reload")
        if outcome.ok and generation is not None:
            generation.ask_main()
        return Answer(outcome.as_dict(), status_code=200 if outcome.ok else 409)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:  # a plain def: FastAPI runs it on a thread (multiprocess mode reads files)
        """Prometheus text format: requests by endpoint and status, latency per request and per stage, batch sizes,
        the model's fingerprint; with several workers, all of them added up."""
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    # added innermost first; a request meets them in the other order: counted and logged (whatever its answer),
    # refused without the key before its body is read, refused over the body limit before it is parsed
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)
    app.add_middleware(Observe, metrics=metrics, endpoints=frozenset(route.path for route in app.routes))
    return app


def _total(outcome: Outcome, started: float) -> dict[str, float]:
    return {**outcome.timing_ms, "total": round((time.perf_counter() - started) * 1000.0, 3)}


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of ``serve --workers N``: options from DIPAIR_SERVE_OPTIONS,
    the API key (if any) from DIPAIR_API_KEY. uvicorn listens on the shared socket only once this has returned:
    a worker (a replacement too) takes no connection before it has loaded and warmed its index."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app handles it: by default SIGHUP ends the process
    options = ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))
    api_key = os.environ.get(API_KEY_ENV)
    if api_key is not None:
        check_api_key(api_key, API_KEY_ENV)
    if options.access_log:
        configure_access_log()
    configure_event_log()
    generation = Generation.from_environment()  # read before loading: a later reload count means a later SIGHUP
    service = RerankService.from_options(options, verify=os.environ.get(VERIFY_ENV) == "1")
    return create_app(service, api_key=api_key, generation=generation)
