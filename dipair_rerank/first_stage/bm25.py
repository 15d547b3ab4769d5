"""BM25 over the index's Lucene folder with Pyserini's LuceneSearcher (imported lazily: the JVM is slow to start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dipair_rerank.errors import DiPairError
from dipair_rerank.first_stage.base import Candidate


class BM25FirstStage:
    """Pyserini BM25 (defaults k1=0.9, b=0.4, as LuceneSearcher's)."""

    name = "bm25"

    def __init__(self, lucene_dir: str | Path, *, k1: float = 0.9, b: float = 0.4):
        from dipair_rerank._java import ensure_jvm

        if not Path(lucene_dir).is_dir():  # e.g. the existing index an --from-lucene index recorded was moved
            raise DiPairError(f"no Lucene index at {lucene_dir}")
        ensure_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(str(Path(lucene_dir).resolve()))  # the JVM keeps its start-up cwd
        self.searcher.set_bm25(k1, b)

    def close(self) -> None:
        """Close Lucene's reader (its files stay open until then, even once a newer build replaces the folder)."""
        self.searcher.close()

    def retrieve(self, qids: list[str], queries: list[str], k: int, *, query_vectors: np.ndarray | None = None,
                 threads: int = 1) -> list[list[Candidate]]:
        if len(queries) == 1:
            hits = {qids[0]: self.searcher.search(queries[0], k) if queries[0].strip() else []}
        else:
            hits = self.searcher.batch_search(queries, qids, k, threads)
        return [[Candidate(hit.docid, float(hit.score)) for hit in hits.get(qid, [])] for qid in qids]
