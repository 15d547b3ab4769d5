"""Re-rank latency, side by side in one process: DiPair vs cross-encoders on the same candidates.

Per query, after warm-up, with torch threads = --threads (default 2), on the same top-``depth`` candidates of
the DL19 BM25 run:
  (a) DiPair re-rank stage = query encoding + cache gather + head (and each part);
  (b) the same-backbone cross-encoder (MiniLM-L6 body) scoring the pairs from raw text;
  (c) a BERT-base-size cross-encoder (12 layers, 768 wide, random weights: only time matters);
  (d) BM25 alone and BM25 + DiPair end to end, batched over all queries: queries per second.
Ratios (b)/(a) and (c)/(a) are computed query by query, each cross-encoder call followed by a DiPair call on
the same query (alternating, as an application comparing them would), then summarised.

    python eval/bench_latency.py              # needs indexes/eff-dl19 (eval/effectiveness.py builds it)
    OMP_WAIT_POLICY=PASSIVE python eval/bench_latency.py   # torch's OpenMP workers sleep after each call
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dipair_rerank.data import read_run, read_topics, shared_data_dir
from dipair_rerank.evaluate.latency import describe
from dipair_rerank.evaluate.report import format_table


def _cross_encoder(kind: str, device_threads: int):
    """(model, tokenizer) of a cross-encoder: the packaged MiniLM body with a fresh score head, or BERT-base size."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
    from transformers.utils import logging as hf_logging

    from dipair_rerank.model.config import DEFAULT_ENCODER, resolve_encoder_path

    hf_logging.set_verbosity_error()
    path = resolve_encoder_path(DEFAULT_ENCODER)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "minilm":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    else:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=1))  # 12 x 768, 110M
    return model.eval(), tokenizer


