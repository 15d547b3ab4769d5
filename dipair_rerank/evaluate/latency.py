"""Per-query latency by stage (first stage, query encoding, gather, head), recorded beside a run file."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("first_stage", "query_encoding", "gather", "head")
SIDECAR_SUFFIX = ".latency.json"


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

    def save(self, run_path: str | Path, **extra: Any) -> Path:
        path = sidecar_path(run_path)
        payload = {"unit": "ms", "stages": {s: self.per_query_ms(s).round(4).tolist() for s in self.batches}, **extra}
        path.write_text(json.dumps(payload) + "\n")
        return path


def describe(values: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "mean": float(values.mean()),
        "n": int(len(values)),
    }


def sidecar_path(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    return run_path.with_name(run_path.name + SIDECAR_SUFFIX)


def load_latency(run_path: str | Path) -> dict[str, dict[str, float]] | None:
    """Per-stage p50/p95 recorded by ``search`` for ``run_path``; None when the run came from elsewhere."""
    path = sidecar_path(run_path)
    if not path.is_file():
        return None
    stages = json.loads(path.read_text())["stages"]
    timer = StageTimer()
    for stage, values in stages.items():
        timer.batches[stage] = [(v, 1) for v in values]
    return timer.summary()
