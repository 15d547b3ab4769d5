"""Load test: batch search over many synthetic queries with flat memory.

Queries are random 2-8 word combinations drawn from the DL19 queries' vocabulary (seeded), so BM25 finds
candidates for nearly all of them. The searcher (BM25 first stage over the index's Lucene folder, DiPair
re-ranking of the top --depth from its cache) runs them --batch-size at a time; results are counted and dropped
(this measures the searcher, not a run held in memory). RSS is read from /proc/self/status (VmRSS; the JVM
runs inside this process, so its heap counts too) every --sample-every queries.

Growth is measured from the first sample after --warmup queries (model, JVM, ONNX Runtime and buffers have
reached their working size) to the end, and reported beside the peak. Pass: peak growth < --limit-mb.

Pyserini's JVM heap is pinned and pre-touched (--jvm-heap, via DIPAIR_JVM_OPTIONS): left to its own sizing, the
JVM keeps growing its committed heap toward a quarter of RAM under a high allocation rate (measured: 212 -> 800 MB
over the first 2,500 queries, flat after), which is heap sizing, not a leak; pinning it makes a leak visible.

    python eval/load_test.py --index indexes/dl19 --queries 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from pathlib import Path

from dipair_rerank.data import read_topics, shared_data_dir
from dipair_rerank.errors import DiPairError


def memory_mb() -> dict[str, float]:
    """VmRSS and its anonymous / file-backed parts in MB (Linux: /proc/self/status, no psutil needed)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in fields:
            values[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    if "rss" not in values:
        raise RuntimeError("no VmRSS in /proc/self/status (this needs Linux)")
    return values


def rss_mb() -> float:
    return memory_mb()["rss"]


def jvm_heap_mb() -> dict[str, float]:
    """The JVM's committed and used heap (Pyserini's JVM runs in this process; its heap is part of RSS)."""
    from jnius import autoclass

    runtime = autoclass("java.lang.Runtime").getRuntime()
    total, free = runtime.totalMemory(), runtime.freeMemory()
    return {"jvm_committed": round(total / 2**20, 1), "jvm_used": round((total - free) / 2**20, 1)}


def synthetic_queries(vocabulary_source: Path, count: int, *, seed: int = 0) -> list[str]:
    """``count`` queries of 2-8 words drawn from the vocabulary of a topics file."""
    texts = read_topics(vocabulary_source).values()
    words = sorted({word for text in texts for word in re.findall(r"[a-z0-9]+", text.lower())})
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(count)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/dl19")
    parser.add_argument("--model", default=None, help="model for the index (default: the one it records)")
    parser.add_argument("--vocabulary", default=str(shared_data_dir() / "msmarco-dl19" / "queries.tsv"),
                        help="topics file whose words make up the queries (default: DL19 queries)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--k", type=int, default=100, help="hits kept per query")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1000, help="queries before the growth baseline")
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--limit-mb", type=float, default=100.0)
    parser.add_argument("--query-backend", default="auto", choices=("auto", "onnx", "torch"))
    parser.add_argument("--jvm-heap", default="256m",
                        help="pin Pyserini's JVM heap (-Xms = -Xmx) through DIPAIR_JVM_OPTIONS; 'default' leaves the "
                        "JVM's own sizing, which grows the committed heap toward RAM/4 (default 256m)")
    parser.add_argument("--output", default=None, help="write the samples and summary as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from dipair_rerank._java import JVM_OPTIONS_ENV
    from dipair_rerank.pipeline import DiPairSearcher

    if args.jvm_heap != "default":  # read when the JVM starts (with the first BM25 searcher)
        heap = f"-Xms{args.jvm_heap} -Xmx{args.jvm_heap} -XX:+AlwaysPreTouch"  # all heap pages resident from the start
        os.environ[JVM_OPTIONS_ENV] = f"{os.environ.get(JVM_OPTIONS_ENV, '')} {heap}"
    start_rss = rss_mb()
    queries = synthetic_queries(Path(args.vocabulary), args.queries, seed=args.seed)
    searcher = DiPairSearcher.from_index(args.index, first_stage="bm25", depth=args.depth, model=args.model,
                                         threads=args.threads, query_backend=args.query_backend)
    opened_rss = rss_mb()
    samples: list[dict] = []
    baseline: float | None = None
    hits = empty = 0
    started = time.perf_counter()
    next_sample = min(args.warmup, args.queries)
    for offset in range(0, len(queries), args.batch_size):
        chunk = queries[offset : offset + args.batch_size]
        qids = [str(offset + i) for i in range(len(chunk))]
        results = searcher.batch_search(chunk, qids, k=args.k, threads=args.threads, batch_size=args.batch_size)
        hits += sum(len(r) for r in results.values())
        empty += sum(not r for r in results.values())
        del results
        done = offset + len(chunk)
        if done >= next_sample or done == len(queries):
            memory = {**memory_mb(), **jvm_heap_mb()}
            rss = memory["rss"]
            baseline = rss if baseline is None else baseline
            seconds = round(time.perf_counter() - started, 1)
            samples.append({"queries": done, "rss_mb": rss, "seconds": seconds, **memory})
            print(f"{done:>7} queries  RSS {rss:8.1f} MB (anon {memory.get('anon', 0):7.1f}, file "
                  f"{memory.get('file', 0):6.1f}; JVM heap committed {memory['jvm_committed']:6.1f}, used "
                  f"{memory['jvm_used']:6.1f})  {samples[-1]['seconds']:7.1f} s", flush=True)
            next_sample = done + args.sample_every
    seconds = time.perf_counter() - started
    final = samples[-1]["rss_mb"]
    summary = {
        "index": args.index, "queries": len(queries), "depth": args.depth, "k": args.k, "batch_size": args.batch_size,
        "threads": args.threads, "jvm_heap": args.jvm_heap, "rss_start_mb": round(start_rss, 1),
        "rss_opened_mb": round(opened_rss, 1),
        "rss_baseline_mb": round(baseline or final, 1), "rss_final_mb": final,
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "growth_mb": round(final - (baseline or final), 1),
        "growth_peak_mb": round(max(s["rss_mb"] for s in samples) - (baseline or final), 1),
        "queries_per_s": round(len(queries) / seconds, 1), "mean_hits": round(hits / len(queries), 1),
        "queries_without_hits": empty, "limit_mb": args.limit_mb,
    }
    summary["passed"] = summary["growth_peak_mb"] < args.limit_mb
    return {"summary": summary, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("dipair_rerank.pipeline").setLevel(logging.ERROR)  # "fewer than depth" once per batch: noise here
    try:
        report = run(args)
    except DiPairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = report["summary"]
    print(f"RSS after warm-up {summary['rss_baseline_mb']} MB -> end {summary['rss_final_mb']} MB "
          f"(growth {summary['growth_mb']} MB, peak growth {summary['growth_peak_mb']} MB, limit {args.limit_mb} MB) "
          f"over {summary['queries']} queries at {summary['queries_per_s']} q/s: "
          f"{'PASS' if summary['passed'] else 'FAIL'}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
