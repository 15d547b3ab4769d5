"""Where the service's concurrency-1 latency goes beyond the in-process call (issue 13), and the HTTP floor.

On one machine, one client connection at a time (DL19 topics x BM25 top-100 docids, after warm-up):
  1. the real service (``dipair-rerank serve``): per query, in rotated order, the in-process
     ``DiPairReranker.rerank`` call, the same request through ``http.client`` (as eval/bench_serve.py sends it)
     and through a bare-socket client (one ``sendall``, only Content-Length parsed); with the server's own
     ``timing_ms`` (batch = the re-ranking, total = inside the handler), so the gap splits into handler and
     outside-the-handler (uvicorn, FastAPI, loopback, client);
  2. the floor under any Python service, same client and body: a FastAPI app whose ``/rerank`` validates the
     request (the service's own ``RerankRequest``) and returns a canned 100-result answer, under uvicorn as
     ``serve`` runs it; and a bare asyncio server that answers a canned response without parsing anything. Each
     is measured back to back, and with the in-process call between requests, as in 1 (the server then idles
     ~15 ms before each request, as the real one does in eval/bench_serve.py's concurrency-1 run).

    python eval/serve_overhead.py [--rounds 6]       # needs indexes/eff-dl19 (eval/effectiveness.py)
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_serve import Server, connect, post
from dipair_rerank.data import read_run, read_topics, shared_data_dir
from dipair_rerank.evaluate.report import publish_report

CANNED = json.dumps({"results": [{"index": i, "docid": str(i), "relevance_score": 0.5} for i in range(100)],
                     "timing_ms": {"total": 1.0}, "batch_size": 1}).encode()


class BareClient:
    """HTTP/1.1 keep-alive over a socket: one write per request, the answer read by its Content-Length."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str, body: bytes) -> dict:
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        return json.loads(rest)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000.0, 2)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# ----- the floor: servers that do no re-ranking -------------------------------------------------------------------
def serve_canned(kind: str, port: int) -> None:
    """Run a do-nothing server on ``port`` (in a subprocess of this script) until killed."""
    if kind == "bare-asyncio":
        class Canned(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport, self.buffer = transport, b""

            def data_received(self, data):
                self.buffer += data
                end = self.buffer.find(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", self.buffer[:end], re.IGNORECASE) if end >= 0 else None
                if length and len(self.buffer) >= end + 4 + int(length.group(1)):
                    self.buffer = self.buffer[end + 4 + int(length.group(1)):]
                    self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                         b"content-length: %d\r\n\r\n" % len(CANNED) + CANNED)

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port)
            await server.serve_forever()

        asyncio.run(main())
        return
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from dipair_rerank.serve.app import RerankRequest
    from dipair_rerank.serve.server import bind

    app = FastAPI()

    @app.post("/rerank")
    async def rerank(request: RerankRequest) -> Response:
        return Response(CANNED, media_type="application/json")

    sock = bind("127.0.0.1", port)
    sock.listen(128)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def floor_ms(kind: str, bodies: list[bytes], rounds: int, between: Callable[[int], object]) -> dict[str, float]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([sys.executable, __file__, "--canned", kind, "--port", str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {kind} server did not start")
                time.sleep(0.2)
        connection, bare = connect(port), BareClient(port)
        times: dict[str, list[float]] = {f"{client}, {gap}": [] for gap in ("back to back", "after the in-process call")
                                         for client in ("http.client", "bare socket")}
        for _ in range(rounds):
            for position, body in enumerate(bodies):
                times["http.client, back to back"].append(timed(lambda: post(connection, "/rerank", body)))
                times["bare socket, back to back"].append(timed(lambda: bare.post("/rerank", body)))
                between(position)
                times["http.client, after the in-process call"].append(
                    timed(lambda: post(connection, "/rerank", body)))
                between(position)
                times["bare socket, after the in-process call"].append(timed(lambda: bare.post("/rerank", body)))
        return {name: median_ms(values) for name, values in times.items()}
    finally:
        server.kill()
        server.wait()


# ----- the real service ---------------------------------------------------------------------------------------------
def service_split(index: str, threads: int, reranker, topics: dict[str, str], candidates: dict[str, list[str]],
                  rounds: int) -> dict[str, float]:
    server = Server(index, threads)
    try:
        port = server.wait_ready()
        connection, bare = connect(port), BareClient(port)
        bodies = {q: json.dumps({"query": topics[q], "docids": docids}).encode() for q, docids in candidates.items()}
        for qid in candidates:  # untimed warm pass through the service
            post(connection, "/rerank", bodies[qid])
        times: dict[str, list[float]] = {"in process": [], "http.client": [], "bare socket": []}
        inside: dict[str, list[float]] = {"batch": [], "handler": []}

        def through_http(qid: str) -> None:
            _, answer = post(connection, "/rerank", bodies[qid])
            inside["batch"].append(answer["timing_ms"]["batch"] / 1000.0)
            inside["handler"].append(answer["timing_ms"]["total"] / 1000.0)

        qids = list(candidates)
        for turn in range(rounds):
            for position, qid in enumerate(qids):
                calls = [("in process", lambda: reranker.rerank(topics[qid], candidates[qid])),
                         ("http.client", lambda: through_http(qid)),
                         ("bare socket", lambda: bare.post("/rerank", bodies[qid]))]
                shift = (turn * len(qids) + position) % len(calls)  # each call first, second and third in turn
                for name, call in calls[shift:] + calls[:shift]:
                    times[name].append(timed(call))
        result = {name: median_ms(values) for name, values in times.items()}
        result.update({f"server {name}": median_ms(values) for name, values in inside.items()})
        return result
    finally:
        server.stop()


def main() -> None:
    data = shared_data_dir() / "msmarco-dl19"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="passes over the 43 topics")
    parser.add_argument("--output", default="eval/results/serve_overhead.md")
    parser.add_argument("--canned", help=argparse.SUPPRESS)  # internal: run a do-nothing server
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.canned:
        serve_canned(args.canned, args.port)
        return
    topics = read_topics(data / "queries.tsv")
    run = read_run(data / "runs" / "bm25.top100.trec")
    candidates = {q: [d for d, _ in run[q][:100]] for q in topics if q in run}
    from dipair_rerank.rerank import DiPairReranker

    reranker = DiPairReranker.from_index(args.index, threads=args.threads)
    reranker.warm_up()
    for qid in candidates:  # untimed: every candidate's cache page resident
        reranker.rerank(topics[qid], candidates[qid])
    split = service_split(args.index, args.threads, reranker, topics, candidates, args.rounds)
    qids = list(candidates)
    bodies = [json.dumps({"query": topics[q], "docids": candidates[q]}).encode() for q in qids]

    def in_process(position: int) -> None:
        reranker.rerank(topics[qids[position]], candidates[qids[position]])

    floors = {kind: floor_ms(kind, bodies, args.rounds, in_process) for kind in ("fastapi-canned", "bare-asyncio")}
    base = split["in process"]
    lines = [
        f"# serve_overhead  {time.strftime('%Y-%m-%d %H:%M')}  {len(candidates)} DL19 topics x {args.rounds}, "
        f"p50 ms per request, one connection",
        "",
        "| what | p50 ms | over in process |",
        "|---|---:|---:|",
        f"| in process (`DiPairReranker.rerank`) | {base} | |",
        f"| service, http.client | {split['http.client']} | {split['http.client'] - base:+.2f} |",
        f"| service, bare socket | {split['bare socket']} | {split['bare socket'] - base:+.2f} |",
        f"| inside the service: the batch (re-ranking) | {split['server batch']} | |",
        f"| inside the service: the handler (batch + hand-offs, checks, answer) | {split['server handler']} | |",
        *(f"| floor: {kind}, {client} | {ms} | |" for kind, by_client in floors.items()
          for client, ms in by_client.items()),
    ]
    text = "\n".join(lines) + "\n"
    publish_report(text, args.output)


if __name__ == "__main__":
    main()
