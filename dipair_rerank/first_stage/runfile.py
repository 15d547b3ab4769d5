"""Candidates from an existing TREC run (``--candidates``): re-rank someone else's first stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dipair_rerank.data.runs import Run, read_run
from dipair_rerank.first_stage.base import Candidate


class RunFileFirstStage:
    name = "run"

    def __init__(self, run: Run | str | Path):
        self.run = run if isinstance(run, dict) else read_run(run)

    def retrieve(self, qids: list[str], queries: list[str], k: int, *, query_vectors: np.ndarray | None = None,
                 threads: int = 1) -> list[list[Candidate]]:
        """A query absent from the run gets no candidates (it is still written, with no lines, as Pyserini does)."""
        return [[Candidate(docid, score) for docid, score in self.run.get(qid, [])[:k]] for qid in qids]