def _time_cross_encoder(model, tokenizer, query: str, texts: list[str], max_length: int, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer([query] * len(texts[i : i + batch_size]), texts[i : i + batch_size], padding=True,
                              truncation="only_second", max_length=max_length, return_tensors="pt")
            model(**batch)
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    data = shared_data_dir() / "msmarco-dl19"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19", help="a DL19 index (eval/effectiveness.py builds it)")
    parser.add_argument("--topics", default=str(data / "queries.tsv"))
    parser.add_argument("--candidates", default=str(data / "runs" / "bm25.top100.trec"))
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=0, help="DiPair queries (0: all)")
    parser.add_argument("--ce-queries", type=int, default=6, help="queries timed for the cross-encoders")
    parser.add_argument("--ce-max-length", type=int, default=256, help="cross-encoder tokens per pair")
    parser.add_argument("--ce-batch-size", type=int, default=32)
    parser.add_argument("--query-backend", default="auto")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes over the topics for (d)")
    parser.add_argument("--jvm-warm-up", type=float, default=5.0,
                        help="seconds of BM25 alone before (d): Lucene's code is compiled by the JVM as it runs, "
                             "and BM25 over DL19's 10.9k-passage pool got 2-3x faster in the first seconds")
    parser.add_argument("--json", default="eval/results/bench_latency.json", help="where to save the numbers")
    parser.add_argument("--contention", action="store_true",
                        help="also time (a) with one core busy (a bounded CPU-burning process), side by side")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from dipair_rerank.rerank import DiPairReranker

    topics = read_topics(args.topics)
    run = read_run(args.candidates)
    qids = [q for q in topics if q in run][: args.queries or None]
    reranker = DiPairReranker.from_index(args.index, threads=args.threads, query_backend=args.query_backend)
    reranker.warm_up(args.depth)

    # (a) DiPair, one query at a time, each stage timed by the re-ranker's own timer; one untimed pass first, so
    # every candidate's cache page is resident (a user's index is warm after its first queries)
    _time_stages(reranker, topics, run, qids, args.depth)
    stages = _time_stages(reranker, topics, run, qids, args.depth)
    dipair_ms = sum(stages.values())
    if args.contention:
        with busy_core(seconds=120):
            contended = _time_stages(reranker, topics, run, qids, args.depth)
        contention_rows = [
            {"stage": name, "quiet p50": float(np.percentile(stages[name], 50)),
             "busy p50": float(np.percentile(contended[name], 50)),
             "busy p95": float(np.percentile(contended[name], 95)),
             "busy/quiet p50": float(np.percentile(contended[name], 50) / np.percentile(stages[name], 50))}
            for name in stages]
        total_busy = sum(contended.values())
        contention_rows.insert(0, {"stage": "re-rank stage", "quiet p50": float(np.percentile(dipair_ms, 50)),
                                   "busy p50": float(np.percentile(total_busy, 50)),
                                   "busy p95": float(np.percentile(total_busy, 95)),
                                   "busy/quiet p50": float(np.percentile(total_busy, 50) /
                                                           np.percentile(dipair_ms, 50))})

    # (b), (c) cross-encoders on the same candidates, texts from the index's stored contents. The JVM starts only
    # now: its start-up threads (JIT, GC) would otherwise share the cores with (a).
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.search.lucene import LuceneSearcher

    from dipair_rerank.pipeline import DiPairSearcher

    lucene = LuceneSearcher(str(Path(args.index) / "lucene"))
    rows: list[dict[str, object]] = [
        {"system": "(a) DiPair re-rank stage", **_p(dipair_ms)},
        *({"system": f"    {name}", **_p(values)} for name, values in stages.items()),
    ]
    ratios: dict[str, np.ndarray] = {}
    sample = qids[: args.ce_queries]
    texts = {q: [lucene.doc(d).contents() for d, _ in run[q][: args.depth]] for q in sample}
    for label, kind in (("(b) cross-encoder, MiniLM-L6 body", "minilm"), ("(c) cross-encoder, BERT-base size", "base")):
        model, tokenizer = _cross_encoder(kind, args.threads)
        _time_cross_encoder(model, tokenizer, topics[sample[0]], texts[sample[0]][:8], args.ce_max_length, 8)
        # alternating on the same query in one process, as an application comparing them would: each DiPair
        # call follows a cross-encoder call, so thread pools hand the cores back and forth between them
        times, alternated = [], []
        for q in sample:
            times.append(_time_cross_encoder(model, tokenizer, topics[q], texts[q], args.ce_max_length,
                                             args.ce_batch_size))
            start = time.perf_counter()
            reranker.rerank(topics[q], run[q][: args.depth])
            alternated.append((time.perf_counter() - start) * 1000.0)
        times_a = np.array(times)
        rows.append({"system": label, **_p(times_a)})
        rows.append({"system": f"    (a) right after {label[:3]}", **_p(np.array(alternated))})
        ratios[label[:3]] = times_a / np.array(alternated)
        del model

    # (d) BM25 alone and BM25 + DiPair end to end, batched over all topics, alternating pass by pass
    searcher = DiPairSearcher.from_index(args.index, first_stage="bm25", depth=args.depth, threads=args.threads,
                                         query_backend=args.query_backend)
    searcher.reranker.warm_up(args.depth)
    all_qids = list(topics)
    bm25_seconds, dipair_seconds = batched_seconds(searcher, all_qids, [topics[q] for q in all_qids],
                                                   passes=args.repeats, threads=args.threads, depth=args.depth,
                                                   jvm_warm_up=args.jvm_warm_up)
    qps = args.repeats * len(all_qids) / dipair_seconds
    bm25_qps = args.repeats * len(all_qids) / bm25_seconds

    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads, "rows": rows, "qps": qps,
               "jvm_warm_up_s": args.jvm_warm_up, "repeats": args.repeats,
               "bm25_qps": bm25_qps,
               "ratios_p50": {name: float(np.percentile(v, 50)) for name, v in ratios.items()}}
    if args.contention:
        summary["contention"] = contention_rows
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"# bench_latency  {time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}  "
          f"torch threads {args.threads}  depth {args.depth}  query backend {args.query_backend}  "
          f"{len(qids)} queries (cross-encoders: {len(next(iter(ratios.values())))}, max length {args.ce_max_length})"
          + "".join(f"  {name}={os.environ[name]}" for name in OPENMP_SETTINGS if name in os.environ))
    print(format_table(rows, ["system", "p50 ms", "p95 ms", "mean ms"]))
    for name, values in ratios.items():
        print(f"{name}/(a) per query, alternating on the same query: p50 {np.percentile(values, 50):.0f}x  "
              f"min {values.min():.0f}x  max {values.max():.0f}x")
    print(f"(d) batched ({len(all_qids)} queries x {args.repeats}, after {args.jvm_warm_up:.0f} s of BM25 alone): "
          f"BM25@{args.depth} alone {bm25_qps:.1f} queries/s; BM25 + DiPair@{args.depth} {qps:.1f} queries/s "
          f"({qps / bm25_qps:.2f}x BM25 alone; DiPair adds {1000 / qps - 1000 / bm25_qps:.2f} ms per query)")
    if args.contention:
        print("\n(a) quiet vs one core busy (a CPU-burning process pinned to one core), ms per query:")
        print(format_table(contention_rows, ["stage", "quiet p50", "busy p50", "busy p95", "busy/quiet p50"]))


OPENMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
"""Named in the header when set: torch's OpenMP workers spin for milliseconds after each cross-encoder call
(libgomp's default), on the cores the DiPair call that follows needs; ``OMP_WAIT_POLICY=PASSIVE`` stops that."""


BURNER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[2])})
end = time.time() + float(sys.argv[1])
while time.time() < end:
    pass
"""


def batched_seconds(searcher, qids: list[str], queries: list[str], *, passes: int, threads: int, depth: int = 100,
                    jvm_warm_up: float = 0.0) -> tuple[float, float]:
    """Seconds of BM25 alone and of BM25 + DiPair (``batch_search``) over ``passes`` batched passes through all
    ``queries``, taking turns pass by pass after ``jvm_warm_up`` seconds of BM25 alone and one untimed pass."""
    warm_until = time.perf_counter() + jvm_warm_up  # compare the two in the JVM's steady state
    while time.perf_counter() < warm_until:
        searcher.first_stage.retrieve(qids, queries, depth, threads=threads)
    bm25 = dipair = 0.0
    for repeat in range(passes + 1):  # the first pass warms both up
        start = time.perf_counter()
        searcher.first_stage.retrieve(qids, queries, depth, threads=threads)
        middle = time.perf_counter()
        searcher.batch_search(queries, qids, k=depth, threads=threads)
        if repeat:
            bm25, dipair = bm25 + middle - start, dipair + time.perf_counter() - middle
    return bm25, dipair


@contextmanager
def busy_core(seconds: float):
    """One CPU-burning process pinned to the last core for at most ``seconds`` (it stops by itself, and is
    killed on exit): a JVM, a web server or another job sharing the machine."""
    core = max(os.sched_getaffinity(0))
    burner = subprocess.Popen([sys.executable, "-c", BURNER, str(seconds), str(core)])
    time.sleep(0.5)  # let it start spinning
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def _time_stages(reranker, topics, run, qids, depth: int) -> dict[str, np.ndarray]:
    """Per-query ms of each re-rank stage over ``qids``, one query at a time."""
    reranker.timer.batches.clear()
    for qid in qids:
        reranker.rerank(topics[qid], run[qid][:depth])
    return {s: reranker.timer.per_query_ms(s) for s in ("query_encoding", "gather", "head")}


def _p(values: np.ndarray) -> dict[str, float]:
    stats = describe(np.asarray(values, dtype=np.float64))
    return {"p50 ms": stats["p50"], "p95 ms": stats["p95"], "mean ms": stats["mean"]}


if __name__ == "__main__":
    main()
