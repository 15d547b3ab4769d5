"""What every first stage provides: candidates for a query, best first."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class Candidate(NamedTuple):
    """A retrieved document, shaped like Pyserini's hits (``.docid``, ``.score``)."""

    docid: str
    score: float


class FirstStage(Protocol):
    name: str

    def retrieve(self, qids: list[str], queries: list[str], k: int, *, query_vectors: np.ndarray | None = None,
                 threads: int = 1) -> list[list[Candidate]]:
        """Top ``k`` candidates for each query (``query_vectors``: pooled query embeddings, for dense)."""
        ...
