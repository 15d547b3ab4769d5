"""Faults under load on a real ``dipair-rerank serve --workers 2`` (uvicorn on loopback): a worker killed with
SIGKILL, and an index rebuilt into the folder being served, then reloaded (SIGHUP), then a damaged build refused.

Client threads send a fixed set of requests round-robin, each on a new connection, until told to stop (or a bound);
every answer is compared with the answers each build gives alone, computed in-process beforehand."""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import TINY_DOCS, write_jsonl
from tests.serve.conftest import REQUESTS, answer_scores, flip_a_byte, publish, same_scores
from tests.serve.test_server import START_TIMEOUT, _kill_all, _request, _start, _workers

pytestmark = pytest.mark.slow

MAX_REQUESTS = 20_000  # per client thread: the loops stop themselves even if a test forgets to
CLIENT_TIMEOUT = 60.0


@dataclass
class Record:
    started: float
    ended: float
    request: int
    outcome: str  # a build's name, "wrong", "status NNN" or "error: <exception>"


@dataclass
class Load:
    """``threads`` clients sending REQUESTS round-robin on new connections; each answer labelled by ``builds``
    (name -> expected answers, one per request): the build it equals, else "wrong"."""

    port: int
    builds: dict[str, list]
    key: str | None = None
    threads: int = 2
    requests: list = field(default_factory=lambda: list(REQUESTS))
    records: list[Record] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clients = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.threads)]

    def start(self) -> Load:
        for client in self._clients:
            client.start()
        return self

    def finish(self) -> list[Record]:
        self.stop.set()
        for client in self._clients:
            client.join(CLIENT_TIMEOUT + 10)
            assert not client.is_alive()
        return self.records

    def count(self, after: float = 0.0) -> int:
        with self._lock:
            return sum(record.started >= after for record in self.records)

    def wait_for(self, n: int, after: float = 0.0, timeout: float = START_TIMEOUT) -> None:
        """Until ``n`` requests started after ``after`` have been answered."""
        deadline = time.monotonic() + timeout
        while self.count(after) < n:
            assert time.monotonic() < deadline, f"only {self.count(after)} of {n} requests answered"
            assert all(client.is_alive() for client in self._clients)
            time.sleep(0.05)

    def _client(self, offset: int) -> None:
        for n in range(MAX_REQUESTS):
            if self.stop.is_set():
                return
            which = (n + offset) % len(self.requests)
            path, body = self.requests[which]
            started = time.monotonic()
            try:
                status, answer = _request(self.port, "POST", path, body, timeout=CLIENT_TIMEOUT, key=self.key)
                outcome = f"status {status}" if status != 200 else self._label(which, answer_scores(path, answer))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = f"error: {type(exc).__name__}: {exc}"
            with self._lock:
                self.records.append(Record(started, time.monotonic(), which, outcome))

    def _label(self, which: int, scores) -> str:
        for name, answers in self.builds.items():
            if same_scores(scores, answers[which]):
                return name
        return "wrong"


def _health_pids(port: int, build: str | None, pids: set[int], timeout: float = START_TIMEOUT, key=None) -> float:
    """Ask /health (new connections: either worker may answer) until every one of ``pids`` has answered (with
    ``build``, if given); the time it took."""
    started = seen = time.monotonic()
    answered: set[int] = set()
    while not pids <= answered:
        assert time.monotonic() - started < timeout, f"workers {pids - answered} did not answer (with {build})"
        try:
            status, health = _request(port, "GET", "/health", timeout=10, key=key)
        except OSError:
            time.sleep(0.2)
            continue
        if status == 200 and (build is None or health["index_build"] == build):
            answered.add(health["pid"])
            seen = time.monotonic()
        time.sleep(0.02)
    return seen - started


def _worker_pids(process, count: int = 2) -> set[int]:
    """The service's worker processes, once ``count`` of them have started."""
    deadline = time.monotonic() + START_TIMEOUT
    while len(workers := set(_workers(process.pid))) < count:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    return workers


def _wait_for_line(process, text: str, count: int = 1, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in process.output if text in line]
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline and process.poll() is None, \
            f"{count} lines with {text!r} expected: {''.join(process.output)[-3000:]}"
        time.sleep(0.1)


