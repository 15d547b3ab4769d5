"""One real ``dipair-rerank serve`` process (uvicorn) on a free loopback port: it answers only once warm, keeps
serving after a bad request, and on SIGTERM finishes the request in flight and exits 0."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them

START_TIMEOUT = 240  # a fresh process imports torch, transformers and the JVM: slow on a busy 2-core machine


def _request(port: int, method: str, path: str, payload=None, timeout: float = 60, key: str | None = None,
             raw: bool = False) -> tuple[int, dict | str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl and urllib3 do
        body = None if payload is None else json.dumps(payload)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
        return response.status, content.decode() if raw else json.loads(content)
    finally:
        connection.close()


def _start(tiny_index, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """The service on port 0 (the OS picks a free one; the command prints it): (process, port). Everything it
    writes (stdout and stderr) collects in ``process.output``, a list of lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dipair_rerank.cli", "serve", "--index", str(tiny_index), "--port", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    lines: queue.Queue = queue.Queue()
    process.output = []  # type: ignore[attr-defined]

    def drain() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            process.output.append(line)  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    port, seen, deadline = None, [], time.monotonic() + START_TIMEOUT
    while port is None and time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(r"serving .* at http://127\.0\.0\.1:(\d+)", line)
        port = int(match.group(1)) if match else None
    if port is None:
        _kill_all(process)
        pytest.fail(f"the service did not start: {''.join(seen)[-2000:]}")
    return process, port


def _kill_all(process: subprocess.Popen) -> None:
    """Kill the service and its worker processes (its own process group): a failed test leaves nothing running."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture()
def server(tiny_index):
    """One worker process (--threads 1); yields (process, port)."""
    process, port = _start(tiny_index, "--threads", "1", "--max-documents", "5000")
    try:
        yield process, port
    finally:
        _kill_all(process)


def test_two_workers_give_a_batch_half_the_threads_and_exit_zero_on_sigterm(tiny_index):
    process, port = _start(tiny_index, "--threads", "2")  # --workers defaults to 2 with 2 threads
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the port answers once a worker has loaded
            try:
                status, health = _request(port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.5)
        assert status == 200 and (health["threads"], health["batch_threads"]) == (2, 1)
        status, answer = _request(port, "POST", "/rerank", {"query": "quantum qubits", "docids": ["d2", "d6"]})
        assert status == 200 and len(answer["results"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        _kill_all(process)


def test_real_process_serves_then_drains_on_sigterm_and_exits_zero(server):
    process, port = server
    status, health = _request(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["documents"] == 12
    status, answer = _request(port, "POST", "/rerank", {"query": "quantum qubits", "docids": ["d2", "d6", "d1"]})
    assert status == 200 and len(answer["results"]) == 3
    status, answer = _request(port, "POST", "/rerank", {"query": "", "docids": ["d2"]})
    assert status == 422 and answer == {"error": "query is empty"}
    status, answer = _request(port, "POST", "/search", {"query": "quantum qubit", "k": 2, "depth": 5})
    assert status == 200 and len(answer["results"]) == 2

    # a request long enough to be in flight when SIGTERM arrives: 5,000 texts through the document branch
    texts = [f"document {i} about qubits, pets and interest rates" for i in range(5000)]
    outcome: dict = {}

    def slow() -> None:
        outcome["answer"] = _request(port, "POST", "/rerank", {"query": "qubits", "documents": texts}, timeout=240)

    sender = threading.Thread(target=slow)
    served = health["served"]["requests"]
    sender.start()
    for _ in range(2400):  # until the worker has taken it (the count rises as its batch starts)
        if _request(port, "GET", "/health")[1]["served"]["requests"] > served:
            break
        time.sleep(0.05)
    assert sender.is_alive()  # still waiting for its answer
    process.send_signal(signal.SIGTERM)
    sender.join(240)
    assert process.wait(120) == 0
    status, answer = outcome["answer"]
    assert status == 200 and len(answer["results"]) == len(texts)


def test_bad_serve_arguments_fail_in_one_line_before_loading(tiny_index, tmp_path, capsys):
    from dipair_rerank.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for argv, message in (
            (["serve", "--index", str(tmp_path)], "no index at"),
            (["serve", "--index", str(tiny_index), "--workers", "0"], "--workers must be at least 1"),
            (["serve", "--index", str(tiny_index), "--max-documents", "0"], "--max-documents must be at least 1"),
            (["serve", "--index", str(tiny_index), "--port", str(taken.getsockname()[1])], "cannot listen on"),
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    finally:
        taken.close()


def test_accepted_connections_have_nagle_off():
    """The pre-bound socket says it is TCP, so asyncio sets TCP_NODELAY on each connection (without it every
    keep-alive request after the first waits ~40 ms for a delayed ACK)."""
    import asyncio

    from dipair_rerank.serve.server import bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=bind("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(seen, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) == 1


def _raw_post(port: int, headers: list[str], chunks=(), limit: int = 0) -> tuple[int, dict, dict, int]:
    """POST /rerank by hand: the headers, then ``chunks`` one by one, stopping as soon as the server answers (the
    rest of the body, and a chunked body's last chunk, are never sent): (status, headers, answer, bytes sent).
    Past ``limit`` bytes the server must answer: then each send waits up to 10 s for it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        head = "POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock.sendall((head + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0.05 if sent <= limit else 10)[0]:
                break
            sock.sendall(chunk)
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read()), sent
    finally:
        sock.close()


