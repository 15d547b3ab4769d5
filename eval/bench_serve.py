"""Benchmark ``dipair-rerank serve`` against the in-process re-ranker, side by side in one run.

Starts the service on 127.0.0.1 (a subprocess, a free port) over a DL19 index, and measures, after warm-up:
  1. POST /rerank with each DL19 topic's BM25 top-100 docids, at concurrency 1, 4 and 16 (closed loop: each
     client thread sends its next request when the last is answered, over one kept-alive connection). At
     concurrency 1 each request is paired with the same call in this process (``DiPairReranker.rerank``, the
     server idle meanwhile), so both see the same machine load: the in-process baseline, side by side;
  2. the same with the 100 texts instead of docids (``rerank_texts`` in process; the document branch runs per
     request: far slower);
  3. every kind of bad request, each followed by a good one (4xx, then 200);
  4. the server's RSS before and after --rss-requests docid requests at the highest concurrency (after the docid
     runs, before the text runs);
then SIGTERM, and the exit status. Every phase is bounded by a request count; the script stops by itself.
The service runs with an API key (a random one, passed in DIPAIR_API_KEY) and every request carries it, as a
service beyond loopback would; the bad requests include a missing and a wrong key (401).

Targets: concurrency 1 p50 within 2 ms of in-process; concurrency 16 >= 2x the requests/s of
concurrency 1, p99 <= 3x its p50, zero errors; RSS growth < 50 MB over 10,000 requests.

    python eval/bench_serve.py                      # indexes/eff-dl19 (eval/effectiveness.py builds it)
    python eval/bench_serve.py --rss-requests 2000  # a shorter memory check
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from dipair_rerank.data import read_run, read_topics, shared_data_dir
from dipair_rerank.evaluate.report import format_table, publish_report

START_TIMEOUT = 600
IDLE_RECONNECT_S = 4.0  # uvicorn closes a kept-alive connection idle for 5 s: a client must not reuse it
API_KEY = secrets.token_urlsafe(24)  # the service's key for this run (in its environment, not on its command line)


def add_dl19_inputs(parser: argparse.ArgumentParser) -> Path:
    """--index, --topics and --candidates (DL19's index, queries and BM25 top-100); returns DL19's data folder."""
    data = shared_data_dir() / "msmarco-dl19"
    parser.add_argument("--index", default="indexes/eff-dl19", help="a DL19 index (eval/effectiveness.py builds it)")
    parser.add_argument("--topics", default=str(data / "queries.tsv"))
    parser.add_argument("--candidates", default=str(data / "runs" / "bm25.top100.trec"))
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_dl19_inputs(parser)
    parser.add_argument("--corpus", default=str(data / "corpus.jsonl"), help="texts for the texts variant")
    parser.add_argument("--depth", type=int, default=100, help="candidates per request")
    parser.add_argument("--threads", type=int, default=2, help="server (and in-process) torch threads")
    parser.add_argument("--workers", type=int, default=None,
                        help="server processes (serve --workers; default: serve's own, 2 with 2 threads)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=430, help="docid requests per concurrency level")
    parser.add_argument("--text-requests", type=int, default=16,
                        help="text requests per concurrency level (each encodes 100 passages: seconds on 2 cores)")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="docid requests of the memory check")
    parser.add_argument("--output", default="eval/results/bench_serve.md", help="the report (also printed)")
    parser.add_argument("--json", default="eval/results/bench_serve.json", help="the numbers")
    return parser.parse_args(argv)


# ----- the server -----------------------------------------------------------------------------------------------
class Server:
    """``dipair-rerank serve`` on a port the OS picks; its stdout is drained on a thread (and kept)."""

    def __init__(self, index: str, threads: int, workers: int | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dipair_rerank.cli", "serve", "--index", index, "--port", "0",
             "--threads", str(threads), *(["--workers", str(workers)] if workers else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "DIPAIR_API_KEY": API_KEY})
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = 0

    def _drain(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.log.append(line)
            self.lines.put(line)

    def wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                match = re.search(r"serving .* at http://127\.0\.0\.1:(\d+)", self.lines.get(timeout=1))
            except queue.Empty:
                continue
            if match:
                self.port = int(match.group(1))
                self._wait_healthy(deadline)  # with --workers the port answers once a worker has loaded
                return self.port
        self.kill()
        raise SystemExit(f"the service did not start:\n{''.join(self.log)[-3000:]}")

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the service did not answer /health:\n{''.join(self.log)[-3000:]}")

    def rss_mb(self) -> float:
        """The service's resident memory: its process and, with --workers, every worker process under it."""
        return sum(_rss_mb(pid) for pid in _process_tree(self.process.pid))

    def sample_rss(self, until: threading.Event, every_s: float = 0.5) -> list[float]:
        """RSS every ``every_s`` until ``until`` is set (on a thread): a leak climbs, a trimmed heap saws."""
        samples: list[float] = []

        def sample() -> None:
            while not until.wait(every_s):
                samples.append(self.rss_mb())

        threading.Thread(target=sample, daemon=True).start()
        return samples

    def kill(self) -> None:
        """SIGKILL the service and, with --workers, its worker processes (they would outlive a killed supervisor)."""
        for pid in reversed(_process_tree(self.process.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 120 s: reported as such)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode


def _process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = children.read_text().split() if children.is_file() else []
    return [pid, *(p for child in found for p in _process_tree(int(child)))]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:  # a worker that has just exited
        return 0.0
    raise RuntimeError("no VmRSS (this needs Linux)")


# ----- the load generator ---------------------------------------------------------------------------------------
@dataclass
class Level:
    """One closed-loop run: latencies (ms) of answered requests, errors, and the batch sizes the server reported."""

    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)  # the same calls in this process (concurrency 1 only)
    errors: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> dict[str, object]:
        ms = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {"variant": self.name, "concurrency": self.concurrency, "requests": len(self.latencies) + len(
            self.errors), "errors": len(self.errors), "requests/s": len(self.latencies) / self.seconds,
            "p50 ms": float(np.percentile(ms, 50)), "p95 ms": float(np.percentile(ms, 95)),
            "p99 ms": float(np.percentile(ms, 99)),
            "in-process p50 ms": float(np.percentile(self.in_process, 50)) if self.in_process else "",
            "mean batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0}


def connect(port: int, timeout: float = 300) -> http.client.HTTPConnection:
    """A kept-alive connection with Nagle off, as curl, urllib3 and browsers use (http.client sends headers and
    body in two writes: with Nagle on, the body waits ~40 ms for the server's delayed ACK)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def post(connection: http.client.HTTPConnection, path: str, body: bytes, key: str | None = API_KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def run_level(port: int, name: str, requests: list[tuple[str, bytes]], count: int, concurrency: int,
              beside: Callable[[str], object] | None = None) -> Level:
    """``count`` requests cycling over ``requests`` (qid, body) from ``concurrency`` threads, each on its own
    connection; with ``beside`` (concurrency 1), ``beside(qid)`` runs and is timed before each request."""
    level = Level(name, concurrency)
    lock = threading.Lock()
    todo = iter(itertools.islice(itertools.cycle(requests), count))

    def client() -> None:
        connection = connect(port)
        while True:
            with lock:
                qid, body = next(todo, (None, b""))
            if qid is None:
                break
            if beside is not None:
                started = time.perf_counter()
                beside(qid)
                level.in_process.append((time.perf_counter() - started) * 1000.0)
                if time.perf_counter() - started > IDLE_RECONNECT_S:
                    connection.close()
                    connection = connect(port)
            started = time.perf_counter()
            try:
                status, answer = post(connection, "/rerank", body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    level.errors.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = connect(port)
                continue
            elapsed = (time.perf_counter() - started) * 1000.0
            with lock:
                if status == 200:
                    level.latencies.append(elapsed)
                    level.batch_sizes.append(answer["batch_size"])
                else:
                    level.errors.append(f"{status}: {answer}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.perf_counter() - started
    if beside is not None:  # one client: throughput is 1 / latency; the in-process calls are not its idle time
        level.seconds = sum(level.latencies) / 1000.0
    return level


def bad_request_bodies(docid: str) -> list[tuple[str, bytes, str | None]]:
    """(what, body, key): each must get a 4xx (the service's defaults: --max-documents 1000, 20,000 characters)."""
    good = json.dumps({"query": "x", "docids": [docid]}).encode()
    return [(what, body, API_KEY) for what, body in [
        ("malformed JSON", b'{"query": "x", "docids": ['),
        ("missing query", json.dumps({"docids": [docid]}).encode()),
        ("empty query", json.dumps({"query": " ", "docids": [docid]}).encode()),
        ("non-string query", json.dumps({"query": 7, "docids": [docid]}).encode()),
        ("both documents and docids", json.dumps({"query": "x", "docids": [docid], "documents": ["a"]}).encode()),
        ("neither", b'{"query": "x"}'),
        ("over --max-documents", json.dumps({"query": "x", "documents": ["a"] * 1001}).encode()),
        ("document over the size limit", json.dumps({"query": "x", "documents": ["a" * 20001]}).encode()),
        ("unknown docids", json.dumps({"query": "x", "docids": [docid, "no-such-doc"]}).encode()),
        ("negative top_n", json.dumps({"query": "x", "docids": [docid], "top_n": -1}).encode()),
    ]] + [("no API key", good, None), ("wrong API key", good, "not-" + API_KEY)]


def bad_requests(port: int, good: bytes, docid: str) -> list[dict[str, object]]:
    """Each bad request, then a good one on the same connection: the service must answer 4xx, then 200."""
    connection = connect(port, timeout=60)
    rows = []
    for what, body, key in bad_request_bodies(docid):
        status, answer = post(connection, "/rerank", body, key)
        after, _ = post(connection, "/rerank", good)
        rows.append({"bad request": what, "status": status, "error": answer.get("error", answer),
                     "next good request": after})
    connection.close()
    return rows


# ----- in process -----------------------------------------------------------------------------------------------
def load_texts(corpus: str, wanted: set[str]) -> dict[str, str]:
    from dipair_rerank.data.corpus import read_corpus

    return {doc.docid: doc.text for doc in read_corpus(corpus) if doc.docid in wanted}


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


# ----- the run --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    topics = read_topics(args.topics)
    run = read_run(args.candidates)
    candidates = {q: [d for d, _ in run[q][: args.depth]] for q in topics if q in run}
    corpus = load_texts(args.corpus, {d for docids in candidates.values() for d in docids})
    texts = {q: [corpus[d] for d in docids] for q, docids in candidates.items()}
    docid_bodies = [(q, json.dumps({"query": topics[q], "docids": ids}).encode()) for q, ids in candidates.items()]
    text_bodies = [(q, json.dumps({"query": topics[q], "documents": texts[q]}).encode()) for q in candidates]

    server = Server(args.index, args.threads, args.workers)
    try:
        from dipair_rerank.rerank import DiPairReranker

        reranker = DiPairReranker.from_index(args.index, threads=args.threads)  # loads while the server loads
        reranker.warm_up()
        for qid in candidates:  # untimed: every candidate's cache page resident, as in the server after its warm pass
            reranker.rerank(topics[qid], candidates[qid])
        in_process = {"docids": lambda qid: reranker.rerank(topics[qid], candidates[qid]),
                      "texts": lambda qid: reranker.rerank_texts(topics[qid], texts[qid])}
        port = server.wait_ready()
        rss_ready = server.rss_mb()

        levels: list[Level] = []
        load_before = os.getloadavg()

        def variant(name: str, bodies: list[tuple[str, bytes]], count: int, warm: int) -> None:
            if count <= 0:
                return
            run_level(port, name, bodies, warm, 1)  # untimed: cache pages resident (docids), allocator, encoder
            for concurrency in args.concurrency:
                beside = in_process[name] if concurrency == 1 else None
                levels.append(run_level(port, name, bodies, count, concurrency, beside))
                print(format_table([levels[-1].row()], list(levels[-1].row())).splitlines()[-1], file=sys.stderr)

        variant("docids", docid_bodies, args.requests, len(docid_bodies))
        bad = bad_requests(port, docid_bodies[0][1], next(iter(candidates.values()))[0])
        rss_before = server.rss_mb()  # the memory check follows the docid runs (texts take far more, measured after)
        done = threading.Event()
        rss_samples = server.sample_rss(done)
        memory = run_level(port, "docids (memory check)", docid_bodies, args.rss_requests, max(args.concurrency))
        done.set()
        rss_after = server.rss_mb()
        variant("texts", text_bodies, args.text_requests, 2)
        rss_texts = server.rss_mb()
        exit_status = server.stop()
        load_after = os.getloadavg()
    except BaseException:  # never leave the server running
        server.kill()
        raise

    rows = [level.row() for level in levels]
    by = {(level.name, level.concurrency): level.row() for level in levels}
    low, high = min(args.concurrency), max(args.concurrency)
    c1, c16 = by[("docids", low)], by[("docids", high)]
    baseline = float(c1["in-process p50 ms"] or "nan")
    growth = rss_after - rss_before
    checks = [
        (f"concurrency {low} p50 within 2 ms of in-process", c1["p50 ms"] - baseline <= 2.0,
         f"{c1['p50 ms']:.1f} vs {baseline:.1f} ms ({c1['p50 ms'] - baseline:+.1f})"),
        (f"concurrency {high} >= 2x the requests/s of concurrency {low}",
         c16["requests/s"] >= 2 * c1["requests/s"], f"{c16['requests/s']:.1f} vs {c1['requests/s']:.1f} "
         f"({c16['requests/s'] / c1['requests/s']:.2f}x)"),
        (f"concurrency {high} p99 <= 3x its p50", c16["p99 ms"] <= 3 * c16["p50 ms"],
         f"{c16['p99 ms']:.1f} vs {c16['p50 ms']:.1f} ms ({c16['p99 ms'] / c16['p50 ms']:.1f}x)"),
        ("zero errors", sum(r["errors"] for r in rows) + len(memory.errors) == 0,
         f"{sum(r['errors'] for r in rows) + len(memory.errors)} errors"),
        (f"RSS growth < 50 MB over {args.rss_requests} requests", growth < 50,
         f"{rss_before:.0f} -> {rss_after:.0f} MB ({growth:+.1f} MB)"),
        ("every bad request 4xx, the next good one 200",
         all(400 <= b["status"] < 500 and b["next good request"] == 200 for b in bad), f"{len(bad)} kinds"),
        ("SIGTERM exits 0", exit_status == 0, f"exit status {exit_status}"),
    ]
    report = [
        f"# bench_serve  {time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}  "
        f"{os.cpu_count()} cores  server threads {args.threads}  workers {args.workers or 'default'}  API key on  "
        f"index {args.index}  "
        f"{len(candidates)} DL19 topics x BM25 top-{args.depth}",
        "",
        f"Load average (1, 5, 15 min) when the measurements began {_load(load_before)}, when they ended "
        f"{_load(load_after)}: the machine is shared, and the client runs on the same 2 cores as the server.",
        "",
        "POST /rerank, closed loop (latency = request sent to answer read, client side; in-process = the same "
        "call on a DiPairReranker in the client's process, paired with each request at concurrency 1; mean batch "
        "= requests per head call, as the server reports):",
        "",
        format_table(rows, ["variant", "concurrency", "requests", "errors", "requests/s", "p50 ms", "p95 ms",
                            "p99 ms", "in-process p50 ms", "mean batch"]),
        f"Server RSS: {rss_ready:.0f} MB when ready, {rss_before:.0f} MB before and {rss_after:.0f} MB after "
        f"{args.rss_requests} docid requests at concurrency {high} ({memory.row()['requests/s']:.1f} requests/s, "
        f"{len(memory.errors)} errors); sampled every 0.5 s meanwhile: min {min(rss_samples, default=0):.0f}, max "
        f"{max(rss_samples, default=0):.0f} MB, last quarter's mean "
        f"{np.mean(rss_samples[-max(1, len(rss_samples) // 4):]) if rss_samples else 0:.0f} MB. After the text "
        f"runs (the document encoder's working set): {rss_texts:.0f} MB.",
        "",
        *(f"Errors, {level.name} at concurrency {level.concurrency}: {len(level.errors)}, e.g. {level.errors[0]}"
          for level in [*levels, memory] if level.errors),
        "",
        format_table(bad, ["bad request", "status", "error", "next good request"]),
        "| target | met | measured |", "|---|---|---|",
        *(f"| {name} | {'yes' if ok else 'NO'} | {detail} |" for name, ok, detail in checks),
        "",
    ]
    text = "\n".join(report)
    publish_report(text, args.output)
    Path(args.json).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "levels": rows,
        "memory": {"ready_mb": rss_ready, "before_mb": rss_before, "after_mb": rss_after, "after_texts_mb": rss_texts,
                   "samples_mb": rss_samples,
                   **memory.row()},
        "bad_requests": bad, "exit_status": exit_status,
        "errors": {f"{level.name}@{level.concurrency}": level.errors[:5]
                   for level in [*levels, memory] if level.errors},
        "checks": [{"target": n, "met": ok, "measured": d} for n, ok, d in checks]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
