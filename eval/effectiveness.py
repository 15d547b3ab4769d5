"""The effectiveness table of issue 3, in one command: SciFact test and TREC DL19, BM25 top-100 re-ranked.

    HF_HUB_OFFLINE=1 python eval/effectiveness.py [--out eval/work/effectiveness] [--teacher eval/teacher.json]

Rows: BM25 (the shared run), the all-MiniLM-L6-v2 bi-encoder re-rank, the teacher (the fusion teacher the
default model was distilled from, weights from ``--teacher``; optionally a fine-tuned cross-encoder via
``--cross-encoder``), the shipped DiPair default model re-ranking from its prefix cache, and that model's scores
z-score fused with the first-stage score using the teacher's weights (the student cannot see BM25 scores; this
adds them back). Columns: the collection's measures and re-rank latency p50 per query (ms; everything after the
first stage: query encoding, scoring the 100 candidates from cached document representations, sorting; for a
cross-encoder, its 100 pair passes).

Reuses: bi-encoder embeddings (``--embeddings``) and the DiPair indexes (``indexes/eff-*``, rebuilt only when
the default model's fingerprint changes). Reads the shared data from ``$DIPAIR_DATA`` (default ../shared/data).
Writes ``OUT/table.md``, ``OUT/table.json`` and the runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from dipair_rerank.data import read_qrels, read_run, read_topics, shared_data_dir, write_run
from dipair_rerank.data.runs import Run, sort_hits

logger = logging.getLogger("effectiveness")

COLLECTIONS = {
    "SciFact test": dict(dir="scifact", topics="queries.test.tsv", qrels="qrels.test.txt",
                         measures="nDCG@10 RR@10 R@100", index="indexes/eff-scifact", teacher_key="scifact"),
    "TREC DL19": dict(dir="msmarco-dl19", topics="queries.tsv", qrels="qrels.official.txt",
                      measures="nDCG@10 RR(rel=2)@10 R(rel=2)@100", index="indexes/eff-dl19", teacher_key="msmarco"),
}


def bm25_top100(spec: dict, data: Path) -> tuple[dict[str, str], dict[str, dict[str, int]], Run]:
    """A collection's topics, qrels and its shared BM25 top-100 run (queries that have a topic)."""
    folder = data / spec["dir"]
    topics, qrels = read_topics(folder / spec["topics"]), read_qrels(folder / spec["qrels"])
    cands = {q: h[:100] for q, h in read_run(folder / "runs/bm25.top100.trec").items() if q in topics}
    return topics, qrels, cands


def _measures(qrels, run: Run, measures: str) -> dict[str, float]:
    from dipair_rerank.evaluate import evaluate

    return {v.measure: v.value for v in evaluate(qrels, run, measures)}


def _biencoder(topics, cands, texts, cache: Path):
    """Bi-encoder run + per-query re-rank latency (query encoding + 100 dot products + sort)."""
    from dipair_rerank.train.fusion import biencoder_scores, embed, load_biencoder

    run = biencoder_scores(topics, cands, texts, cache_dir=cache)
    docids = list(dict.fromkeys(d for hits in cands.values() for d, _ in hits))
    d_vecs = embed([texts[d] for d in docids], cache_dir=cache, progress=False)
    row = {d: i for i, d in enumerate(docids)}
    model = load_biencoder()
    latencies = []
    for qid, hits in cands.items():
        rows = np.asarray([row[d] for d, _ in hits])
        start = time.perf_counter()
        q = model.encode([topics[qid]], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        scores = d_vecs[rows] @ q[0]
        np.argsort(-scores)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def _dipair(name: str, spec: dict, data: Path, topics, cands, threads: int):
    """Default-model DiPair run from its index (built if missing or made with another model) + latency."""
    from dipair_rerank.indexer import IndexOptions, build_index
    from dipair_rerank.model import load_model
    from dipair_rerank.pipeline import DiPairSearcher
    from dipair_rerank.search import search_topics

    fingerprint = load_model(None).fingerprint()
    index = Path(spec["index"])
    manifest = index / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text())["model_fingerprint"] != fingerprint:
        logger.info("%s: building %s with the default model", name, index)
        build_index(data / spec["dir"] / "corpus.jsonl", index, model=None, options=IndexOptions(threads=threads))
    searcher = DiPairSearcher.from_index(index, candidates=cands, depth=100, threads=threads)
    run = search_topics(searcher, topics, hits=100, batch_size=1, threads=1, progress=False)
    timer = searcher.timer
    parts = [timer.per_query_ms(s) for s in ("query_encoding", "gather", "head")]
    parts = [p for p in parts if len(p)]
    if parts and all(len(p) == len(parts[0]) for p in parts):
        return run, list(sum(parts)), fingerprint
    return run, [float(sum(np.median(p) for p in parts))], fingerprint  # stages timed per batch: medians