def _workers(pid: int) -> list[int]:
    """The worker processes under ``pid`` (spawned by multiprocessing; not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in children.read_text().split()] if children.is_file() else []
    return [child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def test_key_body_limit_metrics_and_access_log_on_a_real_service_with_two_workers(tiny_index):
    """Two worker processes, the key from the environment: 401 without it or with a wrong one, /health open; bodies
    over the limit refused before they are sent whole; /metrics adds up both workers; one access line per request;
    the key in no output, command line or options; the metrics folder removed at exit."""
    from tests.serve.test_access import metric_samples, value

    key, limit = secrets.token_urlsafe(24), 65536
    env = {key_: v for key_, v in os.environ.items() if key_ != "PROMETHEUS_MULTIPROC_DIR"}
    process, port = _start(tiny_index, "--threads", "2", "--workers", "2", "--max-body-bytes", str(limit), "--verbose",
                           env={**env, "DIPAIR_API_KEY": key})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the port answers once a worker has loaded
            try:
                assert _request(port, "GET", "/health")[0] == 200  # no key needed
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.5)
        workers = _workers(process.pid)
        assert len(workers) == 2
        folders = {_environ(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in workers}
        assert len(folders) == 1
        folder = Path(folders.pop())
        while {int(f.stem.rsplit("_", 1)[1]) for f in folder.glob("gauge_*.db")} != set(workers):
            assert time.monotonic() < deadline and process.poll() is None  # until both have loaded (and say so)
            time.sleep(0.5)

        good = {"query": "quantum qubits", "docids": ["d2", "d6"]}
        status, answer = _request(port, "POST", "/rerank", good)
        assert status == 401 and answer == {"error": "missing API key: send the header Authorization: Bearer <key>"}
        assert _request(port, "POST", "/rerank", good, key="wrong-key-4242") == (401, {"error": "wrong API key"})
        for _ in range(6):  # each on a new connection: either worker may take it
            status, answer = _request(port, "POST", "/rerank", good, key=key)
            assert status == 200 and len(answer["results"]) == 2

        # a huge declared body: refused at once, by the key first, then by its size; a chunked one once past the limit
        huge = ["Content-Length: 10000000000"]
        status, _, answer, _ = _raw_post(port, huge)
        assert status == 401 and answer["error"].startswith("missing API key")
        status, headers, answer, _ = _raw_post(port, [*huge, f"Authorization: Bearer {key}"])
        assert (status, headers["connection"]) == (413, "close") and "over the limit of 65536 bytes" in answer["error"]
        piece = b"x" * 8000  # with its framing (8 bytes), the data passes the limit in the chunk the sent bytes do
        chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(64))  # 512 KiB, never the closing chunk
        status, headers, answer, sent = _raw_post(port, ["Transfer-Encoding: chunked", f"Authorization: Bearer {key}"],
                                                  chunks, limit)
        assert (status, headers["connection"]) == (413, "close") and "over the limit" in answer["error"]
        assert limit < sent <= limit + 2 * (len(piece) + 8), sent
        assert _request(port, "POST", "/rerank", good, key=key)[0] == 200

        # /metrics: whichever worker answers, the counts of both
        expected = {("200",): 7, ("401",): 3, ("413",): 2}
        deadline = time.monotonic() + 30
        while True:  # a worker records a request just after answering it: wait for the last ones
            status, text = _request(port, "GET", "/metrics", key=key, raw=True)
            samples = metric_samples(text)
            counts = {(code,): value(samples, "dipair_requests_total", endpoint="/rerank", status=code)
                      for (code,) in expected}
            if counts == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200 and counts == expected
        for _ in range(4):
            samples = metric_samples(_request(port, "GET", "/metrics", key=key, raw=True)[1])
            assert value(samples, "dipair_requests_total", endpoint="/rerank", status="200") == 7
            assert 1 <= value(samples, "dipair_stage_duration_seconds_count", kind="docids", stage="head") <= 7
            assert value(samples, "dipair_request_duration_seconds_count", endpoint="/rerank") == 12
            models = [dict(labels) for (name, labels), v in samples.items() if name == "dipair_model_info" and v == 1]
            assert len(models) == 1 and len(models[0]["fingerprint"]) >= 12

        # the key: in the workers' environment, not on their command lines nor in their options
        for pid in workers:
            assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = _environ(pid)
            assert environ["DIPAIR_API_KEY"] == key and key not in environ["DIPAIR_SERVE_OPTIONS"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        assert not folder.exists()
        output = "".join(process.output)
        assert key not in output and "wrong-key-4242" not in output
        access = [line for line in output.splitlines() if line.startswith("INFO dipair_rerank.serve.access: ")]
        assert sum('"POST /rerank" 200 ' in line for line in access) == 7, output[-3000:]
        assert sum('"POST /rerank" 401 ' in line for line in access) == 3
        assert sum('"POST /rerank" 413 ' in line for line in access) == 2
        assert not any("uvicorn.access" in line for line in output.splitlines())
    finally:
        _kill_all(process)
