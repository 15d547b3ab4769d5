"""How the re-rank call's threads wait (issue 11): ONNX Runtime's spin policy and torch in the gather, quiet and
with one core busy, side by side in one run: one query's re-rank call (p50 ms of the call and its stages) and
BM25 + DiPair batched over all topics (queries/s, and its share of BM25 alone's rate, as eval/bench_latency.py's
(d)); and the CPU the process burns in the 100 ms after a call while it has nothing to do (idle CPU ms).

One core busy: a CPU-burning process pinned to one core starts once the arm's re-ranker is warm (another job
starting beside a running service: its threads were placed while the machine was quiet).

Arms (each in its own process, taking turns ``--rounds`` times, DL19 topics x BM25 top-100, 2 threads):
  shipped          ONNX Runtime workers spin within a call and stop when it ends (``onnx_query.inference_session``)
  no spinning      workers sleep whenever idle, also between the operators of one call (the policy before)
  spin on          workers spin within a call and keep spinning after it (ONNX Runtime's default)
  torch gather     the shipped policy, but the cache rows converted to float32 by torch, as before: a conversion
                   this size goes to torch's OpenMP workers, which spin-wait for a core another process holds
  no switch        the shipped policy, but a lone query always encoded on all threads, never moved to one thread
                   while its recent calls run slow or after other parallel work in the process
                   (``onnx_query.ContentionSwitch``)
  one thread       a lone query encoded on one thread (batches on all): slower quiet, steadier with a core busy

    python eval/thread_policy.py [--rounds 3] [--arms shipped "one thread"]   # needs indexes/eff-dl19
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_latency import batched_seconds, busy_core
from compare_revisions import dl19_queries, time_reranker
from dipair_rerank.evaluate.report import format_rounds, publish_report

ARMS = ("shipped", "no spinning", "spin on", "torch gather", "no switch", "one thread")
STAGES = ["rerank", "rerank p95", "query_encoding", "gather", "head", "idle CPU ms", "batched q/s", "x BM25 alone"]


def apply_arm(arm: str) -> None:
    """Patch this (child) process to ``arm``'s policy before the re-ranker is built."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from dipair_rerank.model import modeling, onnx_head, onnx_query

    if arm in ("no spinning", "spin on"):
        def session(path, threads):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if arm == "spin on" else "0")
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        onnx_query.inference_session = onnx_head.inference_session = session
    if arm == "no switch":
        onnx_query.ContentionSwitch.parallel = lambda self, cpu, wall: True
    if arm == "torch gather":
        def document_blocks(self, vectors, lengths, widen=True):
            slots = np.arange(self.doc_block_slots)
            mask = (slots < lengths[:, None]) | (slots >= self.config.doc_prefix)
            return torch.from_numpy(vectors).float(), torch.from_numpy(mask)

        modeling.DiPairModel.document_blocks = document_blocks


def child(arm: str, index: str, threads: int, passes: int, busy: bool) -> None:
    """Time ``arm`` in this process (with ``busy``, once warm, beside a CPU burner); print one JSON line (medians
    of the call and of each stage)."""
    apply_arm(arm)
    from dipair_rerank.rerank import DiPairReranker

    queries = dl19_queries()
    lone = 1 if arm == "one thread" else threads
    reranker = DiPairReranker.from_index(index, threads=lone, batch_threads=threads)
    timings = time_reranker(reranker, queries, passes)
    with busy_core(seconds=600) if busy else nullcontext():
        if busy:
            timings = time_reranker(reranker, queries, passes)
        idle = idle_cpu_ms(lambda: reranker.rerank(*queries[0]))
        throughput = batched(index, threads, [query for query, _ in queries])
    print(json.dumps({**timings, "idle CPU ms": idle, **throughput}))


def idle_cpu_ms(call, window_s: float = 0.1, repeats: int = 5) -> float:
    """CPU this process burns in the ``window_s`` after a call while it has nothing to do (spinning workers)."""
    burnt = []
    for _ in range(repeats):
        call()
        started = time.process_time()
        time.sleep(window_s)
        burnt.append((time.process_time() - started) * 1000.0)
    return statistics.median(burnt)


def batched(index: str, threads: int, queries: list[str], repeats: int = 2) -> dict[str, float]:
    """Queries/s of BM25 alone and of BM25 + DiPair, batched over all topics (as eval/bench_latency.py's (d))."""
    from dipair_rerank.pipeline import DiPairSearcher

    searcher = DiPairSearcher.from_index(index, first_stage="bm25", depth=100, threads=threads)
    searcher.reranker.warm_up()
    bm25, dipair = batched_seconds(searcher, [str(i) for i in range(len(queries))], queries, passes=repeats,
                                   threads=threads)
    return {"batched q/s": repeats * len(queries) / dipair, "x BM25 alone": bm25 / dipair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="passes over the 43 topics per process")
    parser.add_argument("--rounds", type=int, default=3, help="turns each arm takes, per condition")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default: all)")
    parser.add_argument("--output", default="eval/results/thread_policy.md", help="the report (also printed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.index, args.threads, args.passes, args.busy)
        return
    report = [f"# thread_policy  {time.strftime('%Y-%m-%d %H:%M')}  DL19 BM25 top-100, {args.threads} threads, "
              f"{args.rounds} rounds x {args.passes} passes; p50 ms (median over rounds; each round in brackets)\n"]
    for condition in ("quiet", "one core busy"):
        rows: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
        for _ in range(args.rounds):
            for arm in args.arms:
                command = [sys.executable, __file__, "--child", arm, "--index", args.index, "--threads",
                           str(args.threads), "--passes", str(args.passes), *(["--busy"] if condition != "quiet" else [])]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                rows[arm].append(json.loads(result.stdout.strip().splitlines()[-1]))
        report.append(f"\n## {condition}\n\n" + format_rounds("arm", rows, STAGES))
    publish_report("".join(report), args.output)


if __name__ == "__main__":
    main()
