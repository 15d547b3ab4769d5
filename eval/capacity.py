"""Capacity plan from measured numbers: bytes and encoding hours for 8.8M, 1B and 1T documents per codec, and how
many Ray workers a deadline needs. Prints Markdown for eval/SCALE.md. Reads:

- eval/results/bench_codecs.json (eval/bench_codecs.py): the blocks' bytes per document in each codec;
- an index's ``dipair/cache.json`` (default indexes/eff-dl19, MS MARCO passages): the lexical terms' bytes per
  document, which every codec stores as they are and the shipped model's lexical channel reads;
- eval/results/effectiveness.json (eval/effectiveness.py): the shipped default model's index time per DL19
  passage (blocks and lexical terms, 2 threads), the build rate; without it, bench_index.json's cache build rate;
- eval/results/bench_index.json (eval/bench_index.py): Ray workers' rate relative to one 2-thread process, and
  their efficiency with 2 workers.

Serving machines: how many hold the cache in memory (``--ram-gb`` each for the page cache), the condition for
warm re-rank latencies (eval/bench_scale.py: a cold gather reads from disk and costs several times a warm one).

    python eval/capacity.py [--deadline-hours 24] [--ram-gb 20]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SIZES = {"MS MARCO (8.8M)": 8.8e6, "1B": 1e9, "1T": 1e12}
SHIPPED_ROW = "DiPair default model (shipped)"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} EB"


def lexical_bytes(cache_json: Path) -> float:
    """Lexical terms' bytes per document recorded by an index's cache (0 for a model without that channel)."""
    if not cache_json.is_file():
        return 0.0
    meta = json.loads(cache_json.read_text())
    return float(meta.get("lexical_bytes_per_doc", 0.0)) if meta.get("lexical") else 0.0


def shipped_rate(effectiveness: Path) -> float | None:
    """docs/s of the shipped default model's document branch on DL19 passages, from effectiveness.json."""
    if not effectiveness.is_file():
        return None
    rows = json.loads(effectiveness.read_text()).get("TREC DL19", [])
    row = next((r for r in rows if r["row"] == SHIPPED_ROW and r.get("index_ms")), None)
    return None if row is None else 1000.0 / row["index_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="eval/results")
    parser.add_argument("--deadline-hours", type=float, default=24.0)
    parser.add_argument("--ram-gb", type=float, default=20.0,
                        help="memory per serving machine left for the cache's pages (default: 20 of a 24 GB machine)")
    parser.add_argument("--codecs", nargs="+", default=["fp16", "int8", "pq"],
                        help="bench_codecs.py rows to size (pq: what --codec pq builds)")
    parser.add_argument("--lexical-cache", default="indexes/eff-dl19/dipair/cache.json",
                        help="an index's cache.json: its lexical_bytes_per_doc is added to every codec")
    args = parser.parse_args()
    results = Path(args.results)
    index = json.loads((results / "bench_index.json").read_text())
    codecs = json.loads((results / "bench_codecs.json").read_text())
    blocks = {row["codec"]: row["bytes/doc"] for row in codecs["rows"] if row["codec"] in args.codecs}
    lexical = lexical_bytes(Path(args.lexical_cache))
    engines = index.get("engines") or []
    measured = next(r["cache build docs/s"] for r in index["throughput"] if r["corpus"] == "msmarco-dl19")
    rate = shipped_rate(results / "effectiveness.json")
    if rate is None:
        rate, source = measured, f"eval/bench_index.py, {index['date']}"
    else:
        source = "the shipped default model's document branch, blocks and lexical terms, eval/effectiveness.py"
    # one single-thread Ray worker's share of a 2-thread process, and the efficiency of 2 workers, as measured
    share = engines[1]["docs/s"] / engines[0]["docs/s"] if len(engines) > 1 else 0.5
    per_worker = rate * share
    efficiency = engines[2]["docs/s"] / (2 * engines[1]["docs/s"]) if len(engines) > 2 else 1.0

    print(f"Build rate: {rate:.0f} docs/s for MS MARCO-length passages with 2 CPU threads ({source}). One "
          f"single-thread Ray worker: {share:.0%} of that ({per_worker:.0f} docs/s), 2 workers on one machine "
          f"{efficiency:.0%} efficient each (eval/bench_index.py, {index['date']}). Bytes: the blocks per codec "
          f"(eval/bench_codecs.py, {codecs['date']}) + {lexical:.0f} B/doc of lexical terms (MS MARCO passages, "
          f"{args.lexical_cache}), stored as they are by every codec.\n")
    print("| corpus | " + " | ".join(f"{c} ({b} + {lexical:.0f} B/doc)" for c, b in blocks.items())
          + " | CPU hours (2 threads) |")
    print("|---|" + "---:|" * (len(blocks) + 1))
    for name, docs in SIZES.items():
        sizes = " | ".join(human_bytes(docs * (b + lexical)) for b in blocks.values())
        print(f"| {name} | {sizes} | {docs / rate / 3600:,.0f} |")
    print(f"\nRay workers (1 CPU thread each, {per_worker:.0f} docs/s alone, at {efficiency:.0%} per-worker "
          f"efficiency) to encode within {args.deadline_hours:g} hours:\n")
    print("| corpus | workers |")
    print("|---|---:|")
    for name, docs in SIZES.items():
        print(f"| {name} | {math.ceil(docs / (per_worker * efficiency) / (args.deadline_hours * 3600)):,} |")
    print(f"\nServing machines holding the whole cache in memory ({args.ram_gb:g} GB of page cache each):\n")
    print("| corpus | " + " | ".join(blocks) + " |")
    print("|---|" + "---:|" * len(blocks))
    for name, docs in SIZES.items():
        print(f"| {name} | " + " | ".join(f"{math.ceil(docs * (b + lexical) / (args.ram_gb * 1e9)):,}"
                                          for b in blocks.values()) + " |")


if __name__ == "__main__":
    main()
