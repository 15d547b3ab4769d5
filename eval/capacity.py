"""Capacity plan (issue 5) from measured numbers: bytes and encoding hours for 8.8M, 1B and 1T documents per
codec, and how many Ray workers a deadline needs. Reads eval/results/bench_index.json and bench_codecs.json
(run eval/bench_index.py and eval/bench_codecs.py first); prints Markdown for eval/SCALE.md.

    python eval/capacity.py [--deadline-hours 24]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SIZES = {"MS MARCO (8.8M)": 8.8e6, "1B": 1e9, "1T": 1e12}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} EB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="eval/results")
    parser.add_argument("--deadline-hours", type=float, default=24.0)
    parser.add_argument("--codecs", nargs="+", default=["fp16", "int8", "pq8-p6", "pq4-p6"],
                        help="bench_codecs.py rows to size (pq8-p6 is what --codec pq builds)")
    args = parser.parse_args()
    index = json.loads((Path(args.results) / "bench_index.json").read_text())
    codecs = json.loads((Path(args.results) / "bench_codecs.json").read_text())["rows"]
    bytes_per_doc = {row["codec"]: row["bytes/doc"] for row in codecs if row["codec"] in args.codecs}
    # MS MARCO passages are short (the DL19 rate); SciFact abstracts are long
    rate = next(r["cache build docs/s"] for r in index["throughput"] if r["corpus"] == "msmarco-dl19")
    engines = index.get("engines") or []
    per_worker = engines[1]["docs/s"] if len(engines) > 1 else rate / 2
    efficiency = engines[2]["docs/s"] / (2 * per_worker) if len(engines) > 2 else 1.0  # measured with 2 workers

    print(f"Measured on this machine ({index['date']}, {index['threads']} CPU threads): cache build "
          f"{rate:.0f} docs/s for MS MARCO-length passages; one single-thread Ray worker {per_worker:.0f} docs/s. "
          "No GPU was lent to this task, so GPU throughput is not measured.\n")
    print("| corpus | " + " | ".join(f"{c} ({b} B/doc)" for c, b in bytes_per_doc.items()) + " | CPU hours (2 threads) |")
    print("|---|" + "---|" * (len(bytes_per_doc) + 1))
    for name, docs in SIZES.items():
        sizes = " | ".join(human_bytes(docs * b) for b in bytes_per_doc.values())
        print(f"| {name} | {sizes} | {docs / rate / 3600:,.0f} |")
    print(f"\nRay workers (1 CPU thread each, {per_worker:.0f} docs/s alone, at the {efficiency:.0%} per-worker "
          f"efficiency measured with 2 workers on one machine) to encode within {args.deadline_hours:g} hours:\n")
    print("| corpus | workers |")
    print("|---|---|")
    for name, docs in SIZES.items():
        print(f"| {name} | {math.ceil(docs / (per_worker * efficiency) / (args.deadline_hours * 3600)):,} |")


if __name__ == "__main__":
    main()
