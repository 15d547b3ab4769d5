"""Faults under load on ``dipair-rerank serve`` (2 workers) over a real index: how long until a killed worker's
replacement answers, and until both workers serve a build published under them.

Two client threads send each DL19 topic's BM25 top-100 as docids, closed loop, a new connection per request (so
that the surviving worker takes a dead one's share at once), and compare every answer with the service's own
answer to the same request before the faults (one build, the same scores: a wrong answer would differ). On a copy of
the index (``eval/work/faults/``):

  1. one worker killed with SIGKILL: requests/s before, while one worker serves, and after the replacement answers;
     errors (requests in flight on the dead worker); the time until the replacement answers;
  2. a new build published into the folder (a copy renamed in, as ``dipair-rerank index`` publishes), then SIGHUP:
     the time until both workers have reloaded; errors meanwhile;
  3. a damaged build (one byte of a shard flipped) published, then SIGHUP: refused by both, the loaded one kept.

    python eval/serve_faults.py                  # indexes/eff-dl19 (eval/effectiveness.py builds it)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from bench_serve import Server, add_dl19_inputs, connect, post

from dipair_rerank.data import read_run, read_topics
from dipair_rerank.evaluate.report import publish_report

WINDOW_S = 10.0  # requests/s measured over this long before the kill and after the replacement answers
TOLERANCE = 0.05
"""How far a score may be from the same request's answered alone. A request answered in a batch is not computed
exactly as alone: the int8 query encoder scales its activations per batch, which moved scores by up to 0.012 here.
A wrong document (a docid mapped to another row, another build's cache) moves a score by the gap between two
documents' scores: the report gives the median spread of a request's 100 scores for scale."""
TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dl19_inputs(parser)
    parser.add_argument("--threads", type=int, default=2, help="server threads (2 workers)")
    parser.add_argument("--clients", type=int, default=2, help="client threads")
    parser.add_argument("--work", default="eval/work/faults", help="where the served copy of the index goes")
    parser.add_argument("--output", default="eval/results/serve_faults.md")
    parser.add_argument("--json", default="eval/results/serve_faults.json")
    return parser.parse_args(argv)


@dataclass
class Record:
    started: float
    ended: float
    outcome: str  # "ok", "wrong ...", "status NNN" or "error: ..."
    difference: float = 0.0  # the largest score difference from the request answered alone


class Load:
    """Client threads sending ``bodies`` round-robin, each on a new connection, until ``finish``."""

    def __init__(self, port: int, bodies: list[bytes], expected: list[list[float]], clients: int):
        self.port, self.bodies, self.expected = port, bodies, expected
        self.records: list[Record] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            which = n % len(self.bodies)
            n += 1
            started = time.monotonic()
            try:
                connection = connect(self.port, timeout=TIMEOUT_S)
                try:
                    status, answer = post(connection, "/rerank", self.bodies[which])
                finally:
                    connection.close()
                difference = 0.0
                if status != 200:
                    outcome = f"status {status}"
                else:
                    scores, expected = _scores(answer), self.expected[which]
                    difference = _difference(scores, expected)
                    outcome = "ok" if difference <= TOLERANCE else (
                        f"wrong (largest difference {difference:.2g}, batch {answer['batch_size']})")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = f"error: {type(exc).__name__}: {exc}"
            with self.lock:
                self.records.append(Record(started, time.monotonic(), outcome, difference))

    def rate(self, start: float, end: float) -> float:
        """Requests answered (200) per second between ``start`` and ``end``."""
        with self.lock:
            done = sum(start <= r.ended < end and r.outcome == "ok" for r in self.records)
        return done / max(end - start, 1e-9)

    def finish(self) -> list[Record]:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT_S)
        return self.records


def _scores(answer: dict) -> list[float]:
    return [r["relevance_score"] for r in sorted(answer["results"], key=lambda r: r["index"])]


def _difference(scores: list[float], expected: list[float]) -> float:
    if len(scores) != len(expected):
        return float("inf")
    return max(abs(a - b) for a, b in zip(scores, expected))


def _workers(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.is_file() else []
    return {c for c in found if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _health_pid(port: int) -> int | None:
    try:
        connection = connect(port, timeout=10)
        connection.request("GET", "/health")
        response = connection.getresponse()
        pid = json.loads(response.read())["pid"] if response.status == 200 else None
        connection.close()
        return pid
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None


def _until(condition, what: str, timeout: float = TIMEOUT_S) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def _publish_copy(source: Path, target: Path) -> None:
    """A new build of the same index, published the way the indexer publishes: a finished folder renamed in."""
    staging = target.with_name(f".{target.name}.building")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, symlinks=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old)


def _lines(server: Server, text: str) -> list[str]:
    return [line.rstrip() for line in server.log if text in line]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    source = Path(args.index)
    served = Path(args.work) / "served"
    shutil.rmtree(served, ignore_errors=True)
    served.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, served, symlinks=True)
    topics = read_topics(args.topics)
    run = read_run(args.candidates)
    bodies = [json.dumps({"query": topics[qid], "docids": [d for d, _ in hits[:100]]}).encode()
              for qid, hits in run.items() if qid in topics]

    server = Server(str(served), args.threads, workers=2)
    try:
        port = server.wait_ready()
        pid = server.process.pid
        _until(lambda: len(_workers(pid)) == 2, "two workers")
        workers = _workers(pid)
        seen: set[int] = set()
        _until(lambda: seen.add(_health_pid(port)) or workers <= seen, "both workers to answer")
        connection = connect(port)
        expected = [_scores(post(connection, "/rerank", body)[1]) for body in bodies]
        connection.close()

        # 1. a worker killed
        load = Load(port, bodies, expected, args.clients)
        time.sleep(WINDOW_S + 2)
        victim = min(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _until(lambda: _workers(pid) - workers, "a replacement worker")
        replacement = (_workers(pid) - workers).pop()
        back_at = _until(lambda: _health_pid(port) == replacement, "the replacement to answer")
        time.sleep(WINDOW_S)
        kill = {
            "requests/s before": load.rate(killed_at - WINDOW_S, killed_at),
            "requests/s on one worker": load.rate(killed_at, back_at),
            "requests/s after": load.rate(back_at, back_at + WINDOW_S),
            "replacement answers after s": back_at - killed_at,
            "log": _lines(server, "died (killed by SIGKILL)"),
        }

        # 2. a new build published, then SIGHUP
        _publish_copy(source, served)
        hup_at = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        swapped_at = _until(lambda: len(_lines(server, ": reloaded ")) >= 2, "both workers to reload")
        time.sleep(2)
        reload = {"both reloaded after s": swapped_at - hup_at, "log": _lines(server, ": reloaded ")}

        # 3. a damaged build published, then SIGHUP
        _publish_copy(source, served)
        shard = min((served / "dipair").glob("shard-*.vectors.npy"))
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
        damaged_at = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        refused_at = _until(lambda: len(_lines(server, "failed, still serving build")) >= 2, "both refusals")
        time.sleep(2)
        damaged = {"both refused after s": refused_at - damaged_at,
                   "log": _lines(server, "failed, still serving build")}
        records = load.finish()
        exit_status = server.stop()
    except BaseException:
        server.kill()
        raise

    def count(start: float, end: float, outcome: str) -> int:
        return sum(start <= r.started < end and r.outcome.startswith(outcome) for r in records)

    errors = [r for r in records if r.outcome != "ok"]
    ok = [r.difference for r in records if r.outcome == "ok"]
    spread = float(np.median([np.std(scores) for scores in expected]))
    phases = [("worker killed (from the start)", 0.0, hup_at), ("new build, SIGHUP", hup_at, damaged_at),
              ("damaged build, SIGHUP", damaged_at, float("inf"))]
    rows = [f"| {name} | {count(a, b, '')} | {count(a, b, 'error') + count(a, b, 'status')} | {count(a, b, 'wrong')} |"
            for name, a, b in phases]
    report = "\n".join([
        (f"# serve_faults  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  index {source} (copy in "
        f"{served})  2 workers, {args.threads} threads, {args.clients} clients, API key on"),
        "",
        "| phase | requests | errors | wrong answers |", "|---|---:|---:|---:|", *rows, "",
        (f"Worker killed: {kill['requests/s before']:.1f} requests/s before, {kill['requests/s on one worker']:.1f} "
        f"on one worker while the replacement loaded, {kill['requests/s after']:.1f} in the {WINDOW_S:.0f} s after "
        f"it first answered, {kill['replacement answers after s']:.1f} s after the kill."),
        f"New build + SIGHUP: both workers reloaded {reload['both reloaded after s']:.1f} s after the signal.",
        (f"Damaged build + SIGHUP: both refused {damaged['both refused after s']:.1f} s after the signal; the loaded "
        "build kept."),
        f"Errors: {[r.outcome[:80] for r in errors][:5]}",
        (f"Answers within {TOLERANCE} of the same request answered alone (the batched int8 query encoder's own "
        f"variation): largest difference {max(ok, default=0):.3g}, median {np.median(ok) if ok else 0:.2g}; the "
        f"median spread (standard deviation) of a request's {len(expected[0])} scores: {spread:.2f}."),
        f"SIGTERM: exit status {exit_status}",
        "",
        "Log lines:", "", "```", *kill["log"], *reload["log"], *damaged["log"], "```", "",
    ])
    publish_report(report, args.output)
    Path(args.json).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "kill": kill, "reload": reload,
        "damaged": damaged, "requests": len(records), "errors": [r.outcome for r in errors],
        "wrong": sum(r.outcome.startswith("wrong") for r in records), "exit_status": exit_status}, indent=1) + "\n")


if __name__ == "__main__":
    main()
