"""Index-time throughput and search-time memory.

1. Prefix-cache build (the document branch in length-sorted batches + shard writing) against the bare encoder
   forward at the same batch size and max length (corpus order, padded per batch), on SciFact and DL19 docs.
2. Cache build engines: one process with 2 torch threads, and Ray with 1 and 2 single-thread workers,
   on the same DL19 passages (start-up included: actors load the model, so use enough documents for it to be
   paid once, as in a real build).
3. Search-process RSS, open time and gather latency with a 10k-document cache vs 1M-document caches
   (synthesised rows) in each codec: the cache is memory-mapped, so RSS should not grow with the corpus.

    python eval/bench_index.py [--docs 1000] [--big-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dipair_rerank.cache.codecs import CODECS
from dipair_rerank.data import read_corpus, shared_data_dir
from dipair_rerank.evaluate.report import format_table
from dipair_rerank.indexer import IndexOptions


def bare_forward(model, texts: list[str], batch_size: int, max_length: int) -> float:
    """docs/s of tokenizer + encoder forward in corpus order: what any encoder-based indexer pays."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = model.tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt")
            model.doc_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return len(texts) / (time.perf_counter() - start)


def cache_build(model, texts: list[str], batch_size: int, folder: Path) -> float:
    from dipair_rerank.cache import CacheWriter
    from dipair_rerank.encoding import encode_documents

    start = time.perf_counter()
    encoded = encode_documents(model, texts, batch_size=batch_size)
    writer = CacheWriter(folder, model_fingerprint=model.fingerprint(), model_config={},
                         slots=model.doc_block_slots, dim=model.config.proj_dim, shard_rows=len(texts))
    writer.write_shard(0, encoded.vectors, encoded.lengths)
    writer.finish([f"d{i}" for i in range(len(texts))])
    return len(texts) / (time.perf_counter() - start)