def _cross_encoder(path: str, topics, cands, texts, cache: Path, latency_queries: int = 10):
    from dipair_rerank.train.teacher import _load_cross_encoder, score_candidates

    run = score_candidates(path, topics, cands, texts, cache_dir=cache)
    model = _load_cross_encoder(path, device="cpu", max_length=None)
    latencies = []
    for qid in list(cands)[:latency_queries]:
        pairs = [(topics[qid], texts[d]) for d, _ in cands[qid]]
        start = time.perf_counter()
        model.predict(pairs, batch_size=100, show_progress_bar=False)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="eval/work/effectiveness")
    parser.add_argument("--teacher", default="eval/teacher.json",
                        help="fusion teacher weights per domain (written by eval/train_default.sh)")
    parser.add_argument("--cross-encoder", default=None, help="also a row for this fine-tuned cross-encoder")
    parser.add_argument("--embeddings", default="eval/work/embeddings", help="bi-encoder embedding cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from dipair_rerank.data.corpus import read_corpus
    from dipair_rerank.train.fusion import fuse, parse_scorers

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_weights = json.loads(Path(args.teacher).read_text())
    results: dict[str, list[dict]] = {}
    fingerprint = None
    for name in args.collections:
        spec = COLLECTIONS[name]
        folder = data / spec["dir"]
        topics, qrels, cands = bm25_top100(spec, data)
        wanted = {d for hits in cands.values() for d, _ in hits}
        texts = {doc.docid: doc.text for doc in read_corpus(folder / "corpus.jsonl") if doc.docid in wanted}
        rows = []

        def add(label: str, run: Run, latencies: list[float] | None, slug: str) -> None:
            write_run(run, out / f"{spec['dir']}.{slug}.trec", tag=slug, hits=100)
            values = _measures(qrels, run, spec["measures"])
            p50 = float(np.percentile(latencies, 50)) if latencies else None
            rows.append({"row": label, **values, "rerank_p50_ms": p50})
            logger.info("%s | %s | %s | p50 %s", name, label, values, p50)

        add("BM25 (shared run)", cands, None, "bm25")
        bi_run, bi_lat = _biencoder(topics, cands, texts, Path(args.embeddings))
        add("all-MiniLM-L6-v2 bi-encoder re-rank", bi_run, bi_lat, "biencoder")
        scorers = parse_scorers(teacher_weights[spec["teacher_key"]])
        by_kind = {"biencoder": bi_run, "first_stage": cands}
        fused_lat = []
        for _ in range(3):  # the fusion on top of the bi-encoder's scores: z-scores and a weighted sum
            start = time.perf_counter()
            teacher_run = fuse([by_kind[s.kind] for s in scorers], [s.weight for s in scorers])
            fused_lat.append((time.perf_counter() - start) * 1000 / len(cands))
        teacher_lat = [b + float(np.median(fused_lat)) for b in bi_lat]
        add(f"teacher: fusion {teacher_weights[spec['teacher_key']]}", teacher_run, teacher_lat, "teacher")
        if args.cross_encoder:
            ce_run, ce_lat = _cross_encoder(args.cross_encoder, topics, cands, texts, out / "ce-cache")
            add(f"cross-encoder {args.cross_encoder}", ce_run, ce_lat, "cross-encoder")
        dp_run, dp_lat, fingerprint = _dipair(name, spec, data, topics, cands, args.threads)
        add("DiPair default model (shipped)", dp_run, dp_lat, "dipair")
        # The teacher's own recipe applied to the student: DiPair in the bi-encoder's place, same weights.
        by_kind["biencoder"] = {q: dp_run[q][:100] for q in cands}
        mixed = fuse([by_kind[s.kind] for s in scorers], [s.weight for s in scorers])
        add("DiPair + first-stage score (teacher's weights)", mixed, [x + float(np.median(fused_lat))
                                                                     for x in dp_lat], "dipair-fused")
        results[name] = rows

    lines = [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({platform.processor() or platform.machine()}, {args.threads} threads), "
             f"default model {str(fingerprint)[:12]}: `python eval/effectiveness.py`", ""]
    for name, rows in results.items():
        measures = [k for k in rows[0] if k not in ("row", "rerank_p50_ms")]
        lines.append(f"**{name}** (BM25 top-100 re-ranked)\n")
        lines.append("| row | " + " | ".join(measures) + " | re-rank p50 ms/query |")
        lines.append("|---|" + "---:|" * (len(measures) + 1))
        for row in rows:
            p50 = "—" if row["rerank_p50_ms"] is None else f"{row['rerank_p50_ms']:.1f}"
            lines.append(f"| {row['row']} | " + " | ".join(f"{row[m]:.4f}" for m in measures) + f" | {p50} |")
        lines.append("")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
