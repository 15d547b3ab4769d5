"""One real ``dipair-rerank serve`` process (uvicorn) on a free loopback port: it answers only once warm, keeps
serving after a bad request, and on SIGTERM finishes the request in flight and exits 0."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them

START_TIMEOUT = 240  # a fresh process imports torch, transformers and the JVM: slow on a busy 2-core machine


def _request(port: int, method: str, path: str, payload=None, timeout: float = 60) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl and urllib3 do
        body = None if payload is None else json.dumps(payload)
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _start(tiny_index, *options: str) -> tuple[subprocess.Popen, int]:
    """The service on port 0 (the OS picks a free one; the command prints it): (process, port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dipair_rerank.cli", "serve", "--index", str(tiny_index), "--port", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
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
