"""One machine, 10M documents: a 10,000,000-document index beside a 10,000-document one, measured side by side.

Both indexes are built the same way: the shipped default model's real rows for the DL19 passage pool (fp16 blocks,
prefix lengths and lexical terms, read from ``--source``, an index built with that model, or encoded from
``--corpus`` once) tiled out to N rows with unique docids ("0" .. "N-1"), written shard by shard through the
package's own ``CacheWriter`` in ``--codec`` (sha256 per shard file, docid lookup, ``cache.json``) under a
``manifest.json``, so ``DiPairReranker.from_index`` opens them as any index. No Lucene index: candidates are drawn
uniformly over the whole index (100 per query, seeded), with made-up first-stage scores, as a candidate run gives
them. A finished build is reused; an interrupted one resumes from its written shards.

Then one worker process per index, all alive, driven in alternating chunks so that conditions match:
  1. open: the cache alone (after its files' pages were dropped, then warm) and the re-ranker's construction over
     the index (model loaded before, timed apart); memory (/proc/self/status) before and after.
  2. cold: before each query the cache files' pages are dropped (``madvise(MADV_DONTNEED)`` over the process's
     maps of them, then ``posix_fadvise(POSIX_FADV_DONTNEED)`` over every cache file), so its rows, docid lookup
     and lexical terms are read from disk; bytes read from /proc/self/io.
  3. warm: one untimed pass over the first ``--warm-queries`` queries' candidates, then the same queries timed,
     quiet and (``--contention``) with a CPU-burning process pinned to one core (eval/bench_latency.py's).
  4. memory: the rest of ``--queries`` distinct queries (new candidates: each first touch in this process, from
     the page cache or the disk as the machine left them), then memory again.
Latency = the re-rank stage as eval/bench_latency.py counts it (query encoding + gather + head, the re-ranker's
own stage timer), one query per call.

With ``--more-shard-rows`` the big index is also built and measured in shards of those sizes (a query's
candidates then touch fewer shards); the cache's parts of a warm query (docid lookup, gather with decoding, lexical
terms) are also timed each alone.

    python eval/bench_scale.py --contention            # builds eval/work/scale/{10k,10M}-int8 on first use
    python eval/bench_scale.py --contention --more-shard-rows 524288   # and 10M-int8-s524288 (41 GB in all)
    python eval/bench_scale.py --build-only            # only the indexes (and their build times)
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

EVAL = Path(__file__).resolve().parent
ROOT = EVAL.parent


# ----- memory and page cache ----------------------------------------------------------------------------------
def memory_mb() -> dict[str, float]:
    """This process's resident memory from /proc/self/status (as eval/bench_index.py reads it): VmRSS in all,
    RssAnon (private, anonymous: heap, tensors) and RssFile (mapped file pages: the model's and the cache's,
    page cache the kernel can drop)."""
    wanted = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0]) / 1024
    return out


def read_bytes() -> int:
    """Bytes this process caused to be read from storage (/proc/self/io), page faults on maps included."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("read_bytes"))


def cache_files(cache_dir: Path) -> list[Path]:
    """Every file of a cache folder: shards, their JSONs, the docid lookup, cache.json, the codec's state."""
    return sorted(path for path in cache_dir.iterdir() if path.is_file())


