"""Dense retrieval over the index's FAISS folder (Pyserini layout: ``index`` + ``docid``).

Query vectors come from the DiPair query encoder's pooled output, computed in the same forward pass that the
re-ranker uses, so dense retrieval adds no second query encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dipair_rerank.errors import DiPairError
from dipair_rerank.first_stage.base import Candidate


class DenseFirstStage:
    name = "dense"

    def __init__(self, faiss_dir: str | Path):
        import faiss

        faiss_dir = Path(faiss_dir)
        if not (faiss_dir / "index").is_file():
            raise DiPairError(f"no dense index at {faiss_dir}; rebuild with 'dipair-rerank index --dense'")
        self.index = faiss.read_index(str(faiss_dir / "index"))
        self.docids = np.array((faiss_dir / "docid").read_text(encoding="utf-8").split("\n")[:-1], dtype=object)

    def retrieve(self, qids: list[str], queries: list[str], k: int, *, query_vectors: np.ndarray | None = None,
                 threads: int = 1) -> list[list[Candidate]]:
        if query_vectors is None:
            raise ValueError("dense retrieval needs query_vectors (the re-ranker's pooled query embeddings)")
        scores, ids = self.index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), k)
        return [
            [Candidate(self.docids[i], float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]
