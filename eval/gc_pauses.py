"""Python's garbage collector in a search loop (issue 11): what its passes cost with the objects alive after
loading left in its full passes, and frozen out of them (``gc.freeze``, as ``DiPairReranker.warm_up`` now does),
side by side in one process.

A loaded re-ranker holds ~0.5M tracked objects (torch, transformers, ONNX, the JVM bridge). Batched search keeps
hits alive long enough that some reach the oldest generation, and every so often Python runs a full pass over all
of them. Two loops over the DL19 topics, the arms taking turns round by round (``gc.unfreeze``/``gc.freeze``):
  batched      ``DiPairSearcher.batch_search`` over all topics (Pyserini BM25 + DiPair), ``--passes`` per round;
  lone         ``DiPairSearcher.search`` one topic at a time, ``--lone`` queries per round.
Reported: queries/s, and per generation the passes the collector ran and their milliseconds in all.

    python eval/gc_pauses.py   # needs indexes/eff-dl19; writes eval/results/gc_pauses.md
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dipair_rerank.data import read_topics, shared_data_dir
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.pipeline import DiPairSearcher

ARMS = ("frozen (shipped)", "not frozen")


class PassClock:
    """Milliseconds of each garbage-collector pass, by generation (a ``gc.callbacks`` hook)."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.passes.append((info["generation"], (time.perf_counter() - self._started) * 1000.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=10, help="batch_search passes over all topics per round")
    parser.add_argument("--lone", type=int, default=400, help="lone queries per round")
    parser.add_argument("--output", default="eval/results/gc_pauses.md")
    args = parser.parse_args()

    topics = read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv")
    qids, queries = list(topics), list(topics.values())
    searcher = DiPairSearcher.from_index(args.index, threads=args.threads)
    searcher.reranker.warm_up()  # collects, then freezes
    for _ in range(3):
        searcher.batch_search(queries, qids, k=100, threads=args.threads)

    def batched() -> int:
        for _ in range(args.passes):
            searcher.batch_search(queries, qids, k=100, threads=args.threads)
        return args.passes * len(qids)

    def lone() -> int:
        for i in range(args.lone):
            searcher.search(queries[i % len(queries)], k=10)
        return args.lone

    loops = {"batched": batched, "lone": lone}
    clock = PassClock()
    totals = collections.defaultdict(lambda: [0, 0.0])  # (loop, arm) -> [queries, seconds]
    passes = collections.defaultdict(lambda: [0, 0.0])  # (loop, arm, generation) -> [passes, ms]
    for round_ in range(args.rounds):
        for arm in ARMS if round_ % 2 == 0 else ARMS[::-1]:
            (gc.freeze if arm == ARMS[0] else gc.unfreeze)()
            for loop, run in loops.items():
                clock.passes.clear()
                start = time.perf_counter()
                count = run()
                totals[loop, arm][0] += count
                totals[loop, arm][1] += time.perf_counter() - start
                for generation, ms in clock.passes:
                    passes[loop, arm, generation][0] += 1
                    passes[loop, arm, generation][1] += ms
    rows = []
    for loop in loops:
        for arm in ARMS:
            count, seconds = totals[loop, arm]
            row = {"loop": loop, "arm": arm, "queries": count, "queries/s": f"{count / seconds:.1f}"}
            for generation in range(3):
                number, ms = passes[loop, arm, generation]
                row[f"gen {generation} passes (ms)"] = f"{number} ({ms:.1f})"
            row["collector share"] = f"{sum(passes[loop, arm, g][1] for g in range(3)) / 10 / seconds:.1f}%"
            rows.append(row)
    header = (f"# gc_pauses  {time.strftime('%Y-%m-%d %H:%M')}  threads {args.threads}  {len(qids)} DL19 topics, "
              f"{args.rounds} rounds, arms alternating\n\n")
    publish_report(header + format_table(rows, list(rows[0])) + "\n", args.output)


if __name__ == "__main__":
    main()