def test_a_killed_worker_is_replaced_and_no_answer_is_wrong(tiny_index, answers_a):
    """SIGKILL to one of two workers under load: the other answers meanwhile; only requests in flight on the dead
    one fail (connection errors); a replacement loads, warms and answers; no answer is ever wrong. Among the
    requests, 400 texts through the document branch: slow enough that a request is likely in flight at the kill."""
    from dipair_rerank.serve.service import RerankService, ServeOptions
    from tests.serve.conftest import expected_answers

    texts = ("/rerank", {"query": "quantum qubits", "documents": [f"text {i} on qubits, pets or rates, {'x ' * (i % 50)}"
                                                                   for i in range(400)]})
    reference = RerankService.from_options(ServeOptions(index=str(tiny_index), threads=1))
    requests = [*REQUESTS, texts, texts]
    process, port = _start(tiny_index, "--threads", "2", "--workers", "2", "--no-access-log")
    try:
        workers = _worker_pids(process)
        _health_pids(port, None, workers)  # both loaded
        load = Load(port, {"A": [*answers_a, *expected_answers(reference, [texts]) * 2]}, requests=requests).start()
        load.wait_for(100)
        victim = min(workers)
        survivor = (workers - {victim}).pop()
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        deadline = killed_at + START_TIMEOUT
        while len(replacements := set(_workers(process.pid)) - workers) < 1:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        replacement = replacements.pop()
        _health_pids(port, None, {replacement})
        back = time.monotonic() - killed_at  # the replacement answers: both workers serve again
        load.wait_for(200, after=killed_at + back)
        _health_pids(port, None, {survivor, replacement}, timeout=60)
        records = load.finish()

        outcomes = [record.outcome for record in records]
        errors = [record for record in records if record.outcome != "A"]
        assert "wrong" not in outcomes and not any(o.startswith("status") for o in outcomes), errors
        assert len(errors) <= load.threads  # each client has one request in flight at most
        assert all(record.started < killed_at < record.ended for record in errors), errors  # in flight at the kill
        after = [record for record in records if record.started > killed_at + back]
        while_down = [r for r in records if killed_at < r.started < killed_at + back and r.outcome == "A"]
        assert len(after) >= 200 and all(record.outcome == "A" for record in after)
        line = _wait_for_line(process, f"worker {victim} died (killed by SIGKILL); worker {replacement} replaces it")
        assert len(line) == 1
        print(f"\nkill -9 of worker {victim}: {len(records)} requests, {len(errors)} errors "
              f"({[e.outcome[:60] for e in errors]}), 0 wrong; {len(while_down)} answered by the survivor "
              f"while the replacement loaded; replacement {replacement} answered {back:.1f} s after the "
              "kill")

        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        _kill_all(process)