def engine_rates(model, texts: list[str], scratch: Path, shard_rows: int, batch_size: int) -> list[dict]:
    """Cache build docs/s: one process with 2 threads, and Ray with 1 and 2 single-thread workers (the Ray
    cluster is started before timing; its start-up is not the engine's per-document overhead)."""
    import ray

    from dipair_rerank.data.sources import CorpusSource, shard_spans
    from dipair_rerank.indexer import build_cache

    corpus = scratch / "engine-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": t}) + "\n" for i, t in enumerate(texts)))
    source = CorpusSource(corpus)
    source.prepare(corpus, progress=False)  # already normalised: only its line offsets are read
    spans = shard_spans(source.count(), shard_rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for label, engine, workers, threads in (("local, 1 process x 2 threads", "local", 1, 2),
                                                 ("ray, 1 worker x 1 thread", "ray", 1, 1),
                                                 ("ray, 2 workers x 1 thread", "ray", 2, 1)):
            staging = scratch / f"engine-{engine}-{workers}"
            options = IndexOptions(shard_rows=shard_rows, batch_size=batch_size, threads=threads, workers=workers,
                                   engine=engine, progress=False)
            torch.set_num_threads(threads)
            start = time.perf_counter()
            build_cache(model, source, staging, spans, options)
            rows.append({"engine": label, "docs": len(texts), "docs/s": len(texts) / (time.perf_counter() - start)})
    finally:
        ray.shutdown()
    one = rows[1]["docs/s"]
    for row in rows:
        row["vs 1 ray worker"] = row["docs/s"] / one
    return rows


def synth_cache(folder: Path, rows: int, slots: int, dim: int, codec: str = "fp16", codec_params: dict | None = None,
                shard_rows: int = 65536) -> None:
    from dipair_rerank.cache import CacheWriter

    writer = CacheWriter(folder, model_fingerprint="synthetic", model_config={}, slots=slots, dim=dim,
                         shard_rows=shard_rows, codec_name=codec, codec_params=codec_params or {})
    block = np.random.default_rng(0).standard_normal((shard_rows, slots, dim)).astype(np.float16)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        count = min(shard_rows, rows - start)
        writer.write_shard(shard, block[:count], np.full(count, slots - 1, np.uint16))
    writer.finish([f"doc{i}" for i in range(rows)])


PROBE = r"""
import json, sys, time, numpy as np
def rss(kind='VmRSS'):
    return int([l for l in open('/proc/self/status') if l.startswith(kind)][0].split()[1]) / 1024
from dipair_rerank.cache import PrefixCache
before, anon = rss(), rss('RssAnon'); start = time.perf_counter()
cache = PrefixCache(sys.argv[1]); opened = time.perf_counter() - start
rng = np.random.default_rng(1)
times = []
for _ in range(int(sys.argv[2])):
    ids = [f"doc{i}" for i in rng.integers(0, len(cache), 100)]
    t = time.perf_counter(); cache.gather(cache.rows(ids)); times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"rss_growth_mb": rss() - before, "anon_growth_mb": rss('RssAnon') - anon,
                  "mapped_cache_mb": rss('RssFile'), "open_s": opened, "gather_p50_ms": float(np.median(times))}))
"""


def probe(folder: Path, queries: int) -> dict[str, float]:
    """Open the cache in a fresh process, gather 100 random rows per query; memory from /proc/self/status."""
    command = [sys.executable, "-c", PROBE, str(folder), str(queries)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000, help="documents per corpus for the throughput test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small-rows", type=int, default=10_000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="gathers of 100 random rows in the RSS probe")
    parser.add_argument("--engine-docs", type=int, default=4000, help="DL19 docs for the engine comparison (0: skip)")
    parser.add_argument("--engine-shards", type=int, default=32, help="cache shards they are split into")
    parser.add_argument("--json", default="eval/results/bench_index.json", help="where to save the numbers")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dipair_rerank.model import load_model

    model = load_model()
    data = shared_data_dir()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for name in ("scifact", "msmarco-dl19"):
            texts = [doc.text for _, doc in zip(range(args.docs), read_corpus(data / name / "corpus.jsonl"))]
            bare_forward(model, texts[:64], args.batch_size, model.config.doc_max_length)  # warm up
            bare = bare_forward(model, texts, args.batch_size, model.config.doc_max_length)
            built = cache_build(model, texts, args.batch_size, Path(scratch) / name)
            rows.append({"corpus": name, "docs": len(texts), "bare encoder docs/s": bare,
                         "cache build docs/s": built, "build / bare": built / bare})
        engines = []
        if args.engine_docs:
            texts = [doc.text for _, doc in zip(range(args.engine_docs), read_corpus(data / "msmarco-dl19" / "corpus.jsonl"))]
            engines = engine_rates(model, texts, Path(scratch), max(1, args.engine_docs // args.engine_shards),
                                   args.batch_size)
            torch.set_num_threads(args.threads)
        memory = []
        for count, codec in ((args.small_rows, "fp16"), *((args.big_rows, codec) for codec in CODECS)):
            folder = Path(scratch) / f"synthetic-{count}-{codec}"
            params = IndexOptions(codec=codec).codec_params(model)  # as `index --codec CODEC` builds it
            synth_cache(folder, count, model.doc_block_slots, model.config.proj_dim, codec, params)
            size_gb = sum(p.stat().st_size for p in folder.iterdir()) / 1e9
            memory.append({"cached docs": count, "codec": codec, "cache GB": size_gb, **probe(folder, args.queries)})
            if count == args.big_rows:  # 4.4 GB in fp16: free the disk before the next codec
                shutil.rmtree(folder)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads,
                                           "throughput": rows, "engines": engines, "memory": memory}, indent=1))
    print(f"# bench_index  {time.strftime('%Y-%m-%d %H:%M')}  torch threads {args.threads}  batch {args.batch_size}"
          f"  max length {model.config.doc_max_length}")
    print(format_table(rows, ["corpus", "docs", "bare encoder docs/s", "cache build docs/s", "build / bare"]))
    if engines:
        print(format_table(engines, ["engine", "docs", "docs/s", "vs 1 ray worker"]))
        print(f"ray 2 workers / local 2 threads: {engines[2]['docs/s'] / engines[0]['docs/s']:.2f}")
    print(format_table(memory, ["cached docs", "codec", "cache GB", "rss_growth_mb", "anon_growth_mb",
                                "mapped_cache_mb", "open_s", "gather_p50_ms"]))
    for key, what in (("rss_growth_mb", "RSS"), ("anon_growth_mb", "private (anonymous) RSS")):
        growth = memory[1][key] - memory[0][key]
        print(f"{what} growth, {args.small_rows} -> {args.big_rows} cached docs (fp16), after {args.queries} "
              f"gathers: {growth:.1f} MB")
    print("(mapped cache pages are page cache the kernel can drop; they grow with the distinct rows read, "
          "not with the corpus)")


if __name__ == "__main__":
    main()
