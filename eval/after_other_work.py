"""DiPair right after other work in the same process (issue 11): the re-rank call's latency with the contention
switch's look at what ran before the call, and without it, side by side in one run.

Other threads of the process take the cores a two-thread DiPair call needs: a torch cross-encoder's OpenMP workers
spin for milliseconds after each call (libgomp's default), and in a search loop the JVM's threads (its compiler,
its collector, Lucene's) run beside Python. The shipped ``ContentionSwitch`` sends a lone query to one thread when
the process used more than 1.5 cores' worth of CPU since the last call ended. Two settings, DL19 topics with their
BM25 top-100:
  after a cross-encoder  per query (``--queries`` of them, ``--rounds`` times): a cross-encoder call (the packaged
                         MiniLM body with a fresh score head, as eval/bench_latency.py's (b)), then DiPair through
                         one arm's re-ranker, then the same for the other arm (the arms take turns going first);
                         also DiPair alone, 0.2 s after that, for reference;
  in a search loop       ``DiPairSearcher.search`` (Pyserini BM25 + DiPair) over all topics, the arms taking
                         turns pass by pass (``--passes`` each, after three untimed passes).

    python eval/after_other_work.py   # needs indexes/eff-dl19; writes eval/results/after_other_work.md
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
from dipair_rerank.cache import PrefixCache
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.rerank import DiPairReranker

ARMS = ("shipped", "no look before the call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=8, help="DL19 topics (each with its BM25 top-100)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over those topics")
    parser.add_argument("--passes", type=int, default=6, help="search-loop passes over all topics per arm")
    parser.add_argument("--output", default="eval/results/after_other_work.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    topics = dl19_queries()
    first = DiPairReranker.from_index(args.index, threads=args.threads)
    cache = PrefixCache(IndexLayout(args.index).cache)
    rerankers = {ARMS[0]: first, ARMS[1]: DiPairReranker(first.model, cache, threads=args.threads)}
    rerankers[ARMS[1]]._encode_queries.switch.busy_gap = math.inf
    for reranker in rerankers.values():
        reranker.warm_up()
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    header = (f"# after_other_work  {time.strftime('%Y-%m-%d %H:%M')}  DL19 BM25 top-100, {args.threads} threads\n\n"
              f"## after a cross-encoder call ({args.queries} queries x {args.rounds} rounds; MiniLM-L6 body, 100 "
              "pairs of 256 tokens at most)\n\n")
    rows = after_cross_encoder(rerankers, topics[: args.queries], args)
    report = header + format_table(rows, list(rows[0])) + "\n"
    rows = search_loop(rerankers, topics, args)
    report += (f"\n## in a search loop ({len(topics)} topics x {args.passes} passes per arm; ms per query)\n\n"
               + format_table(rows, list(rows[0])) + "\n")
    publish_report(report, args.output)


def _one_thread_calls(reranker) -> int:
    return reranker._encode_queries.switch.after_busy_gaps


def after_cross_encoder(rerankers: dict, queries: list[tuple[str, list[str]]], args: argparse.Namespace
                        ) -> list[dict[str, object]]:
    """Per arm: DiPair alone, DiPair right after a cross-encoder call, and the ratio of the two calls."""
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
    before = {arm: _one_thread_calls(rerankers[arm]) for arm in ARMS}
    for round_ in range(args.rounds):
        for position, ((query, docids), passages) in enumerate(zip(queries, texts)):
            for arm in ARMS if (round_ + position) % 2 == 0 else ARMS[::-1]:
                cross = _time_cross_encoder(model, tokenizer, query, passages, 256, 32)
                after[arm].append(dipair_ms(arm, query, docids))
                ratio[arm].append(cross / after[arm][-1])
                time.sleep(0.2)  # the cross-encoder's workers stop spinning: DiPair alone
                alone[arm].append(dipair_ms(arm, query, docids))
    return [{"arm": arm, "alone p50 ms": float(np.median(alone[arm])),
             "after CE p50 ms": float(np.median(after[arm])), "after CE p95 ms": float(np.percentile(after[arm], 95)),
             "CE / DiPair p50": float(np.median(ratio[arm])), "CE / DiPair min": float(np.min(ratio[arm])),
             "one-thread calls": _one_thread_calls(rerankers[arm]) - before[arm]}
            for arm in ARMS]


def search_loop(rerankers: dict, topics: list[tuple[str, list[str]]], args: argparse.Namespace
                ) -> list[dict[str, object]]:
    """Per arm: ``DiPairSearcher.search`` one topic at a time (p50/p95 of the call and of its re-rank stage)."""
    from dipair_rerank.evaluate.latency import StageTimer
    from dipair_rerank.first_stage import BM25FirstStage
    from dipair_rerank.pipeline import DiPairSearcher

    first_stage = BM25FirstStage(IndexLayout(args.index).lucene)
    searchers = {arm: DiPairSearcher(reranker, first_stage, depth=100) for arm, reranker in rerankers.items()}
    queries = [query for query, _ in topics]
    for _ in range(3):  # the JVM compiles Lucene's code over its first passes
        for searcher in searchers.values():
            for query in queries:
                searcher.search(query, k=10)
    calls: dict[str, list[float]] = {arm: [] for arm in ARMS}
    stages: dict[str, list[float]] = {arm: [] for arm in ARMS}
    before = {arm: _one_thread_calls(rerankers[arm]) for arm in ARMS}
    for pass_ in range(args.passes):
        for arm in ARMS if pass_ % 2 == 0 else ARMS[::-1]:
            timer = rerankers[arm].timer = StageTimer()
            for query in queries:
                started = time.perf_counter()
                searchers[arm].search(query, k=10)
                calls[arm].append((time.perf_counter() - started) * 1000.0)
            stages[arm].extend(sum(timer.per_query_ms(stage) for stage in ("query_encoding", "gather", "head")))
    return [{"arm": arm, "search p50": float(np.median(calls[arm])),
             "search p95": float(np.percentile(calls[arm], 95)), "re-rank stage p50": float(np.median(stages[arm])),
             "re-rank stage p95": float(np.percentile(stages[arm], 95)),
             "one-thread calls": f"{_one_thread_calls(rerankers[arm]) - before[arm]} of {len(calls[arm])}"}
            for arm in ARMS]


if __name__ == "__main__":
    main()
