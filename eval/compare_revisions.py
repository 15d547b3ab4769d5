"""The re-rank stage of two source revisions, side by side in one run (issue 11: engine changes measured A/B).

Each revision runs in its own process (a git worktree for the baseline, this checkout for the other), taking
turns ``--rounds`` times, so both see the same machine load: the VM's speed varies by up to 2x over an hour, and
milliseconds measured in separate runs do not compare. A process re-ranks every DL19 topic's BM25 top-100 through
``DiPairReranker.rerank`` ``--passes`` times after warm-up, and reports the median whole call and the median of
each stage (query encoding, gather, head). Both use the same index, model and threads.

With ``--batched``, a process instead runs eval/bench_latency.py's (d) over all DL19 topics, ``--passes`` times
after 5 s of BM25 alone: Pyserini BM25 alone, then ``DiPairSearcher.batch_search`` (BM25 + DiPair), pass by
pass; it reports the milliseconds per query of each and what DiPair adds.

    python eval/compare_revisions.py --baseline 6ea2c8a [--rounds 3] [--batched]   # needs indexes/eff-dl19
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def dl19_queries() -> list[tuple[str, list[str]]]:
    """(query, its BM25 top-100 docids) for every DL19 topic."""
    from dipair_rerank.data import read_run, read_topics, shared_data_dir

    data = shared_data_dir() / "msmarco-dl19"
    topics = read_topics(data / "queries.tsv")
    run = read_run(data / "runs" / "bm25.top100.trec")
    return [(topics[qid], [docid for docid, _ in run[qid][:100]]) for qid in topics if qid in run]


def time_reranker(reranker, queries: list[tuple[str, list[str]]], passes: int) -> dict[str, float]:
    """Median ms of the whole ``rerank`` call (and its 95th percentile) and of each stage, one query at a time,
    after an untimed pass."""
    from dipair_rerank.evaluate.latency import StageTimer

    reranker.warm_up()
    for query, docids in queries:  # untimed: every candidate's cache page resident
        reranker.rerank(query, docids)
    reranker.timer = StageTimer()
    calls = []
    for _ in range(passes):
        for query, docids in queries:
            started = time.perf_counter()
            reranker.rerank(query, docids)
            calls.append((time.perf_counter() - started) * 1000.0)
    stages = {stage: statistics.median(ms for ms, _ in entries) for stage, entries in reranker.timer.batches.items()}
    return {"rerank": statistics.median(calls), "rerank p95": statistics.quantiles(calls, n=20)[-1], **stages}


def time_batches(index: str, threads: int, passes: int) -> dict[str, float]:
    """Milliseconds per query of BM25 alone and of BM25 + DiPair over all DL19 topics in batches, pass by pass."""
    from bench_latency import batched_seconds
    from dipair_rerank.data import read_topics, shared_data_dir
    from dipair_rerank.pipeline import DiPairSearcher

    topics = read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv")
    searcher = DiPairSearcher.from_index(index, threads=threads)
    searcher.reranker.warm_up()
    bm25, both = batched_seconds(searcher, list(topics), list(topics.values()), passes=passes, threads=threads,
                                 jvm_warm_up=5.0)  # the JVM compiles Lucene's code in the first seconds
    per_query = 1000.0 / (passes * len(topics))
    return {"BM25 alone": bm25 * per_query, "BM25 + DiPair": both * per_query,
            "DiPair adds": (both - bm25) * per_query, "ratio": bm25 / both}


def child(index: str, threads: int, passes: int, batched: bool) -> None:
    """Time this process's revision (the one ``dipair_rerank`` imports from); print one JSON line."""
    from dipair_rerank.rerank import DiPairReranker

    if batched:
        print(json.dumps(time_batches(index, threads, passes)))
        return
    reranker = DiPairReranker.from_index(index, threads=threads)
    print(json.dumps(time_reranker(reranker, dl19_queries(), passes)))


def measure(source: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--index", str(Path(args.index).resolve()),
               "--threads", str(args.threads), "--passes", str(args.passes), *(["--batched"] if args.batched else [])]
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="the git revision to compare this checkout with")
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="passes over the 43 topics per process")
    parser.add_argument("--rounds", type=int, default=3, help="turns each revision takes")
    parser.add_argument("--output", default="eval/results/compare_revisions.md", help="the report (also printed)")
    parser.add_argument("--batched", action="store_true", help="BM25 alone and BM25 + DiPair in batches, per query")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.index, args.threads, args.passes, args.batched)
        return
    from dipair_rerank.data import shared_data_dir
    from dipair_rerank.evaluate.report import format_rounds, publish_report

    os.environ["DIPAIR_DATA"] = str(shared_data_dir().resolve())  # the baseline runs from another folder
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(baseline), args.baseline],
                       check=True)
        try:
            rows: dict[str, list[dict[str, float]]] = {f"baseline ({args.baseline})": [], "this checkout": []}
            for _ in range(args.rounds):
                for name, source in zip(rows, (baseline, REPO)):
                    rows[name].append(measure(source, args))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=True)
    kind = "batched, ms per query" if args.batched else "p50 ms"
    columns = ["BM25 alone", "BM25 + DiPair", "DiPair adds", "ratio"] if args.batched else [
        "rerank", "query_encoding", "gather", "head"]
    header = (f"# compare_revisions  {time.strftime('%Y-%m-%d %H:%M')}  DL19 BM25 top-100, {args.threads} threads, "
              f"{args.rounds} rounds x {args.passes} passes; {kind} (median over rounds; each round in brackets)\n\n")
    publish_report(header + format_rounds("revision", rows, columns), args.output)

if __name__ == "__main__":
    main()
