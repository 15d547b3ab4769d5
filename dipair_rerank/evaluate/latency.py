"""Per-query latency by stage, recorded beside a run file (``StageTimer`` lives in ``dipair_rerank.timing``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dipair_rerank.timing import STAGES, StageTimer, describe

SIDECAR_SUFFIX = ".latency.json"


def save_latency(timer: StageTimer, run_path: str | Path, **extra: Any) -> Path:
    """Write ``timer``'s per-query milliseconds beside ``run_path``."""
    path = sidecar_path(run_path)
    payload = {"unit": "ms", "stages": {s: timer.per_query_ms(s).round(4).tolist() for s in timer.batches}, **extra}
    path.write_text(json.dumps(payload) + "\n")
    return path


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


__all__ = ["STAGES", "StageTimer", "describe", "load_latency", "save_latency", "sidecar_path"]
