"""DiPair right after a cross-encoder call in the same process (issue 11): the re-rank call's latency with the
contention switch's look at what ran before the call, and without it, side by side in one run.

A torch cross-encoder's OpenMP workers spin on the cores for milliseconds after each call (libgomp's default), so a
two-thread DiPair call that follows one shares its cores with them. The shipped ``ContentionSwitch`` sends a lone
query to one thread when the process used more than 1.5 cores since the last call ended. Per DL19 query (BM25
top-100, ``--queries`` of them, each ``--rounds`` times): a cross-encoder call (the packaged MiniLM body with a
fresh score head, as eval/bench_latency.py's (b)), then DiPair through one arm's re-ranker, then the same for the
other arm; the arms take turns going first. Also DiPair alone (no cross-encoder call before it) for reference.

    python eval/after_cross_encoder.py   # needs indexes/eff-dl19; writes eval/results/after_cross_encoder.md
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench_latency import _cross_encoder, _time_cross_encoder
from compare_revisions import dl19_queries
from dipair_rerank.evaluate.report import format_table, publish_report

ARMS = ("shipped", "no look before the call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=8, help="DL19 topics (each with its BM25 top-100)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over those topics")
    parser.add_argument("--output", default="eval/results/after_cross_encoder.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from dipair_rerank.cache import PrefixCache
    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.rerank import DiPairReranker

    queries = dl19_queries()[: args.queries]
    first = DiPairReranker.from_index(args.index, threads=args.threads)
    cache = PrefixCache(IndexLayout(args.index).cache)
    rerankers = {ARMS[0]: first, ARMS[1]: DiPairReranker(first.model, cache, threads=args.threads)}
    rerankers[ARMS[1]]._encode_queries.switch.busy_gap = math.inf
    for reranker in rerankers.values():
        reranker.warm_up()

    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.search.lucene import LuceneSearcher

    lucene = LuceneSearcher(os.path.join(args.index, "lucene"))
    texts = [[lucene.doc(docid).contents() for docid in docids] for _, docids in queries]
    model, tokenizer = _cross_encoder("minilm", args.threads)
    _time_cross_encoder(model, tokenizer, queries[0][0], texts[0][:8], 256, 8)  # warm-up

    def dipair_ms(arm: str, query: str, docids: list[str]) -> float:
        started = time.perf_counter()
        rerankers[arm].rerank(query, docids)
        return (time.perf_counter() - started) * 1000.0

    after: dict[str, list[float]] = {arm: [] for arm in ARMS}
    ratio: dict[str, list[float]] = {arm: [] for arm in ARMS}
    alone: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):
        for position, ((query, docids), passages) in enumerate(zip(queries, texts)):
            order = ARMS if (round_ + position) % 2 == 0 else ARMS[::-1]
            for arm in order:
                cross = _time_cross_encoder(model, tokenizer, query, passages, 256, 32)
                after[arm].append(dipair_ms(arm, query, docids))
                ratio[arm].append(cross / after[arm][-1])
                time.sleep(0.2)  # the cross-encoder's workers stop spinning: DiPair alone
                alone[arm].append(dipair_ms(arm, query, docids))
    rows = [{"arm": arm, "alone p50 ms": float(np.median(alone[arm])),
             "after CE p50 ms": float(np.median(after[arm])), "after CE p95 ms": float(np.percentile(after[arm], 95)),
             "CE / DiPair p50": float(np.median(ratio[arm])), "CE / DiPair min": float(np.min(ratio[arm])),
             "one-thread calls": rerankers[arm]._encode_queries.switch.after_busy_gaps}
            for arm in ARMS]
    report = (f"# after_cross_encoder  {time.strftime('%Y-%m-%d %H:%M')}  DL19 BM25 top-100, {args.threads} threads, "
              f"{len(queries)} queries x {args.rounds} rounds; cross-encoder: MiniLM-L6 body, 100 pairs of 256 "
              "tokens at most\n\n"
              + format_table(rows, ["arm", "alone p50 ms", "after CE p50 ms", "after CE p95 ms", "CE / DiPair p50",
                                    "CE / DiPair min", "one-thread calls"]) + "\n")
    publish_report(report, args.output)


if __name__ == "__main__":
    main()
