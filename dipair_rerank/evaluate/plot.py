"""The picture users look at first: quality against per-query latency, one curve per system."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class Point(NamedTuple):
    system: str  # one curve per system
    label: str  # e.g. "@100"
    latency_ms: float
    quality: float


def plot_quality_latency(points: Sequence[Point], path: str | Path, *, title: str = "", measure: str = "nDCG@10",
                         axes=None) -> Path:
    """Draw ``points`` (log-scale latency) into ``path`` (PNG), or onto ``axes`` when given (no file written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = axes is None
    if own:
        _, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for system in dict.fromkeys(p.system for p in points):
        curve = sorted((p for p in points if p.system == system), key=lambda p: p.latency_ms)
        axes.plot([p.latency_ms for p in curve], [p.quality for p in curve], marker="o", label=system)
        for p in curve:
            axes.annotate(p.label, (p.latency_ms, p.quality), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("latency per query, ms (p50, log scale)")
    axes.set_ylabel(measure)
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    path = Path(path)
    if own:
        path.parent.mkdir(parents=True, exist_ok=True)
        plt.tight_layout()
        plt.savefig(path)
        plt.close()
    return path
