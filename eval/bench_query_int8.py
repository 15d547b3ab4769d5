"""int8 query encoding (issue 11): the int8 query branch (``--query-backend onnx-int8``, the default: 8-bit weights in
blocks of 128, int8 arithmetic on ONNX Runtime) against the fp32 one (``onnx``).

For SciFact test and DL19 (BM25 top-100, the default model's indexes/eff-* caches), re-rank every query with
both query backends in one process and report nDCG@10 of each, the mean per-query Kendall tau between the two
rankings, and query-encoding p50 (one query at a time, 2 threads, one untimed pass first). The int8 graph is also
run on batches (``rerank_batch`` over ``--batch-size`` topics at a time, as ``batch_search`` and a busy service
run it): its output for a query depends a little on the other queries in the same call (up to ~0.04 in projected
vectors of magnitude ~2, where the fp32 graph's agree to 1e-7), so the batched rankings get their own nDCG and tau
against fp32.

    python eval/bench_query_int8.py          # needs indexes/eff-scifact and indexes/eff-dl19 (eval/effectiveness.py)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.stats import kendalltau

from dipair_rerank.evaluate import evaluate
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.data import shared_data_dir
from effectiveness import COLLECTIONS, bm25_top100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="topics per batch (batch_search's default)")
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    parser.add_argument("--json", default="eval/results/bench_query_int8.json")
    parser.add_argument("--output", default="eval/results/bench_query_int8.txt", help="the table (also printed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dipair_rerank.rerank import DiPairReranker

    data = shared_data_dir()
    rows = []
    for name, spec in ((name, COLLECTIONS[name]) for name in args.collections):
        topics, qrels, cands = bm25_top100(spec, data)
        runs, encode_ms = {}, {}
        for backend in ("onnx", "onnx-int8"):
            reranker = DiPairReranker.from_index(spec["index"], threads=args.threads, query_backend=backend)
            reranker.warm_up()
            for _ in range(2):  # the first pass warms caches; the second is timed
                reranker.timer.batches.clear()
                runs[backend] = {q: [(h.docid, h.score) for h in reranker.rerank(topics[q], hits)]
                                 for q, hits in cands.items()}
            encode_ms[backend] = float(np.median(reranker.timer.per_query_ms("query_encoding")))
        qids = list(cands)
        runs["batched"] = {}
        for start in range(0, len(qids), args.batch_size):
            chunk = qids[start : start + args.batch_size]
            ranked = reranker.rerank_batch([topics[q] for q in chunk], [cands[q] for q in chunk])  # int8's
            runs["batched"].update({q: [(h.docid, h.score) for h in hits] for q, hits in zip(chunk, ranked)})
        ndcg = {b: next(v.value for v in evaluate(qrels, runs[b], "nDCG@10")) for b in runs}
        for arm, label in (("onnx-int8", "int8"), ("batched", "int8 batched")):
            taus = [_kendall_tau(runs["onnx"][qid], runs[arm][qid]) for qid in qids]
            rows.append({"collection": name, "int8 run": label, "nDCG@10 fp32": ndcg["onnx"],
                         "nDCG@10 int8": ndcg[arm], "delta": ndcg[arm] - ndcg["onnx"],
                         "mean Kendall tau": float(np.mean(taus)), "min Kendall tau": float(np.min(taus)),
                         "encode p50 ms fp32": encode_ms["onnx"], "encode p50 ms int8": encode_ms["onnx-int8"]})
    four_places = {"nDCG@10 fp32", "nDCG@10 int8", "delta"}  # the criterion is a delta within 0.002
    shown = [{k: f"{v:.4f}" if k in four_places else v for k, v in row.items()} for row in rows]
    publish_report(f"# bench_query_int8  {time.strftime('%Y-%m-%d %H:%M')}  {args.threads} threads, default model\n"
                   + format_table(shown, list(rows[0])), args.output)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def _kendall_tau(reference: list[tuple[str, float]], other: list[tuple[str, float]]) -> float:
    """Kendall tau between two scorings of the same candidates."""
    reference_scores, other_scores = dict(reference), dict(other)
    docs = list(reference_scores)
    return kendalltau([reference_scores[d] for d in docs], [other_scores[d] for d in docs]).statistic


if __name__ == "__main__":
    main()
