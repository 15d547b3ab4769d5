"""The DiPair shape ablation, on a validation split of the *training* data (never a test set).

    HF_HUB_OFFLINE=1 python eval/recipe/ablation.py [--max-train-queries 4000] [--epochs 4]

Each configuration changes one value of the default (m=8, n=16, d_p=128, 2 head layers, similarity residual on)
and trains stage 1 over the cached frozen-encoder features of eval/recipe/train_default.sh (same sets, same
teacher, same validation split as the default model). Columns: best validation nDCG@10 against qrels (validation
queries of SciFact train, SciFact title pseudo-queries and DL21), agreement with the teacher (nDCG@10 with the
teacher's top 3 as relevant), head latency (p50 ms to score 100 candidates of one query, cached document blocks
in hand) and bytes per cached document (fp16). Rows are appended to ``OUT/results.jsonl`` as they finish, so a
rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from dipair_rerank.model import DiPairConfig, DiPairModel
from dipair_rerank.train.cached import CachedStage1Config, pack, split_validation, train_stage1_cached, validate
from dipair_rerank.train.distill import build_examples
from dipair_rerank.train.features import extract_features
from dipair_rerank.train.sets import TrainSetSpec, load_sets

logger = logging.getLogger("ablation")

BASE = dict(query_prefix=8, doc_prefix=16, proj_dim=128, head_layers=2, similarity_residual=True)
VARIANTS = [
    ("default (m=8, n=16, d_p=128, 2 layers, residual)", {}),
    ("no similarity residual", {"similarity_residual": False}),
    ("m=4", {"query_prefix": 4}),
    ("m=16", {"query_prefix": 16}),
    ("n=8", {"doc_prefix": 8}),
    ("n=32", {"doc_prefix": 32}),
    ("d_p=64", {"proj_dim": 64, "head_ffn": 256}),
    ("d_p=256", {"proj_dim": 256, "head_ffn": 1024}),
    ("1 head layer", {"head_layers": 1}),
    ("3 head layers", {"head_layers": 3}),
]
SET_NAMES = ["scifact-train", "scifact-titles", "dl21", "dl22", "marco-dev"]


@torch.inference_mode()
def head_latency_ms(model: DiPairModel, candidates: int = 100, repeats: int = 50, score=None) -> float:
    """p50 ms of one head call scoring ``candidates`` cached document blocks for one query (with ``score``, e.g.
    an ``OnnxHead``, instead of ``model.score_prefixes``)."""
    score = score or model.score_prefixes
    config = model.config
    q = torch.randn(1, config.query_slots, config.proj_dim)
    q_mask = torch.ones(1, config.query_slots, dtype=torch.bool)
    d = torch.randn(candidates, config.doc_slots, config.proj_dim)
    d_mask = torch.ones(candidates, config.doc_slots, dtype=torch.bool)
    query_index = torch.zeros(candidates, dtype=torch.long)
    times = []
    for _ in range(repeats + 5):
        start = time.perf_counter()
        score(q, q_mask, d, d_mask, query_index)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times[5:], 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="eval/work/train", help="folder of eval/recipe/train_default.sh")
    parser.add_argument("--features", default="eval/work/features")
    parser.add_argument("--out", default="eval/work/ablation")
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--max-train-queries", type=int, default=4000, help="training queries subsampled")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-candidates", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in training (2x faster here)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant labels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [TrainSetSpec(str(work / "sets" / n / "topics.tsv"), str(work / "sets" / n / "candidates.trec"),
                          str(work / "sets" / n / "corpus"),
                          str(work / "sets" / n / "qrels.txt") if (work / "sets" / n / "qrels.txt").is_file()
                          else None) for n in SET_NAMES]
    teachers = [f"run:{work / 'teacher' / (n + '.trec')}" for n in SET_NAMES]
    topics, candidates, texts, teacher, qrels, group = load_sets(specs, teachers, depth=args.depth,
                                                                 cache_dir=out / "unused")
    examples = build_examples(topics, candidates, teacher, texts, depth=args.depth, qrels=qrels)
    train, val = split_validation(examples, 0.1, 0, group)  # the default model's split (seed 0, 10%)
    train = random.Random(0).sample(train, min(args.max_train_queries, len(train)))
    logger.info("ablation: %d training queries (subsampled), %d validation queries", len(train), len(val))
    probe = DiPairModel(DiPairConfig())
    queries = extract_features(probe, [e.query for e in examples], Path(args.features) / "query-L32-k16",
                               side="query", keep=16)
    docs = extract_features(probe, list(dict.fromkeys(texts[d] for e in examples for d in e.docids)),
                            Path(args.features) / "doc-L256-k32", side="doc", keep=32)
    results_path = out / "results.jsonl"
    done = {json.loads(line)["variant"] for line in results_path.open()} if results_path.is_file() else set()
    for label, change in VARIANTS:
        if label in done or (args.only and label not in args.only):
            continue
        model = DiPairModel(DiPairConfig(**{**BASE, **change}))
        config = CachedStage1Config(epochs=args.epochs, lr=args.lr, queries_per_step=32,
                                    sample_candidates=args.sample_candidates, loss="kl", patience=args.epochs,
                                    bf16=args.bf16, progress=False)
        started = time.perf_counter()
        summary = train_stage1_cached(model, train, val, queries, docs, texts, config, group=group)
        best = max(summary["history"], key=lambda r: r["val_ndcg10"])
        row = {"variant": label, "config": {**BASE, **change}, "val_ndcg10": best["val_ndcg10"],
               "val_teacher_ndcg10": best["val_teacher_ndcg10"], "untrained_val_ndcg10":
               summary["history"][0]["val_ndcg10"], "best_epoch": summary["best_epoch"],
               "teacher_val_ndcg10": summary["teacher_val_ndcg10"], "head_p50_ms": head_latency_ms(model),
               "bytes_per_doc": model.config.doc_slots * model.config.proj_dim * 2,
               "train_seconds": round(time.perf_counter() - started, 1)}
        logger.info("%s", row)
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results_path.open()]
    lines = [f"Validation: {len(val)} held-out training queries; each row trained {args.epochs} epochs on "
             f"{len(train)} training queries (stage 1, cached features, listwise KL, lr {args.lr}); teacher on "
             f"the same validation queries: nDCG@10 {rows[0]['teacher_val_ndcg10']:.4f}.", "",
             "| variant | val nDCG@10 (untrained) | val nDCG@10 | teacher agreement | head p50 ms (100 docs) "
             "| bytes/doc |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['untrained_val_ndcg10']:.4f} | {row['val_ndcg10']:.4f} | "
                     f"{row['val_teacher_ndcg10']:.4f} | {row['head_p50_ms']:.2f} | {row['bytes_per_doc']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
