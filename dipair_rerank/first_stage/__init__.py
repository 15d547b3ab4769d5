"""First stages that produce candidates for re-ranking: BM25 (Lucene), dense (FAISS), or an existing run."""

from dipair_rerank.first_stage.base import Candidate, FirstStage
from dipair_rerank.first_stage.bm25 import BM25FirstStage
from dipair_rerank.first_stage.dense import DenseFirstStage
from dipair_rerank.first_stage.runfile import RunFileFirstStage

__all__ = ["BM25FirstStage", "Candidate", "DenseFirstStage", "FirstStage", "RunFileFirstStage"]
