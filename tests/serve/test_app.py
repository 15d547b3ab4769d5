"""Every endpoint through FastAPI's TestClient, every bad request (one-line JSON 4xx, then still serving), and
concurrent requests scoring as serial ones."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import TINY_DOCS
from tests.serve.conftest import MAX_BODY_BYTES, MAX_DOCUMENT_CHARS, MAX_DOCUMENTS

DOCIDS = [d for d, _ in TINY_DOCS]
TEXT = dict(TINY_DOCS)
GOOD = {"query": "quantum qubits", "docids": ["d2", "d6", "d1"]}


def test_health_names_the_model_and_the_index(client, tiny_model):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_fingerprint"] == tiny_model.fingerprint()
    assert body["documents"] == len(TINY_DOCS) and body["codec"] == "fp16" and body["first_stage"] == "bm25"


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/rerank", "/search", "/health"} <= set(paths)


def test_rerank_docids_equals_the_reranker(client, service):
    docids = ["d1", "d2", "d6", "d11", "d3"]
    body = client.post("/rerank", json={"query": "quantum qubits", "docids": docids}).json()
    expected = service.reranker.rerank("quantum qubits", docids)
    assert [r["docid"] for r in body["results"]] == [h.docid for h in expected]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert all(docids[r["index"]] == r["docid"] for r in body["results"])
    assert {"queue", "query_encoding", "gather", "head", "batch", "total"} <= set(body["timing_ms"])
    top = client.post("/rerank", json={"query": "quantum qubits", "docids": docids, "top_n": 2}).json()
    assert top["results"] == body["results"][:2]


def test_rerank_documents_equals_rerank_texts(client, service):
    texts = [TEXT[d] for d in ("d5", "d8", "d12", "d1")]
    body = client.post("/rerank", json={"query": "plants light", "documents": texts}).json()
    expected = service.reranker.rerank_texts("plants light", texts)
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert "docid" not in body["results"][0] and "document" not in body["results"][0]
    objects = client.post("/rerank", json={"query": "plants light", "documents": [{"text": t} for t in texts],
                                           "return_documents": True, "top_n": 1, "model": "ignored"}).json()
    best = body["results"][0]
    assert objects["results"] == [{**best, "document": {"text": texts[best["index"]]}}]


def test_search_equals_the_searcher(client, service):
    body = client.post("/search", json={"query": "quantum qubit", "k": 3, "depth": 5}).json()
    expected = service.searcher.search_many(["quantum qubit"], k=3, depth=5)[0]
    assert [h["docid"] for h in body["results"]] == [h.docid for h in expected] and len(expected) == 3
    assert [h["relevance_score"] for h in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert body["first_stage"] == "bm25" and "first_stage" in body["timing_ms"]


def _post(client, path, payload=None, *, raw=None, headers=None):
    if raw is not None:
        return client.post(path, content=raw, headers=headers or {"content-type": "application/json"})
    return client.post(path, json=payload)


BAD_REQUESTS = [
    ("malformed JSON", "/rerank", None, b'{"query": "x", "docids": [', 400, "malformed JSON"),
    ("no body", "/rerank", None, b"", 400, "no body"),
    ("not an object", "/rerank", ["query"], None, 422, "must be a JSON object"),
    ("not JSON content", "/rerank", None, b'{"query": "x", "docids": ["d1"]}', 400, "Content-Type: application/json"),
    ("missing query", "/rerank", {"docids": ["d1"]}, None, 422, "query: Field required"),
    ("empty query", "/rerank", {"query": "  ", "docids": ["d1"]}, None, 422, "query is empty"),
    ("non-string query", "/rerank", {"query": 3, "docids": ["d1"]}, None, 422, "query: Input should be a valid string"),
    ("query too long", "/rerank", {"query": "q" * 2001, "docids": ["d1"]}, None, 422, "query has 2001 characters"),
    ("both", "/rerank", {"query": "x", "docids": ["d1"], "documents": ["a"]}, None, 422, "not both"),
    ("neither", "/rerank", {"query": "x"}, None, 422, "give documents (texts) or docids"),
    ("too many", "/rerank", {"query": "x", "documents": ["a"] * (MAX_DOCUMENTS + 1)}, None, 422,
     f"over the limit of {MAX_DOCUMENTS}"),
    ("document too long", "/rerank", {"query": "x", "documents": ["ok", "a" * (MAX_DOCUMENT_CHARS + 1)]}, None, 422,
     "documents[1] has 501 characters"),
    ("non-string document", "/rerank", {"query": "x", "documents": ["ok", 7]}, None, 422,
     "documents[1]: Input should be a valid string"),
    ("empty documents", "/rerank", {"query": "x", "documents": []}, None, 422, "documents is empty"),
    ("unknown docids", "/rerank", {"query": "x", "docids": ["d1", "nope-1", "nope-2"]}, None, 422,
     "unknown docids (not in the index): nope-1, nope-2"),
    ("negative top_n", "/rerank", {"query": "x", "docids": ["d1"], "top_n": -1}, None, 422, "top_n:"),
    ("body too large", "/rerank", None, b'{"query": "' + b"q" * MAX_BODY_BYTES + b'"}', 413, "over the limit"),
    ("search without query", "/search", {"k": 3}, None, 422, "query: Field required"),
    ("search k < 1", "/search", {"query": "x", "k": 0}, None, 422, "k:"),
    ("search depth too deep", "/search", {"query": "x", "k": 3, "depth": MAX_DOCUMENTS + 1}, None, 422, "depth="),
]


@pytest.mark.parametrize("name, path, payload, raw, status, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_a_one_line_4xx_and_the_service_keeps_serving(client, name, path, payload, raw, status,
                                                                    message):
    headers = {"content-type": "text/plain"} if name == "not JSON content" else None
    response = _post(client, path, payload, raw=raw, headers=headers)
    assert response.status_code == status, response.text
    assert "\n" not in response.text.strip()
    body = response.json()
    assert list(body) == ["error"] and message in body["error"], body
    assert client.post("/rerank", json=GOOD).status_code == 200


def test_unknown_paths_and_methods_answer_in_the_same_shape(client):
    assert client.get("/nope").json() == {"error": "Not Found"} and client.get("/nope").status_code == 404
    wrong = client.get("/rerank")
    assert wrong.status_code == 405 and list(wrong.json()) == ["error"]


def test_many_unknown_docids_are_named_up_to_ten(client):
    body = client.post("/rerank", json={"query": "x", "docids": [f"x{i}" for i in range(MAX_DOCUMENTS)]}).json()
    assert "x0, x1" in body["error"] and "x7" in body["error"]
    from dipair_rerank.serve import app as app_module

    assert app_module.UNKNOWN_SHOWN == 10


def test_concurrent_requests_are_batched_and_score_as_serial_ones(client, service, monkeypatch):
    requests = []
    for i in range(16):
        query = ["quantum qubits", "pets", "interest rates", "plants"][i % 4] + f" {i}"
        kind = i % 3
        if kind == 0:
            requests.append(("/rerank", {"query": query, "docids": DOCIDS[i % 5 : i % 5 + 6]}))
        elif kind == 1:
            requests.append(("/rerank", {"query": query, "documents": [TEXT[d] for d in DOCIDS[i % 4 : i % 4 + 5]]}))
        else:
            requests.append(("/search", {"query": query.split()[0], "k": 4, "depth": 6}))
    serial = [client.post(path, json=payload).json()["results"] for path, payload in requests]

    # hold the worker on the first batch until every other request has queued, so the rest must share a batch
    batcher = service.batcher
    original = batcher._run_batch
    release = threading.Event()

    def gated(jobs, queued_ms):
        if not release.is_set():
            release.wait(10)
        return original(jobs, queued_ms)

    monkeypatch.setattr(batcher, "_run_batch", gated)
    before = batcher.stats.largest

    def send(request):
        return client.post(request[0], json=request[1])

    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(send, request) for request in requests]
        for _ in range(500):  # until the first is held and the other 15 wait in the queue
            if batcher._queue.qsize() >= len(requests) // 2:
                break
            threading.Event().wait(0.01)
        release.set()
        answers = [future.result() for future in futures]
    assert all(a.status_code == 200 for a in answers)
    assert batcher.stats.largest >= len(requests) // 2 > before  # the first batch may hold more than one
    assert max(a.json()["batch_size"] for a in answers) > 1
    for got, expected in zip((a.json()["results"] for a in answers), serial):
        assert [r.get("docid", r.get("index")) for r in got] == [r.get("docid", r.get("index")) for r in expected]
        assert [r["relevance_score"] for r in got] == pytest.approx([r["relevance_score"] for r in expected],
                                                                    abs=1e-4)


def test_describe_validation_error_reports_the_first_problem_only():
    from dipair_rerank.serve.app import describe_validation_error

    errors = [{"type": "string_type", "loc": ("body", "documents", 2), "msg": "Input should be a valid string"},
              {"type": "missing", "loc": ("body", "query"), "msg": "Field required"}]
    assert describe_validation_error(errors) == (422, "documents[2]: Input should be a valid string (and 1 more)")
    assert json.loads(json.dumps({"error": describe_validation_error([])[1]}))


def test_worker_processes_build_their_app_from_the_environment(tiny_index, monkeypatch):
    """What each process of ``serve --workers N`` runs: options as JSON in the environment -> a warm app; the API key
    in an environment variable of its own, never in the options."""
    from dataclasses import asdict

    from fastapi.testclient import TestClient

    from dipair_rerank.serve.app import OPTIONS_ENV, app_from_environment
    from dipair_rerank.serve.guard import API_KEY_ENV
    from dipair_rerank.serve.service import ServeOptions

    options = json.dumps(asdict(ServeOptions(index=str(tiny_index), threads=1, access_log=False)))
    monkeypatch.setenv(OPTIONS_ENV, options)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with TestClient(app_from_environment()) as worker:
        assert worker.get("/health").json()["threads"] == 1
        assert worker.post("/rerank", json=GOOD).status_code == 200
    monkeypatch.setenv(API_KEY_ENV, "worker-key")
    with TestClient(app_from_environment()) as worker:
        assert worker.post("/rerank", json=GOOD).status_code == 401
        assert worker.post("/rerank", json=GOOD, headers={"Authorization": "Bearer worker-key"}).status_code == 200
    assert "key" not in options


def test_warm_up_maps_the_cache_in(service, monkeypatch):
    """Before the port opens, the cache's rows are made resident: the first requests gather as later ones do."""
    calls = []
    monkeypatch.setattr(type(service.cache), "map_in", lambda cache, max_bytes=None: calls.append(cache) or True)
    service.warm_up()
    assert calls == [service.cache]
