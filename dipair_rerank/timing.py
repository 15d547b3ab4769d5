"""Per-stage wall-clock timing on the query path (first stage, query encoding, gather, head).

Its own module because the hot path (re-ranker, pipeline, search, service) records into it; reading and
reporting recorded timings is ``evaluate/``'s.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

STAGES = ("first_stage", "query_encoding", "gather", "head")


class StageTimer:
    """Collects wall-clock milliseconds per stage; one entry per batch, with how many queries it served."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[float, int]]] = defaultdict(list)

    @contextmanager
    def time(self, stage: str, queries: int = 1) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.batches[stage].append(((time.perf_counter() - start) * 1000.0, queries))

    def per_query_ms(self, stage: str) -> np.ndarray:
        """Milliseconds per query for ``stage`` (a batch's time is shared evenly among its queries)."""
        return np.array([ms / n for ms, n in self.batches.get(stage, []) for _ in range(n)], dtype=np.float64)

    def summary(self) -> dict[str, dict[str, float]]:
        """p50/p95/mean per stage, plus ``rerank`` (encoding + gather + head) and ``total`` (every stage)."""
        per_stage = {stage: self.per_query_ms(stage) for stage in STAGES if self.batches.get(stage)}
        rows = {stage: describe(values) for stage, values in per_stage.items()}
        for name, parts in (("rerank", ("query_encoding", "gather", "head")), ("total", STAGES)):
            present = [per_stage[p] for p in parts if p in per_stage]
            if present and len({len(v) for v in present}) == 1:
                rows[name] = describe(np.sum(present, axis=0))
        return rows


def describe(values: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "mean": float(values.mean()),
        "n": int(len(values)),
    }
