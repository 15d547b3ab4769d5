"""Which cached vectors can be coded coarsely (issue 5): quantise one kind of slot at a time and measure nDCG@10
against fp16 on SciFact test and DL19 (BM25 top-100 re-ranked by the default model from the fp16 caches that
eval/effectiveness.py builds). The finding behind ``--codec pq``: the prefix vectors take 8-byte PQ codes, the
pooled vector (read by the cosine term as well as the head) needs finer codes.

    python eval/codec_sensitivity.py
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

from dipair_rerank.cache.codecs import make_codec, scalar_quantizer
from dipair_rerank.data import shared_data_dir
from dipair_rerank.evaluate import evaluate
from dipair_rerank.evaluate.report import format_table
from effectiveness import COLLECTIONS, bm25_top100

# (label, slots quantised, codec, params): "prefix" = the n prefix vectors, "pooled" = the pooled vector
VARIANTS = [("prefix pq2", "prefix", "pq", {"m": 2}), ("prefix pq4", "prefix", "pq", {"m": 4}),
            ("prefix pq8", "prefix", "pq", {"m": 8}), ("pooled pq16", "pooled", "pq", {"m": 16}),
            ("pooled pq32", "pooled", "pq", {"m": 32}), ("pooled pq64", "pooled", "pq", {"m": 64}),
            ("pooled sq4", "pooled", "sq", {"bits": 4}), ("pooled sq6", "pooled", "sq", {"bits": 6}),
            ("pooled sq8", "pooled", "sq", {"bits": 8})]


class Candidates:
    """One collection's BM25 top-100 with every candidate's fp16 block and the encoded queries in memory."""

    def __init__(self, spec: dict, data: Path, threads: int):
        from dipair_rerank.rerank import DiPairReranker

        reranker = DiPairReranker.from_index(spec["index"], threads=threads, query_backend="torch")
        self.model = reranker.model
        topics, self.qrels, run = bm25_top100(spec, data)
        self.qids = list(run)
        self.queries = reranker.encode_queries([topics[q] for q in self.qids])
        self.docids = [[d for d, _ in run[q]] for q in self.qids]
        unique = list(dict.fromkeys(d for docids in self.docids for d in docids))
        blocks, lengths = reranker.cache.gather(reranker.cache.rows(unique))
        self.blocks, self.lengths = np.asarray(blocks, dtype=np.float32).copy(), lengths.copy()
        row = {d: i for i, d in enumerate(unique)}
        self.rows = [np.array([row[d] for d in docids]) for docids in self.docids]

    def ndcg(self, blocks: np.ndarray) -> float:
        config = self.model.config
        slots = torch.arange(self.model.doc_block_slots)
        is_prefix = slots < config.doc_prefix
        run = {}
        with torch.inference_mode():
            for i, qid in enumerate(self.qids):
                lengths = torch.from_numpy(self.lengths[self.rows[i]].astype(np.int64))
                mask = (slots < lengths.unsqueeze(1)) | ~is_prefix
                scores = self.model.score_prefixes(self.queries.vectors[i : i + 1], self.queries.mask[i : i + 1],
                                                   torch.from_numpy(blocks[self.rows[i]]), mask)
                run[qid] = list(zip(self.docids[i], scores.tolist()))
        return next(v.value for v in evaluate(self.qrels, run, "nDCG@10"))


def quantise(blocks: np.ndarray, prefix_slots: int, which: str, codec: str, params: dict) -> tuple[np.ndarray, float]:
    """``blocks`` with one kind of slot coded and decoded; also that part's relative squared error."""
    part = blocks[:, :prefix_slots] if which == "prefix" else blocks[:, prefix_slots:]
    if codec == "sq":  # the scalar quantiser `--codec pq` gives the pooled vector
        flat = np.ascontiguousarray(part.reshape(-1, part.shape[2]))
        coder = scalar_quantizer(flat.shape[1], params["bits"])
        coder.train(flat)
        decoded = coder.decode(coder.compute_codes(flat)).reshape(part.shape)
    else:
        coder = make_codec(codec, part.shape[1], blocks.shape[2], params=params)
        coder.train(part)
        decoded = coder.decode(coder.encode(part))
    out = blocks.copy()
    if which == "prefix":
        out[:, :prefix_slots] = decoded
    else:
        out[:, prefix_slots:] = decoded
    return out, float(((decoded - part) ** 2).sum() / (part**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="eval/results/codec_sensitivity.json", help="where to save the numbers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    rows = []
    for name, spec in COLLECTIONS.items():
        collection = Candidates(spec, data, args.threads)
        reference = collection.ndcg(collection.blocks)
        for label, which, codec, params in VARIANTS:
            blocks, error = quantise(collection.blocks, collection.model.config.doc_prefix, which, codec, params)
            ndcg = collection.ndcg(blocks)
            rows.append({"collection": name, "quantised": label, "relative squared error": error,
                         "nDCG@10": ndcg, "vs fp16": f"{(ndcg / reference - 1) * 100:+.2f}%"})
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"# codec_sensitivity  {time.strftime('%Y-%m-%d %H:%M')}  (the rest of each block kept in fp16)")
    print(format_table(rows, ["collection", "quantised", "relative squared error", "nDCG@10", "vs fp16"]))


if __name__ == "__main__":
    main()
