"""Cache codecs side by side (issue 5): bytes per document, nDCG@10 on SciFact test and DL19 against fp16, and
gather + decode latency for 100 documents. Each lossy cache is transcoded from the fp16 cache of the index that
eval/effectiveness.py builds with the default model (rebuilt first when the default model changed; no other
re-encoding), so only the storage differs.

    python eval/bench_codecs.py [--codecs fp16 int8 pq pq8-p6-last ...] [--max-loss 1 --max-bytes 256]

``--max-loss PCT`` / ``--max-bytes B`` make it a check (eval/recipe/train_default.sh runs it after shipping a
model): exit status 1 when ``pq``, what ``index --codec pq`` builds, loses more than PCT% nDCG@10 against fp16 on
either set, or stores more than B bytes of blocks per document.
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
from effectiveness import COLLECTIONS, _default_index, bm25_top100

# "pq": what `index --codec pq` builds (IndexOptions' defaults). pqM-pB: M bytes per prefix vector (every row
# the head reads), the pooled vector the score reads directly (all its rows, as one vector) at B bits per value;
# pqM-qK: that vector product-quantised to K bytes instead (K sub-vectors, 256 centroids each); "-last": only the
# block's last row coded apart, the layout before the pooled rows were told apart (what pq8-p6 meant until
# 2026-12-07); "-all": every row product-quantised alike; "-sN": another k-means seed, to show the spread.
CODEC_SPECS = {"fp16": ("fp16", {}), "int8": ("int8", {}), "pq": ("pq", None),
               "pq8-p6-last": ("pq", {"m": 8, "pooled_bits": 6, "pooled_rows": 1}),
               "pq4-p6-last": ("pq", {"m": 4, "pooled_bits": 6, "pooled_rows": 1}),
               "pq8-p4": ("pq", {"m": 8, "pooled_bits": 4}),
               "pq4-p4": ("pq", {"m": 4, "pooled_bits": 4}),
               "pq2-p4": ("pq", {"m": 2, "pooled_bits": 4}),
               "pq4-q128": ("pq", {"m": 4, "pooled_m": 128}),
               "pq8-q64": ("pq", {"m": 8, "pooled_m": 64}),
               "pq8-q96": ("pq", {"m": 8, "pooled_m": 96}),
               "pq8-q128": ("pq", {"m": 8, "pooled_m": 128}),
               "pq16-q64": ("pq", {"m": 16, "pooled_m": 64}),
               "pq16-q96": ("pq", {"m": 16, "pooled_m": 96}),
               "pq8-all": ("pq", {"m": 8}), "pq16-all": ("pq", {"m": 16}), "pq32-all": ("pq", {"m": 32})}
CODEC_SPECS.update({f"{label}-s{seed}": (codec, {**params, "seed": seed}) for label, (codec, params) in list(
    CODEC_SPECS.items()) if codec == "pq" and params for seed in (1, 2)})


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
    parser.add_argument("--codecs", nargs="+", default=["fp16", "int8", "pq"], choices=list(CODEC_SPECS),
                        help="codecs to compare (fp16, the reference, is always measured first)")
    parser.add_argument("--max-loss", type=float, default=None, metavar="PCT",
                        help="exit 1 when pq (what `index --codec pq` builds; measured whether listed or not) loses "
                             "more than PCT%% nDCG@10 against fp16 on either set")
    parser.add_argument("--max-bytes", type=int, default=None, metavar="B",
                        help="exit 1 when pq stores more than B bytes of blocks per document (length included)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="eval/results/bench_codecs.json", help="where to save the numbers")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codecs = ["fp16", *dict.fromkeys(c for c in args.codecs if c != "fp16")]
    if (args.max_loss is not None or args.max_bytes is not None) and "pq" not in codecs:
        codecs.append("pq")
    from dipair_rerank.cache import PrefixCache
    from dipair_rerank.cache.transcode import transcode
    from dipair_rerank.index_layout import IndexLayout
    from dipair_rerank.indexer import IndexOptions
    from dipair_rerank.rerank import DiPairReranker

    data = shared_data_dir()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for name, spec in COLLECTIONS.items():
            _default_index(Path(spec["index"]), data / spec["dir"] / "corpus.jsonl", args.threads)  # if stale
            layout = IndexLayout(spec["index"])
            base = DiPairReranker.from_index(layout.root, threads=args.threads, query_backend="torch")
            topics, qrels, run = bm25_top100(spec, data)
            qids = list(run)
            encoded = base.encode_queries([topics[q] for q in qids])
            reference = None
            for label in codecs:
                codec, params = CODEC_SPECS[label]
                if params is None:  # as `index --codec pq` builds it for this model
                    params = IndexOptions(codec=codec).codec_params(base.model)
                cache = PrefixCache(layout.cache) if codec == "fp16" else transcode(
                    layout.cache, Path(scratch) / f"{spec['dir']}-{label}", codec, params)
                reranker = DiPairReranker(base.model, cache, query_backend="torch")
                ranked = reranker.rerank_encoded(encoded, [run[q] for q in qids])
                result = {q: [(h.docid, h.score) for h in hits] for q, hits in zip(qids, ranked)}
                ndcg = next(v.value for v in evaluate(qrels, result, "nDCG@10"))
                reference = ndcg if reference is None else reference
                change = (ndcg / reference - 1) * 100
                rows.append({"collection": name, "codec": label, "params": cache.meta["codec_params"],
                             "bytes/doc": cache.bytes_per_doc, "nDCG@10": ndcg, "vs fp16": f"{change:+.2f}%",
                             "change_pct": change,
                             "gather+decode 100 docs ms": gather_ms(cache),
                             "lexical_bytes_per_doc": cache.meta.get("lexical_bytes_per_doc", 0)})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"# bench_codecs  {time.strftime('%Y-%m-%d %H:%M')}  (BM25 top-100 re-ranked by the default model)")
    print(format_table(rows, ["collection", "codec", "bytes/doc", "nDCG@10", "vs fp16", "gather+decode 100 docs ms"]))
    print("bytes/doc: the blocks (+ 2 B prefix length); the lexical terms are stored as they are by every codec: "
          + ", ".join(f"{r['collection']} {r['lexical_bytes_per_doc']} B/doc" for r in rows if r["codec"] == "fp16"))
    failures = []
    for r in rows:
        if r["codec"] != "pq":
            continue
        if args.max_loss is not None and r["change_pct"] < -args.max_loss:
            failures.append(f"pq ({r['params']}) loses {r['vs fp16']} nDCG@10 against fp16 on {r['collection']} "
                            f"(allowed: {args.max_loss:g}%)")
        if args.max_bytes is not None and r["bytes/doc"] > args.max_bytes:
            failures.append(f"pq ({r['params']}) stores {r['bytes/doc']} B/doc on {r['collection']} "
                            f"(allowed: {args.max_bytes})")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        raise SystemExit(1)
    if args.max_loss is not None or args.max_bytes is not None:
        print("ok: pq within the limits on every set")


if __name__ == "__main__":
    main()
