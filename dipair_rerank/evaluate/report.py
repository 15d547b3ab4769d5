"""Text reports: trec_eval-style metric lines and a latency table beside them."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path

from dipair_rerank.evaluate.latency import STAGES
from dipair_rerank.evaluate.metrics import MeasureValue


def format_measures(values: Iterable[MeasureValue]) -> str:
    """``measure<TAB>qid<TAB>value`` lines, as trec_eval prints them."""
    return "".join(f"{v.measure:<22}\t{v.qid}\t{v.value:.4f}\n" for v in values)


def format_latency(summary: Mapping[str, Mapping[str, float]]) -> str:
    lines = [f"{'latency (ms/query)':<22}\t{'p50':>9}\t{'p95':>9}\n"]
    for stage in (*STAGES, "rerank", "total"):
        if stage in summary:
            row = summary[stage]
            lines.append(f"{stage:<22}\t{row['p50']:>9.2f}\t{row['p95']:>9.2f}\n")
    return "".join(lines)


def format_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table (README-ready) of ``rows`` over ``columns``."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(out) + "\n"


def format_rounds(label: str, runs: Mapping[str, list[Mapping[str, float]]], columns: list[str]) -> str:
    """A Markdown table of A/B arms measured in alternating rounds: per arm and column, the median over rounds, then
    each round's value in brackets (so a reader sees how much the machine moved between rounds)."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, arm in runs.items():
        cells = [f"{statistics.median(run[c] for run in arm):.3f} ({', '.join(f'{run[c]:.2f}' for run in arm)})"
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def publish_report(text: str, path: str | Path) -> None:
    """Print a benchmark's report and save it where eval/README.md points to it."""
    print(text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
