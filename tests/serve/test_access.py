"""Access control, body limits, /metrics and the access log, in process (FastAPI's TestClient); the same over a real
uvicorn with two workers is in test_server.py."""

from __future__ import annotations

import json
import logging

import pytest

from tests.serve.conftest import MAX_BODY_BYTES

pytest.importorskip("prometheus_client", reason="GET /metrics needs prometheus-client")

KEY = "k3y-for-tests_0123456789abcdef"
GOOD = {"query": "quantum qubits", "docids": ["d2", "d6", "d1"]}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def keyed(service):
    from fastapi.testclient import TestClient

    from dipair_rerank.serve.app import create_app

    with TestClient(create_app(service, api_key=KEY)) as test_client:
        yield test_client


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, by (name, sorted labels), through the Prometheus client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ----- the key --------------------------------------------------------------------------------------------------
ENDPOINTS = [("POST", "/rerank", GOOD, 200), ("POST", "/search", {"query": "qubit", "k": 2, "depth": 4}, 200),
             ("GET", "/metrics", None, 200), ("GET", "/docs", None, 200), ("GET", "/openapi.json", None, 200),
             ("POST", "/admin/reload", None, 200), ("GET", "/no-such-path", None, 404)]  # reload: nothing new here


@pytest.mark.parametrize("method, path, payload, status", ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_every_endpoint_but_health_needs_the_key(keyed, method, path, payload, status):
    for headers, message in (({}, "missing API key"), ({"Authorization": "Bearer wrong-key"}, "wrong API key"),
                             ({"Authorization": f"Basic {KEY}"}, "missing API key"),
                             ({"Authorization": f"Bearer {KEY}x"}, "wrong API key"),
                             ({"Authorization": "Bearer"}, "wrong API key")):
        refused = keyed.request(method, path, json=payload, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert "\n" not in refused.text and list(refused.json()) == ["error"]
        assert refused.json()["error"].startswith(message) and "wrong-key" not in refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
    answered = keyed.request(method, path, json=payload, headers=AUTH)
    assert answered.status_code == status, answered.text
    lower = keyed.request(method, path, json=payload, headers={"authorization": f"bearer  {KEY}"})
    assert lower.status_code == status


def test_health_is_open_without_the_key(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/health", headers={"Authorization": "Bearer wrong-key"}).status_code == 200


def test_without_a_key_every_endpoint_is_open(client):
    assert client.post("/rerank", json=GOOD).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_keys_that_cannot_travel_in_a_header_are_refused_without_being_named():
    from dipair_rerank.errors import DiPairError
    from dipair_rerank.serve.guard import API_KEY_ENV, resolve_api_key

    assert resolve_api_key(None, {}) is None
    assert resolve_api_key(None, {API_KEY_ENV: KEY}) == KEY
    assert resolve_api_key("from-argument", {API_KEY_ENV: KEY}) == "from-argument"
    for bad, source in (("", "--api-key"), ("with space", "--api-key"), ("ключ", "--api-key")):
        with pytest.raises(DiPairError, match=source) as raised:
            resolve_api_key(bad, {})
        assert not bad or bad not in str(raised.value)
    with pytest.raises(DiPairError, match=API_KEY_ENV):
        resolve_api_key(None, {API_KEY_ENV: ""})


def test_loopback_hosts():
    from dipair_rerank.serve.guard import exposure_warning, is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "example.org"))
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("0.0.0.0", KEY) is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning.startswith("warning: ") and "\n" not in warning and "DIPAIR_API_KEY" in warning


def test_serve_warns_when_it_listens_beyond_loopback_without_a_key(tmp_path, capsys, monkeypatch):
    """The warning comes first, in one line, before anything is loaded (here the index is missing)."""
    from dipair_rerank.cli import main
    from dipair_rerank.serve.guard import API_KEY_ENV

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["serve", "--index", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("warning: listening on 0.0.0.0 without an API key"), err
    assert err[1].startswith("error: ") and "no index at" in err[1]

    for argv in (["--host", "127.0.0.1"], ["--host", "0.0.0.0", "--api-key", KEY]):
        assert main(["serve", "--index", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no index at" in err[0] and KEY not in err[0], err
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert main(["serve", "--index", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no index at" in err[0], err
    monkeypatch.setenv(API_KEY_ENV, "")
    assert main(["serve", "--index", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {API_KEY_ENV} is empty: give a key, or leave it unset to serve without one"]


# ----- the body -------------------------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_by_content_length_or_chunked(keyed):
    body = b'{"query": "' + b"q" * MAX_BODY_BYTES + b'", "docids": ["d1"]}'
    declared = keyed.post("/rerank", content=body, headers={**AUTH, "content-type": "application/json"})

    def chunks():  # no Content-Length: sent chunked, counted as it is read
        for start in range(0, len(body), 8192):
            yield body[start: start + 8192]

    chunked = keyed.post("/rerank", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    for refused in (declared, chunked):
        assert refused.status_code == 413, refused.text
        assert refused.json() == {"error": f"request body over the limit of {MAX_BODY_BYTES} bytes "
                                           "(--max-body-bytes)"}
        assert refused.headers["connection"] == "close"
    assert keyed.post("/rerank", json=GOOD, headers=AUTH).status_code == 200
    small = json.dumps(GOOD).encode()
    assert keyed.post("/rerank", content=iter([small[:10], small[10:]]),
                      headers={**AUTH, "content-type": "application/json"}).status_code == 200


def test_the_default_body_limit_holds_the_largest_request_the_other_limits_allow():
    from dipair_rerank.serve.service import ServeOptions, default_max_body_bytes

    assert ServeOptions(index="x").max_body_bytes == default_max_body_bytes(1000, 20_000, 2_000)
    assert 70 * 2**20 < ServeOptions(index="x").max_body_bytes < 80 * 2**20
    assert ServeOptions(index="x", max_body_bytes=1234).max_body_bytes == 1234
    options = ServeOptions(index="x", max_documents=50, max_document_chars=2000, max_query_chars=100)
    largest = {"query": "\U0001f600" * 100, "documents": [{"text": "\U0001f600" * 2000}] * 50, "top_n": 50,
               "return_documents": True}
    body = json.dumps(largest, ensure_ascii=False, indent=4).encode()  # 4 bytes a character, and indented
    assert len(body) <= options.max_body_bytes


# ----- metrics and the access log ------------------------------------------------------------------------------
def test_metrics_count_requests_and_time_each_stage(keyed, tiny_model):
    before = metric_samples(keyed.get("/metrics", headers=AUTH).text)
    assert keyed.post("/rerank", json=GOOD, headers=AUTH).status_code == 200
    assert keyed.post("/rerank", json={"query": "plants", "documents": ["a leaf", "a qubit"]},
                      headers=AUTH).status_code == 200
    assert keyed.post("/search", json={"query": "qubit", "k": 2, "depth": 4}, headers=AUTH).status_code == 200
    assert keyed.post("/rerank", json={"query": "", "docids": ["d1"]}, headers=AUTH).status_code == 422
    assert keyed.post("/rerank", json=GOOD).status_code == 401
    scraped = keyed.get("/metrics", headers=AUTH)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    after = metric_samples(scraped.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("dipair_requests_total", endpoint="/rerank", status="200") == 2
    assert grew("dipair_requests_total", endpoint="/search", status="200") == 1
    assert grew("dipair_requests_total", endpoint="/rerank", status="422") == 1
    assert grew("dipair_requests_total", endpoint="/rerank", status="401") == 1
    assert grew("dipair_requests_total", endpoint="/metrics", status="200") == 1  # the first scrape
    assert grew("dipair_request_duration_seconds_count", endpoint="/rerank") == 4
    for kind, stages in (("docids", ("query_encoding", "gather", "head")), ("texts", ("document_encoding", "head")),
                         ("search", ("first_stage", "head"))):
        for stage in stages:
            assert grew("dipair_stage_duration_seconds_count", kind=kind, stage=stage) == 1, (kind, stage)
            assert grew("dipair_stage_duration_seconds_sum", kind=kind, stage=stage) > 0
            assert grew("dipair_stage_duration_seconds_bucket", kind=kind, stage=stage, le="+Inf") == 1
        assert grew("dipair_batch_requests_count", kind=kind) == 1
        assert grew("dipair_batch_requests_sum", kind=kind) == 1
    assert grew("dipair_batch_candidates_sum", kind="docids") == 3
    assert grew("dipair_queue_duration_seconds_count") == 3
    model = [labels for (name, labels), v in after.items() if name == "dipair_model_info" and v == 1]
    assert [dict(labels)["fingerprint"] for labels in model] == [tiny_model.fingerprint()]


def test_one_access_line_per_request_and_never_the_key(keyed, caplog, monkeypatch):
    from dipair_rerank.serve import metrics

    monkeypatch.setattr(metrics.access_log, "propagate", True)  # a worker's app sends it to stderr itself
    caplog.set_level(logging.DEBUG)  # every logger, every level
    answers = [keyed.post("/rerank", json=GOOD, headers=AUTH),
               keyed.post("/rerank", json=GOOD, headers={"Authorization": "Bearer wrong-key-4242"}),
               keyed.get(f"/health?token={KEY}"),
               keyed.get("/metrics", headers=AUTH)]
    assert [a.status_code for a in answers] == [200, 401, 200, 200]
    lines = [r.getMessage() for r in caplog.records if r.name == metrics.ACCESS_LOGGER]
    assert len(lines) == 4, lines
    for line, expected in zip(lines, ('"POST /rerank" 200', '"POST /rerank" 401', '"GET /health" 200',
                                      '"GET /metrics" 200')):
        assert expected in line and line.endswith(" ms"), line
    served = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("httpx"))
    assert KEY not in served and "wrong-key-4242" not in served  # (the client's own log names its URL)
    assert all(KEY not in a.text and "wrong-key-4242" not in a.text for a in answers[:3])


def test_access_log_goes_to_stderr_once(monkeypatch, capsys):
    from dipair_rerank.serve import metrics

    logger = metrics.access_log
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    metrics.configure_access_log()
    metrics.configure_access_log()
    assert len(logger.handlers) == 1 and not logger.propagate
    logger.info('%s "%s %s" %d %.1f ms', "127.0.0.1", "GET", metrics._printable(b"/a\x1b[31m\"b"), 200, 1.5)
    err = capsys.readouterr().err
    assert err == 'INFO dipair_rerank.serve.access: 127.0.0.1 "GET /a\\x1b[31m\\x22b" 200 1.5 ms\n'
