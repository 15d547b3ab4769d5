"""Cache codecs side by side (issue 5): bytes per document, nDCG@10 on SciFact test and DL19 against fp16, and
gather + decode latency for 100 documents. Each lossy cache is transcoded from the fp16 cache of the index that
eval/effectiveness.py builds with the default model (no re-encoding), so only the storage differs.

    python eval/bench_codecs.py [--codecs fp16 int8 pq8 pq16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dipair_rerank.data import shared_data_dir
from dipair_rerank.evaluate import evaluate
from dipair_rerank.evaluate.report import format_table
from effectiveness import COLLECTIONS, bm25_top100

# pqM-pB: M bytes per prefix vector, the pooled vector at B bits per value ("pq8-p6" is what --codec pq builds);
# "-all": the pooled vector product-quantised like the rest; "-sN": another k-means seed, to show the spread.
CODEC_SPECS = {"fp16": ("fp16", {}), "int8": ("int8", {}),
               "pq8-p6": ("pq", {"m": 8, "pooled_bits": 6}),
               "pq8-p6-s1": ("pq", {"m": 8, "pooled_bits": 6, "seed": 1}),
               "pq8-p6-s2": ("pq", {"m": 8, "pooled_bits": 6, "seed": 2}),
               "pq4-p6": ("pq", {"m": 4, "pooled_bits": 6}),
               "pq4-p8": ("pq", {"m": 4, "pooled_bits": 8}),
               "pq8-p8": ("pq", {"m": 8, "pooled_bits": 8}),
               "pq8-all": ("pq", {"m": 8}), "pq16-all": ("pq", {"m": 16}), "pq32-all": ("pq", {"m": 32})}


def gather_ms(cache, repeats: int = 300) -> float:
    rng = np.random.default_rng(0)
    lookup = cache.docids
    names = [bytes(lookup.sorted[i]).decode() for i in rng.integers(0, len(cache), 2000)]
    times = []
    for r in range(repeats):
        ids = [names[(r * 7 + j) % len(names)] for j in range(100)]
        start = time.perf_counter()
        cache.gather(cache.rows(ids))
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", nargs="+", default=list(CODEC_SPECS), choices=list(CODEC_SPECS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="eval/results/bench_codecs.json", help="where to save the numbers")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dipair_rerank.cache import PrefixCache
    from dipair_rerank.cache.transcode import transcode
    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.rerank import DiPairReranker

    data = shared_data_dir()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for name, spec in COLLECTIONS.items():
            layout = IndexLayout(spec["index"])
            base = DiPairReranker.from_index(layout.root, threads=args.threads, query_backend="torch")
            topics, qrels, run = bm25_top100(spec, data)
            qids = list(run)
            encoded = base.encode_queries([topics[q] for q in qids])
            reference = None
            for label in args.codecs:
                codec, params = CODEC_SPECS[label]
                cache = PrefixCache(layout.cache) if codec == "fp16" else transcode(
                    layout.cache, Path(scratch) / f"{spec['dir']}-{label}", codec, params)
                reranker = DiPairReranker(base.model, cache, query_backend="torch")
                ranked = reranker.rerank_encoded(encoded, [run[q] for q in qids])
                result = {q: [(h.docid, h.score) for h in hits] for q, hits in zip(qids, ranked)}
                ndcg = next(v.value for v in evaluate(qrels, result, "nDCG@10"))
                reference = ndcg if reference is None else reference
                rows.append({"collection": name, "codec": label, "bytes/doc": cache.bytes_per_doc,
                             "nDCG@10": ndcg, "vs fp16": f"{(ndcg / reference - 1) * 100:+.2f}%",
                             "gather+decode 100 docs ms": gather_ms(cache)})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"# bench_codecs  {time.strftime('%Y-%m-%d %H:%M')}  (BM25 top-100 re-ranked by the default model)")
    print(format_table(rows, ["collection", "codec", "bytes/doc", "nDCG@10", "vs fp16", "gather+decode 100 docs ms"]))


if __name__ == "__main__":
    main()
