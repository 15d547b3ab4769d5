"""A batch's query encoding beside the first stage's search (shipped) against after it (before), side by side,
quiet and with one core busy (a CPU-burning process, as eval/bench_latency.py's ``--contention``); issue 11.

Pyserini's ``batch_search`` runs Lucene on every thread, then Python reads the hits on one core while the other
idles; ``DiPairSearcher.batch_search`` now starts encoding the batch on a side thread first
(``DiPairReranker.encode_queries_beside``), so the encoder's tasks fill that core. The arms take turns pass by
pass over all DL19 topics (BM25 top 100, as bench_latency.py's batched throughput), beside BM25 alone; the
searchers' outputs are compared too.

    python eval/overlap_first_stage.py   # needs indexes/eff-dl19; writes eval/results/overlap_first_stage.md
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from bench_latency import busy_core
from dipair_rerank.data import read_topics, shared_data_dir
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.pipeline import DiPairSearcher

ARMS = ("BM25 alone", "BM25 + DiPair, encoding beside the search (shipped)", "BM25 + DiPair, encoding after it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--passes", type=int, default=40, help="timed passes per arm and setting")
    parser.add_argument("--output", default="eval/results/overlap_first_stage.md")
    args = parser.parse_args()

    topics = read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv")
    qids, queries = list(topics), list(topics.values())
    searcher = DiPairSearcher.from_index(args.index, threads=2)
    reranker = searcher.reranker
    reranker.warm_up()
    beside = reranker._beside

    def run(arm: str):
        if arm == ARMS[0]:
            return searcher.first_stage.retrieve(qids, queries, 100, threads=2)
        reranker._beside = beside if arm == ARMS[1] else None  # without its side thread it encodes after
        return searcher.batch_search(queries, qids, k=100, threads=2)

    shipped, before = run(ARMS[1]), run(ARMS[2])
    difference = max(abs(a.score - b.score) for qid in qids for a, b in zip(shipped[qid], before[qid]))
    rows = []
    for setting, context in (("quiet", nullcontext), ("one core busy", lambda: busy_core(3600))):
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        with context():
            for arm in ARMS:
                run(arm)  # warm under this setting
            for i in range(args.passes):
                for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                    start = time.perf_counter()
                    run(arm)
                    times[arm].append((time.perf_counter() - start) * 1000.0 / len(qids))
        bm25 = float(np.median(times[ARMS[0]]))
        for arm, values in times.items():
            median = float(np.median(values))
            rows.append({"setting": setting, "arm": arm, "ms per query (median pass)": f"{median:.3f}",
                         "queries/s": f"{1000.0 / median:.1f}", "x BM25 alone": f"{bm25 / median:.3f}"})
    header = (f"# overlap_first_stage  {time.strftime('%Y-%m-%d %H:%M')}  {len(qids)} DL19 topics, BM25 top 100, "
              f"2 threads, {args.passes} passes per arm and setting; largest score difference between the DiPair "
              f"arms {difference:.1e}\n\n")
    publish_report(header + format_table(rows, list(rows[0])) + "\n", args.output)


if __name__ == "__main__":
    main()
