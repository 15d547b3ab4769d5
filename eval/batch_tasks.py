"""A batch of queries as tasks on one thread each, two at a time (shipped), against one call per step on a
two-thread ONNX Runtime session (before), side by side, quiet and with one core busy (a CPU-burning process, as
eval/bench_latency.py's ``--contention``); issue 11.

  query encoding  all DL19 topics: groups of equal token length as tasks (``OnnxQueryEncoder.encode_many``),
                  against groups within 1.5x of each other's length one after the other (padded to their longest);
  head            the same topics' BM25 top-100 from the index's cache (4,300 pairs): tasks of whole queries
                  (``OnnxHead``), against one call.
The arms take turns call by call; the largest output difference between them is reported too.

    python eval/batch_tasks.py   # needs indexes/eff-dl19; writes eval/results/batch_tasks.md
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bench_latency import busy_core
from compare_revisions import dl19_queries
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.rerank import QUERY_GROUP_RATIO, DiPairReranker, length_groups, padded_batch

ARMS = ("tasks, one thread each (shipped)", "one two-thread call per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per arm and setting")
    parser.add_argument("--output", default="eval/results/batch_tasks.md")
    args = parser.parse_args()

    pairs = dl19_queries()
    reranker = DiPairReranker.from_index(args.index, threads=2)
    reranker.warm_up()
    head = reranker._onnx_head
    encoded = reranker.encode_queries([query for query, _ in pairs])
    blocks = reranker._gather([docid for _, docids in pairs for docid in docids], encoded,
                              [len(docids) for _, docids in pairs])[:2]
    query_index = torch.arange(len(pairs)).repeat_interleave(torch.tensor([len(docids) for _, docids in pairs]))
    inputs = (encoded.vectors, encoded.mask, *blocks, query_index)
    pool = head._pool
    encoder = reranker._encode_queries
    queries = [query for query, _ in pairs]
    ids = reranker._query_token_ids(queries)
    groups = length_groups([len(row) for row in ids], QUERY_GROUP_RATIO)
    before = [padded_batch([ids[i] for i in group], reranker._pad_id) for group in groups]
    order = torch.tensor([i for group in groups for i in group]).argsort()

    def encode(arm: str) -> torch.Tensor:
        if arm == ARMS[0]:
            return reranker.encode_queries(queries).vectors
        return torch.cat([encoder(batch).vectors for batch in before])[order]

    def score(arm: str) -> torch.Tensor:
        head._pool = pool if arm == ARMS[0] else None  # without its pool the head makes one call
        return head(*inputs)

    rows = []
    for step, call in (("query encoding", encode), ("head", score)):
        difference = float((call(ARMS[0]) - call(ARMS[1])).abs().max())
        for setting, context in (("quiet", nullcontext), ("one core busy", lambda: busy_core(600))):
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            with context():
                for i in range(args.calls):
                    for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                        start = time.perf_counter()
                        call(arm)
                        times[arm].append((time.perf_counter() - start) * 1000.0 / len(pairs))
            for arm, values in times.items():
                rows.append({"step": step, "setting": setting, "arm": arm,
                             "p50 ms per query": f"{np.median(values):.3f}",
                             "p95 ms per query": f"{np.percentile(values, 95):.3f}",
                             "largest difference": f"{difference:.1e}"})
    head._pool = pool
    header = (f"# batch_tasks  {time.strftime('%Y-%m-%d %H:%M')}  {len(pairs)} DL19 topics (head: x BM25 top-100), "
              f"{args.calls} calls per arm, step and setting\n\n")
    publish_report(header + format_table(rows, list(rows[0])) + "\n", args.output)


if __name__ == "__main__":
    main()
