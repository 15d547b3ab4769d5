"""Quality against latency: nDCG@10 vs per-query latency on DL19 and SciFact for BM25 alone,
BM25 + DiPair and BM25 + a cross-encoder, re-ranking depths 10, 20, 50, 100, with the bi-encoder and the
teacher as points (from eval/effectiveness.py's table); writes eval/quality_latency.png.

Latency = BM25 p50 (measured on the index) + re-rank p50 at that depth (measured here, 2 threads). DiPair
quality comes from re-ranking here; cross-encoder quality from the scores in ``--ce-runs`` (the cross-encoder
run that eval/effectiveness.py --cross-encoder writes), its latency from timing the same-size MiniLM-L6
cross-encoder on --ce-queries queries per depth.

    python eval/plot_tradeoff.py [--ce-runs eval/work/effectiveness]
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

from bench_latency import _cross_encoder, _time_cross_encoder
from dipair_rerank.data import read_run, shared_data_dir
from dipair_rerank.data.corpus import read_corpus
from dipair_rerank.evaluate import evaluate
from dipair_rerank.evaluate.plot import Point, plot_quality_latency
from effectiveness import COLLECTIONS, bm25_top100

DEPTHS = (10, 20, 50, 100)


def reorder(cands, scores: dict[str, dict[str, float]], depth: int):
    """Top ``depth`` re-ordered by ``scores``, the rest of the first-stage list after them."""
    run = {}
    for qid, hits in cands.items():
        head = sorted(hits[:depth], key=lambda h: -scores[qid][h[0]])
        tail = hits[depth:]
        run[qid] = [(d, float(len(hits) - rank)) for rank, (d, _) in enumerate(head + tail)]
    return run


def _table_points(table: Path, collection: str, base_ms: float) -> list[Point]:
    """The bi-encoder, the no-head hybrid and the teacher as single points (re-ranking all 100), from the
    effectiveness table."""
    if not table.is_file():
        return []
    rows = json.loads(table.read_text()).get(collection, [])
    wanted = {"all-MiniLM-L6-v2": "bi-encoder (MiniLM)", "teacher": "teacher (fusion)",
              "no head: z-fusion": "no-head hybrid (fitted)"}
    return [Point(label, "@100", base_ms + row["rerank_p50_ms"], row["nDCG@10"])
            for row in rows for prefix, label in wanted.items()
            if row["row"].startswith(prefix) and row["rerank_p50_ms"] is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce-runs", default="eval/work/effectiveness")
    parser.add_argument("--ce-queries", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="eval/quality_latency.png")
    parser.add_argument("--table", default="eval/work/effectiveness/table.json",
                        help="eval/effectiveness.py's output: the bi-encoder and teacher points (@100)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dipair_rerank.first_stage import BM25FirstStage
    from dipair_rerank.rerank import DiPairReranker

    data = shared_data_dir()
    figure, panels = plt.subplots(1, len(COLLECTIONS), figsize=(12, 4.4), dpi=120)
    ce_model, ce_tokenizer = _cross_encoder("minilm", args.threads)
    summary = {}
    for axes, (name, spec) in zip(panels, COLLECTIONS.items()):
        folder = data / spec["dir"]
        topics, qrels, cands = bm25_top100(spec, data)
        quality = lambda run: next(v.value for v in evaluate(qrels, run, "nDCG@10"))  # noqa: E731
        bm25 = BM25FirstStage(Path(spec["index"]) / "lucene")
        bm25_ms = []
        for qid in cands:
            start = time.perf_counter()
            bm25.retrieve([qid], [topics[qid]], 100)
            bm25_ms.append((time.perf_counter() - start) * 1000)
        base_ms = float(np.median(bm25_ms))
        points = [Point("BM25", "", base_ms, quality(cands))]
        reranker = DiPairReranker.from_index(spec["index"], threads=args.threads)
        reranker.warm_up()
        full = {q: {h.docid: h.score for h in reranker.rerank(topics[q], cands[q])} for q in cands}
        ce_file = Path(args.ce_runs) / f"{spec['dir']}.cross-encoder.trec"
        ce_scores = {q: dict(h) for q, h in read_run(ce_file).items()} if ce_file.is_file() else None
        wanted = {d for q in list(cands)[: args.ce_queries] for d, _ in cands[q]}
        texts = {doc.docid: doc.text for doc in read_corpus(folder / "corpus.jsonl") if doc.docid in wanted}
        for depth in DEPTHS:
            reranker.timer.batches.clear()
            for qid in cands:
                reranker.rerank(topics[qid], cands[qid][:depth])
            rerank_ms = float(np.median(sum(reranker.timer.per_query_ms(s) for s in ("query_encoding", "gather", "head"))))
            points.append(Point("BM25 + DiPair", f"@{depth}", base_ms + rerank_ms, quality(reorder(cands, full, depth))))
            if ce_scores is not None:
                times = [_time_cross_encoder(ce_model, ce_tokenizer, topics[q], [texts[d] for d, _ in cands[q][:depth]],
                                             256, 32) for q in list(cands)[: args.ce_queries]]
                points.append(Point("BM25 + cross-encoder", f"@{depth}", base_ms + float(np.median(times)),
                                    quality(reorder(cands, ce_scores, depth))))
        points += _table_points(Path(args.table), name, base_ms)
        plot_quality_latency(points, args.out, title=f"{name}: BM25 top-k re-ranked", axes=axes)
        summary[name] = [p._asdict() for p in points]
    plt.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(args.out)
    Path("eval/results").mkdir(parents=True, exist_ok=True)
    Path("eval/results/quality_latency.json").write_text(json.dumps(summary, indent=1))
    for name, points in summary.items():
        print(f"{name}: " + "; ".join(f"{p['system']}{p['label']} {p['quality']:.3f} @ {p['latency_ms']:.1f} ms"
                                      for p in points))
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