def test_an_index_rebuilt_under_load_is_served_whole_until_sighup_then_swapped(
        served_index, rotated_corpus, tiny_model_dir, answers_a, answers_b):
    """Build B published into the folder being served (the real indexer, rename) under load: answers stay A's.
    SIGHUP: both workers swap to B without refusing a request. A damaged build is then refused (409 from
    /admin/reload, one log line per worker for SIGHUP) and B kept. Then a good build C on disk and a worker killed:
    the replacement loads C and the other worker follows. Every answer is one build's, never a mix; the only
    errors are requests in flight on the killed worker."""
    from dipair_rerank.index_layout import IndexLayout

    key = secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process, port = _start(served_index, "--threads", "2", "--workers", "2", "--no-access-log",
                           env={**env, "DIPAIR_API_KEY": key})
    try:
        workers = _worker_pids(process)
        build_a = IndexLayout(served_index).identity().build
        _health_pids(port, build_a, workers)
        load = Load(port, {"A": answers_a, "B": answers_b}, key=key).start()
        load.wait_for(50)

        publish(rotated_corpus, served_index, tiny_model_dir)  # B, renamed into the folder being served
        build_b = IndexLayout(served_index).identity().build
        published_at = time.monotonic()
        load.wait_for(100, after=published_at)
        assert {r.outcome for r in load.records} == {"A"}  # the loaded build, from the files held open

        assert _request(port, "POST", "/admin/reload")[0] == 401  # the admin endpoint needs the key
        hup_at = time.monotonic()
        process.send_signal(signal.SIGHUP)
        swap = _health_pids(port, build_b, workers, timeout=120)
        swapped_at = time.monotonic()
        load.wait_for(100, after=swapped_at)
        lines = _wait_for_line(process, f"build {build_a} -> {build_b}", count=2)
        assert {line.split("in worker ")[1].split(":")[0] for line in lines} == {str(pid) for pid in workers}

        # a damaged build: refused by the admin endpoint (this worker) and by SIGHUP (every worker); B kept
        corpus_a = write_jsonl(served_index.parent / "corpus-a.jsonl", TINY_DOCS)
        publish(corpus_a, served_index, tiny_model_dir)
        flip_a_byte(served_index)
        status, answer = _request(port, "POST", "/admin/reload", key=key)
        assert status == 409 and f"still serving build {build_b}" in answer["error"]
        assert "checksum mismatch" in answer["error"]
        refused_at = time.monotonic()
        process.send_signal(signal.SIGHUP)
        _wait_for_line(process, f"failed, still serving build {build_b}", count=3)  # admin + 2 workers on SIGHUP
        load.wait_for(100, after=time.monotonic())
        _health_pids(port, build_b, workers, timeout=60)

        # a good build C (A's corpus: A's answers) published, then a worker killed before any SIGHUP: its
        # replacement loads C, so the main process has the other worker reload too, and the service serves C
        publish(corpus_a, served_index, tiny_model_dir)
        build_c = IndexLayout(served_index).identity().build
        victim = min(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed_at + START_TIMEOUT
        while not (replacements := set(_workers(process.pid)) - workers):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        replacement = replacements.pop()
        _health_pids(port, build_c, (workers - {victim}) | {replacement})
        converged_at = time.monotonic()
        load.wait_for(100, after=converged_at)
        records = load.finish()
        _wait_for_line(process, f"holds build {build_c}, not the one the workers were told to serve")

        outcomes = [record.outcome for record in records]
        errors = [r for r in records if r.outcome not in ("A", "B")]
        assert all(r.outcome.startswith("error") and r.started < killed_at < r.ended for r in errors), errors[:5]
        assert len(errors) <= load.threads  # only requests in flight on the killed worker; never a mix
        assert all(r.outcome == "A" for r in records if r.started < hup_at)
        assert all(r.outcome == "B" for r in records if swapped_at < r.started < killed_at and r not in errors)
        assert all(r.outcome == "A" for r in records if r.started > converged_at)  # build C answers as A does
        during = [r.outcome for r in records if hup_at <= r.started <= swapped_at]
        events = [line.rstrip() for line in process.output if "dipair_rerank.serve.events" in line]
        print(f"\nrebuild + reload under load: {len(records)} requests, {len(errors)} errors, the rest A's or B's; "
              f"published B answered by A for {hup_at - published_at:.1f} s; SIGHUP -> both workers on B in "
              f"{swap:.1f} s ({during.count('A')} A / {during.count('B')} B answers meanwhile); damaged build "
              f"refused ({sum(r.started > refused_at and r.outcome == 'B' for r in records)} B answers after); "
              f"worker killed with build C on disk: both on C {converged_at - killed_at:.1f} s after the "
              "kill\n" + "\n".join(events))
        assert outcomes.count("A") + outcomes.count("B") + len(errors) == len(records)

        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        _kill_all(process)


def test_sighup_reloads_a_single_process_service(served_index, rotated_corpus, tiny_model_dir, answers_a, answers_b):
    """``serve --workers 1``: the service's own process takes SIGHUP (it does not end it) and swaps to the build
    published since it started."""
    from dipair_rerank.index_layout import IndexLayout

    process, port = _start(served_index, "--threads", "1", "--no-access-log")
    try:
        path, body = REQUESTS[0]
        assert same_scores(answer_scores(path, _request(port, "POST", path, body)[1]), answers_a[0])
        publish(rotated_corpus, served_index, tiny_model_dir)
        build_b = IndexLayout(served_index).identity().build
        assert same_scores(answer_scores(path, _request(port, "POST", path, body)[1]), answers_a[0])
        process.send_signal(signal.SIGHUP)
        _health_pids(port, build_b, {process.pid}, timeout=120)
        for which, (path, body) in enumerate(REQUESTS):
            assert same_scores(answer_scores(path, _request(port, "POST", path, body)[1]), answers_b[which])
        _wait_for_line(process, f"reload (SIGHUP) in worker {process.pid}: reloaded")
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        _kill_all(process)