def drop_file_pages(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (pages some process still maps are kept by the kernel)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cache_maps(cache) -> list[mmap.mmap]:
    """The memory maps under an open PrefixCache (the arrays ``PrefixCache.map_in`` reads)."""
    from dipair_rerank.cache.reader import _mapping

    arrays = [*cache.vectors, *cache.lengths, *(a for store in cache._lexical for a in store), cache.docids.sorted,
              cache.docids.rows]
    return [m for m in map(_mapping, arrays) if m is not None]


def drop_cache(cache, paths: list[Path]) -> None:
    """Make the cache cold for this process: unmap its pages here, then drop them from the page cache."""
    for handle in cache_maps(cache):
        handle.madvise(mmap.MADV_DONTNEED)
    drop_file_pages(paths)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ----- building ------------------------------------------------------------------------------------------------
class SourceRows:
    """The real rows that are tiled: fp16 blocks [S, slots, dim], lengths [S], lexical terms per row."""

    def __init__(self, vectors, lengths, lexical, fingerprint: str, config: dict, origin: str):
        self.vectors, self.lengths, self.lexical = vectors, lengths, lexical
        self.fingerprint, self.config, self.origin = fingerprint, config, origin

    def __len__(self) -> int:
        return len(self.lengths)


def source_rows(source: Path, corpus: Path, work: Path) -> SourceRows:
    """Rows of an index built with the shipped default model, or the corpus encoded with it once (kept in
    ``work/source``)."""
    from dipair_rerank.cache import PrefixCache

    folder = source / "dipair"
    if not (folder / "cache.json").is_file():
        folder = work / "source" / "dipair"
        if not (folder / "cache.json").is_file():
            encode_source(corpus, folder)
    cache = PrefixCache(folder)
    from dipair_rerank.model import load_model

    expected = load_model().fingerprint()
    if cache.model_fingerprint != expected:
        raise SystemExit(f"{folder} was built by model {cache.model_fingerprint[:12]}, not the shipped default "
                         f"{expected[:12]}: rebuild it (python eval/effectiveness.py) or pass --source none")
    vectors = np.concatenate([cache.codec.decode(np.asarray(v)) for v in cache.vectors]).astype(np.float16)
    lengths = np.concatenate([np.asarray(v) for v in cache.lengths])
    lexical = None
    if cache.has_lexical:
        lexical = [row for shard in range(len(cache.vectors)) for row in cache.lexical_rows(shard)]
    return SourceRows(vectors, lengths, lexical, cache.model_fingerprint, cache.meta.get("model_config", {}),
                      str(folder))


def encode_source(corpus: Path, folder: Path) -> None:
    """Encode ``corpus`` with the shipped default model into an fp16 cache at ``folder``."""
    from dipair_rerank.cache import CacheWriter
    from dipair_rerank.data import read_corpus
    from dipair_rerank.encoding import encode_documents
    from dipair_rerank.model import load_model

    model = load_model().eval()
    texts = [doc.text for _, doc in read_corpus(corpus)]
    print(f"encoding {len(texts)} passages of {corpus} with the default model", file=sys.stderr)
    encoded = encode_documents(model, texts)
    writer = CacheWriter(folder, model_fingerprint=model.fingerprint(), model_config=model.config.to_dict(),
                         slots=model.doc_block_slots, dim=model.config.proj_dim, shard_rows=len(texts))
    writer.write_shard(0, encoded.vectors, encoded.lengths, encoded.lexical)
    writer.finish([f"s{i}" for i in range(len(texts))])


def build_index(index_dir: Path, rows: int, codec: str, source: SourceRows, shard_rows: int) -> dict:
    """Tile ``source`` to ``rows`` rows and write them as an index; returns the build record (kept beside it)."""
    from dipair_rerank.cache import CacheWriter, PrefixCache
    from dipair_rerank.cache.writer import write_json_atomic
    from dipair_rerank.index_layout import MANIFEST

    record_path = index_dir / "build.json"
    params = {"m": 8, "pooled_bits": 6 if source.config.get("pooled_slot") else 0} if codec == "pq" else {}
    writer = CacheWriter(index_dir / "dipair", model_fingerprint=source.fingerprint, model_config=source.config,
                         slots=source.vectors.shape[1], dim=source.vectors.shape[2], shard_rows=shard_rows,
                         codec_name=codec, codec_params=params)
    import faiss

    faiss.omp_set_num_threads(1)  # one core for the build: the codec's encoding is the only parallel part
    if not writer.codec_trained:  # on the real rows (the first shard would be them, repeated)
        writer.train_codec(source.vectors)
    spans = [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]
    resumed = sum(writer.shard_done(i, stop - start) for i, (start, stop) in enumerate(spans))
    started = time.perf_counter()
    for shard, (start, stop) in enumerate(spans):
        if writer.shard_done(shard, stop - start):
            continue
        take = np.arange(start, stop) % len(source)
        lexical = None if source.lexical is None else [source.lexical[i] for i in take]
        writer.write_shard(shard, source.vectors[take], source.lengths[take], lexical)
        if shard % 16 == 15 or stop == rows:
            elapsed = time.perf_counter() - started
            print(f"  {index_dir.name}: shard {shard + 1}/{len(spans)}, {elapsed:.0f} s", file=sys.stderr)
    shards_s = time.perf_counter() - started
    middle = time.perf_counter()
    writer.finish([str(row) for row in range(rows)])
    finish_s = time.perf_counter() - middle
    write_json_atomic(index_dir / MANIFEST, {
        "corpus": f"tiled: {source.origin}, {len(source)} real rows repeated to {rows}",
        "num_docs": rows, "components": ["dipair"], "model": "default", "model_fingerprint": source.fingerprint,
        "build_seconds": round(shards_s + finish_s, 1)})
    meta = PrefixCache(index_dir / "dipair").meta
    record = {"rows": rows, "codec": codec, "model_fingerprint": source.fingerprint, "source_rows": len(source),
              "shard_rows": shard_rows, "shards": len(spans), "shards_resumed": int(resumed), "shards_s": shards_s,
              "finish_s": finish_s, "build_s": shards_s + finish_s,
              "bytes": folder_bytes(index_dir / "dipair"), "bytes_per_doc": meta["bytes_per_doc"],
              "lexical_bytes_per_doc": meta["lexical_bytes_per_doc"], "date": time.strftime("%Y-%m-%d %H:%M")}
    record["bytes_per_doc_all"] = record["bytes"] / rows
    write_json_atomic(record_path, record)
    return record


# ----- the worker: one index, driven over a pipe -----------------------------------------------------------------
def query_texts(data: Path) -> list[str]:
    """DL19's queries, then MS MARCO dev's (the subset under ../shared/data), cycled for more."""
    from dipair_rerank.data import read_topics

    texts = []
    for name in ("msmarco-dl19", "msmarco-dev-subset"):
        path = data / name / "queries.tsv"
        if path.is_file():
            texts += list(read_topics(path).values())
    return texts


def candidates(query: int, num_docs: int, depth: int, seed: int) -> list[tuple[str, float]]:
    """``depth`` distinct docids drawn uniformly over the index, with descending first-stage scores."""
    rng = np.random.default_rng((seed, query))
    rows = rng.choice(num_docs, depth, replace=False)
    scores = np.sort(rng.uniform(5.0, 25.0, depth))[::-1]
    return [(str(row), float(score)) for row, score in zip(rows.tolist(), scores.tolist())]


STAGES = ("query_encoding", "gather", "head")
PARTS = ("docid lookup", "gather + decode", "lexical terms")


def worker(args: argparse.Namespace) -> None:
    reply_to = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe

    def reply(payload: dict) -> None:
        reply_to.write(json.dumps(payload) + "\n")
        reply_to.flush()

    import torch

    torch.set_num_threads(args.threads)
    from dipair_rerank.cache import PrefixCache
    from dipair_rerank.data import shared_data_dir
    from dipair_rerank.model import load_model
    from dipair_rerank.rerank import DiPairReranker

    index_dir = Path(args.worker)
    paths = cache_files(index_dir / "dipair")
    texts = query_texts(shared_data_dir())
    started = time.perf_counter()
    model = load_model().eval()
    reply({"model_load_s": time.perf_counter() - started, "memory": memory_mb(), "queries": len(texts)})
    reranker = None
    for line in sys.stdin:
        command = json.loads(line)
        name = command["do"]
        if name == "open":
            drop_file_pages(paths)
            start = time.perf_counter()
            cache = PrefixCache(index_dir / "dipair")
            cold_open = time.perf_counter() - start
            num_docs = len(cache)
            del cache
            warm = []
            for _ in range(3):
                start = time.perf_counter()
                cache = PrefixCache(index_dir / "dipair")
                warm.append(time.perf_counter() - start)
                del cache
            gc.collect()
            before = memory_mb()
            start = time.perf_counter()
            reranker = DiPairReranker.from_index(index_dir, model=model, threads=args.threads,
                                                 query_backend=args.query_backend)
            opened = time.perf_counter() - start
            reply({"cache_open_cold_s": cold_open, "cache_open_warm_s": float(np.median(warm)),
                   "reranker_open_s": opened, "memory_before_open": before, "memory_after_open": memory_mb(),
                   "num_docs": num_docs, "cache_files": len(paths)})
        elif name == "warm_up":
            reranker.warm_up(args.depth)
            reply({"memory": memory_mb()})
        elif name == "run":
            num_docs = len(reranker.cache)
            stages = {stage: [] for stage in STAGES}
            read = []
            for query in range(command["start"], command["stop"]):
                hits = candidates(query, num_docs, args.depth, args.seed)
                if command.get("cold"):
                    drop_cache(reranker.cache, paths)
                reranker.timer.batches.clear()
                before = read_bytes()
                reranker.rerank(texts[query % len(texts)], hits)
                read.append(read_bytes() - before)
                for stage in STAGES:
                    stages[stage].append(float(reranker.timer.per_query_ms(stage).sum()))
            if command.get("cold"):  # hold none of the files' pages: another worker's drop then drops them all
                drop_cache(reranker.cache, paths)
            reply({"stages": stages, "read_bytes": read})
        elif name == "parts":  # the cache's own share of a query, each part alone on this thread
            num_docs = len(reranker.cache)
            parts = {part: [] for part in PARTS}
            for query in range(command["start"], command["stop"]):
                docids = [docid for docid, _ in candidates(query, num_docs, args.depth, args.seed)]
                lexical = reranker.encode_queries([texts[query % len(texts)]]).lexical
                start = time.perf_counter()
                rows = reranker.cache.rows(docids)
                middle = time.perf_counter()
                reranker.cache.gather(rows)
                end = time.perf_counter()
                parts["docid lookup"].append((middle - start) * 1000)
                parts["gather + decode"].append((end - middle) * 1000)
                if lexical is not None:
                    start = time.perf_counter()
                    reranker.cache.lexical_dots(rows, np.zeros(len(rows), np.int64), lexical)
                    parts["lexical terms"].append((time.perf_counter() - start) * 1000)
            reply({"parts": parts})
        elif name == "memory":
            reply({"memory": memory_mb()})
        elif name == "quit":
            reply({})
            return


class Worker:
    """One index in its own process (``--worker``), answering one JSON line per command."""

    def __init__(self, label: str, index_dir: Path, args: argparse.Namespace):
        self.label, self.index = label, index_dir.name
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(index_dir),
                   "--threads", str(args.threads), "--depth", str(args.depth), "--seed", str(args.seed),
                   "--query-backend", args.query_backend]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=ROOT)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.label} worker exited ({self.process.wait()})")
        return json.loads(line)

    def __call__(self, do: str, **fields) -> dict:
        self.process.stdin.write(json.dumps({"do": do, **fields}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self("quit")
            self.process.wait()


# ----- the side-by-side run ---------------------------------------------------------------------------------------
def alternate(workers: list[Worker], start: int, stop: int, chunk: int, **fields) -> dict[str, dict]:
    """Run queries [start, stop) on every worker in chunks, taking turns (the order reverses every chunk)."""
    results = {w.label: {"stages": {s: [] for s in STAGES}, "read_bytes": [], "chunk_p50": []} for w in workers}
    print(f"  queries {start}-{stop} {' '.join(f'{k}={v}' for k, v in fields.items())} "
          f"({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    for k, first in enumerate(range(start, stop, chunk)):
        for w in (workers if k % 2 == 0 else workers[::-1]):
            part = w("run", start=first, stop=min(first + chunk, stop), **fields)
            for stage in STAGES:
                results[w.label]["stages"][stage] += part["stages"][stage]
            results[w.label]["read_bytes"] += part["read_bytes"]
            results[w.label]["chunk_p50"].append(float(np.median(np.sum([part["stages"][s] for s in STAGES], 0))))
    return results


def cache_parts(workers: list[Worker], queries: int) -> dict[str, dict[str, float]]:
    """p50 ms of the cache's parts of a query (docid lookup, gather with decoding, lexical dot products with the
    real query terms), each timed alone on the calling thread, over the warm queries' candidates."""
    parts = {w.label: {part: [] for part in PARTS} for w in workers}
    for k, first in enumerate(range(0, queries, 50)):
        for w in (workers if k % 2 == 0 else workers[::-1]):
            for part, values in w("parts", start=first, stop=min(first + 50, queries))["parts"].items():
                parts[w.label][part] += values
    return {label: {part: float(np.median(v)) for part, v in by_part.items() if v} for label, by_part in parts.items()}


def summarise(result: dict) -> dict[str, float]:
    stages = {s: np.asarray(v) for s, v in result["stages"].items()}
    total = sum(stages.values())
    read = np.asarray(result["read_bytes"], dtype=np.float64)
    return {"queries": len(total), "p50 ms": float(np.percentile(total, 50)), "p95 ms": float(np.percentile(total, 95)),
            "gather p50 ms": float(np.percentile(stages["gather"], 50)),
            "gather p95 ms": float(np.percentile(stages["gather"], 95)),
            "query encoding p50 ms": float(np.percentile(stages["query_encoding"], 50)),
            "head p50 ms": float(np.percentile(stages["head"], 50)),
            "disk KB per query": float(read.mean() / 1024), "chunk p50 ms": result["chunk_p50"]}


def measure(args: argparse.Namespace, indexes: dict[str, Path]) -> dict:
    sys.path.insert(0, str(EVAL))
    from bench_latency import busy_core  # the same CPU burner as the latency benchmark's --contention

    workers = [Worker(name, path, args) for name, path in indexes.items()]
    out: dict = {"model_load_s": {w.label: w.ready["model_load_s"] for w in workers},
                 "query_texts": workers[0].ready["queries"], "load_average": {"start": os.getloadavg()}}
    try:
        out["open"] = {w.label: w("open") for w in workers}
        out["warm_up"] = {w.label: w("warm_up")["memory"] for w in workers}
        phases = {}
        # cold: query ids past the memory run's, so no later query reuses these candidates
        phases["cold"] = alternate(workers, args.queries, args.queries + args.cold_queries, 25, cold=True)
        alternate(workers, 0, args.warm_queries, 500)  # untimed: the warm queries' pages into the page cache
        # short chunks: each pair of chunks runs within a second or so, under the same load from other jobs
        phases["warm"] = alternate(workers, 0, args.warm_queries, 50)
        if args.contention:
            seconds = 60 + 0.05 * args.warm_queries * len(workers)
            with busy_core(seconds=seconds):
                phases["warm, one core busy"] = alternate(workers, 0, args.warm_queries, 50)
        out["parts"] = cache_parts(workers, args.warm_queries)
        phases["first touch"] = alternate(workers, args.warm_queries, args.queries, 250)
        out["after_queries"] = {w.label: w("memory")["memory"] for w in workers}
        out["load_average"]["end"] = os.getloadavg()
        out["phases"] = {phase: {label: summarise(r) for label, r in results.items()}
                         for phase, results in phases.items()}
    finally:
        for w in workers:
            w.close()
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def against(measured: dict, small: str, big: str) -> list[dict[str, str]]:
    """The targets for ``big`` against ``small``, and the figures without a target."""
    phases, opened = measured["phases"], measured["open"]

    def ratio(phase: str) -> str:
        ours, theirs = phases[phase][big]["p50 ms"], phases[phase][small]["p50 ms"]
        text = f"{ours / theirs:.2f}x ({ours:.2f} vs {theirs:.2f} ms)"
        if phase.startswith("warm"):  # the p50 ratio chunk by chunk (each pair of chunks ran back to back)
            chunks = np.array(phases[phase][big]["chunk p50 ms"]) / np.array(phases[phase][small]["chunk p50 ms"])
            text += f"; chunk by chunk {np.median(chunks):.2f}x ({chunks.min():.2f}-{chunks.max():.2f}, {len(chunks)} pairs)"
        return text

    open_s = opened[big]["reranker_open_s"]
    rss_gap = opened[big]["memory_after_open"]["rss_mb"] - opened[small]["memory_after_open"]["rss_mb"]
    anon_gap = opened[big]["memory_after_open"]["anon_mb"] - opened[small]["memory_after_open"]["anon_mb"]
    warm = phases["warm"][big]["p50 ms"] / phases["warm"][small]["p50 ms"]
    rows = [
        {"target": "open < 1 s",
         "measured": (f"from_index {open_s:.3f} s ({small}: {opened[small]['reranker_open_s']:.3f} s); the cache "
                      f"alone {opened[big]['cache_open_warm_s']:.4f} s warm, {opened[big]['cache_open_cold_s']:.4f} s cold"),
         "met": "yes" if open_s < 1 else "no"},
        {"target": f"RSS after open < 300 MB above {small}'s",
         "measured": f"{rss_gap:+.1f} MB (anonymous {anon_gap:+.1f} MB)", "met": "yes" if rss_gap < 300 else "no"},
        {"target": f"warm re-rank p50 within 1.3x of {small}'s", "measured": ratio("warm"),
         "met": "yes" if warm <= 1.3 else "no"},
    ]
    for phase in ("warm, one core busy", "cold", "first touch"):
        if phase in phases:
            rows.append({"target": f"(no target) {phase}, p50", "measured": ratio(phase), "met": "-"})
    return rows


def report(args, builds: dict[str, dict], measured: dict) -> str:
    from dipair_rerank.evaluate.report import format_table

    small, *bigs = list(builds)
    lines = [(f"# bench_scale  {time.strftime('%Y-%m-%d %H:%M')}  {cpu_model()}  {os.cpu_count()} cores  "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB  torch threads "
              f"{args.threads}  query backend {args.query_backend}  depth {args.depth}  codec {args.codec}"),
             ("load average (1, 5, 15 min; other jobs share the machine): at the start "
              f"{', '.join(f'{x:.1f}' for x in measured['load_average']['start'])}, at the end "
              f"{', '.join(f'{x:.1f}' for x in measured['load_average']['end'])}"), ""]
    rows = []
    for label, b in builds.items():
        rows.append({"index": label, "docs": f"{b['rows']:,}", "shards": b["shards"],
                     "rows per shard": f"{b.get('shard_rows', 65536):,}",
                     "GB on disk": b["bytes"] / 1e9, "B/doc in all": round(b["bytes_per_doc_all"]),
                     "blocks B/doc": b["bytes_per_doc"], "lexical B/doc": b["lexical_bytes_per_doc"],
                     "build s": round(b["build_s"], 1) if not b["shards_resumed"] else
                     f"{b['build_s']:.1f} (resumed after {b['shards_resumed']} shards)",
                     "of which docid lookup + cache.json s": round(b["finish_s"], 1)})
    lines += ["Build, one thread (real rows tiled, written through CacheWriter: codes, sha256 of every file, docid lookup):",
              format_table(rows, list(rows[0]))]
    rows = []
    for label, o in measured["open"].items():
        after = measured["after_queries"][label]
        rows.append({"index": label, "model load s": measured["model_load_s"][label],
                     "cache open s (cold / warm)": f"{o['cache_open_cold_s']:.4f} / {o['cache_open_warm_s']:.4f}",
                     "from_index s": o["reranker_open_s"],
                     "RSS after open MB": o["memory_after_open"]["rss_mb"],
                     "anon after open MB": o["memory_after_open"]["anon_mb"],
                     "RSS after queries MB": after["rss_mb"], "anon after queries MB": after["anon_mb"],
                     "file-backed after queries MB": after["file_mb"]})
    total = args.queries + args.cold_queries + args.warm_queries * (3 if args.contention else 2)
    lines += [(f"Open (from_index with the model loaded before; the cache alone: PrefixCache) and memory "
               f"(/proc/self/status; 'after queries': after {args.queries:,} distinct queries, {total:,} re-rank "
               f"calls with the repeated warm passes and the cold ones):"), format_table(rows, list(rows[0]))]
    columns = ["p50 ms", "p95 ms", "gather p50 ms", "gather p95 ms", "query encoding p50 ms", "head p50 ms",
               "disk KB per query"]
    rows = []
    for phase, per_index in measured["phases"].items():
        for label, summary in per_index.items():
            rows.append({"phase": phase, "index": label, "queries": summary["queries"],
                         **{c: summary[c] for c in columns}})
    lines += [(f"Re-rank stage per query (query encoding + gather + head), {args.depth} candidates drawn uniformly "
               "over the index; the indexes in alternating chunks:"),
              format_table(rows, ["phase", "index", "queries", *columns])]
    if "parts" in measured:
        rows = [{"index": label, **{f"{part} p50 ms": ms for part, ms in parts.items()}}
                for label, parts in measured["parts"].items()]
        lines += [("The cache's parts of a warm query, each timed alone (100 rows; the lexical dot products with "
                   "the query's real terms):"), format_table(rows, list(rows[0]))]
    for big in bigs:
        lines += [f"{big} against {small}:", format_table(against(measured, small, big), ["target", "measured", "met"])]
    lines.append("cold: before each cold query, madvise(MADV_DONTNEED) over the process's maps of the cache files, "
                 "then posix_fadvise(POSIX_FADV_DONTNEED) over every cache file; warm: an untimed pass over the same "
                 "queries' candidates first; first touch: new candidates, the page cache as the run left it.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000_000, help="rows of the big index")
    parser.add_argument("--small-docs", type=int, default=10_000, help="rows of the index it is compared with")
    parser.add_argument("--codec", default="int8", choices=("fp16", "int8", "pq"))
    parser.add_argument("--source", default="indexes/eff-dl19",
                        help="an index built with the shipped default model whose rows are tiled ('none': encode "
                             "--corpus into WORK/source once)")
    parser.add_argument("--corpus", default=None, help="default: $DIPAIR_DATA/msmarco-dl19/corpus.jsonl")
    parser.add_argument("--shard-rows", type=int, default=65536, help="rows per cache shard (the indexer's default)")
    parser.add_argument("--more-shard-rows", type=int, nargs="*", default=[],
                        help="also build and measure the big index in shards of these sizes")
    parser.add_argument("--work", default="eval/work/scale", help="where the indexes are built (git-ignored)")
    parser.add_argument("--queries", type=int, default=10_000, help="distinct queries per index (memory figure)")
    parser.add_argument("--warm-queries", type=int, default=2_000, help="the first queries, timed warm")
    parser.add_argument("--cold-queries", type=int, default=200, help="queries timed cold, each after a drop")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--query-backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contention", action="store_true", help="also time the warm queries with one core busy")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--json", default="eval/results/bench_scale.json")
    parser.add_argument("--output", default="eval/results/bench_scale.txt", help="the printed report, saved")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    os.chdir(ROOT)
    from dipair_rerank.data import shared_data_dir

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    label = lambda rows: f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k"
    plan = {label(args.small_docs): (args.small_docs, args.shard_rows, f"{label(args.small_docs)}-{args.codec}"),
            label(args.docs): (args.docs, args.shard_rows, f"{label(args.docs)}-{args.codec}")}
    for shard_rows in args.more_shard_rows:  # the big index again, in shards of another size
        plan[f"{label(args.docs)}, {shard_rows:,}-row shards"] = (args.docs, shard_rows,
                                                                  f"{label(args.docs)}-{args.codec}-s{shard_rows}")
    indexes = {name: work / folder for name, (_, _, folder) in plan.items()}
    builds = {}
    source = None
    for name, (rows, shard_rows, _) in plan.items():
        folder = indexes[name]
        record = folder / "build.json"
        if record.is_file() and (folder / "manifest.json").is_file():
            kept = json.loads(record.read_text())
            if (kept["rows"], kept["codec"], kept.get("shard_rows", 65536)) == (rows, args.codec, shard_rows):
                builds[name] = kept  # built before (its fingerprint is checked when the worker opens it)
                continue
        if source is None:
            corpus = Path(args.corpus or shared_data_dir() / "msmarco-dl19" / "corpus.jsonl")
            source = source_rows(Path(args.source), corpus, work)
        print(f"building {folder} ({rows:,} rows in shards of {shard_rows:,}, {args.codec})", file=sys.stderr)
        builds[name] = build_index(folder, rows, args.codec, source, shard_rows)
    if args.build_only:
        print(json.dumps(builds, indent=1))
        return
    measured = measure(args, indexes)
    text = report(args, builds, measured)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args),
                                           "builds": builds, **measured}, indent=1))


if __name__ == "__main__":
    main()
