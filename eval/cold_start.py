"""A cache's first queries from a cold page cache: mapped in whole first (``PrefixCache.map_in``, as ``serve`` warms
up), or faulted in row by row as gathers read them (one-off runs).

Each arm runs in its own process, taking turns: the index's cache files are first dropped from the page cache
(``posix_fadvise(DONTNEED)``, as after a reboot or once other work has pushed them out), then a re-ranker is opened,
its cache mapped in (timed) or not, and it re-ranks every DL19 topic's BM25 top-100 twice. Reported: the time to map
the cache in, and the gather stage's p50 in the first pass and in the second.

    python eval/cold_start.py [--rounds 2]   # needs indexes/eff-dl19
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARMS = {"mapped in first (serve's warm-up)": "mapped", "faulted in as read": "faulted"}


def drop_from_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def child(index: str, arm: str) -> None:
    """One arm in this process; print one JSON line."""
    from dipair_rerank.data import read_run, read_topics, shared_data_dir
    from dipair_rerank.evaluate.latency import StageTimer
    from dipair_rerank.rerank import DiPairReranker

    data = shared_data_dir() / "msmarco-dl19"
    topics = read_topics(data / "queries.tsv")
    run = read_run(data / "runs" / "bm25.top100.trec")
    queries = [(topics[qid], [docid for docid, _ in run[qid][:100]]) for qid in topics if qid in run]
    drop_from_page_cache(Path(index) / "dipair")
    reranker = DiPairReranker.from_index(index, threads=2)
    started = time.perf_counter()
    if arm == "mapped" and not reranker.cache.map_in():
        raise SystemExit("this machine cannot map the cache in (not Linux 5.14+, or over a quarter of memory)")
    result: dict[str, float] = {"map in s": time.perf_counter() - started}
    for name in ("first pass", "second pass"):
        reranker.timer = StageTimer()
        for query, docids in queries:
            reranker.rerank(query, docids)
        result[f"gather p50 ms, {name}"] = statistics.median(ms for ms, _ in reranker.timer.batches["gather"])
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--rounds", type=int, default=2, help="turns each arm takes")
    parser.add_argument("--output", default="eval/results/cold_start.md", help="the report (also printed)")
    parser.add_argument("--child", choices=list(ARMS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.index, args.child)
        return
    from dipair_rerank.evaluate.report import format_rounds, publish_report

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    for _ in range(args.rounds):
        for name, arm in ARMS.items():
            done = subprocess.run([sys.executable, __file__, "--child", arm, "--index", args.index],
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = (f"# cold_start  {time.strftime('%Y-%m-%d %H:%M')}  {args.index}, DL19 BM25 top-100, 2 threads; "
              f"median over {args.rounds} rounds (each round in brackets)\n\n")
    publish_report(header + format_rounds("cache pages", runs, list(next(iter(runs.values()))[0])), args.output)

if __name__ == "__main__":
    main()
