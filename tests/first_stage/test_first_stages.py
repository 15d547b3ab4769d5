import numpy as np
import pytest

from dipair_rerank.first_stage import BM25FirstStage, DenseFirstStage, RunFileFirstStage


def test_bm25_finds_the_matching_documents(tiny_index):
    (hits,) = BM25FirstStage(tiny_index / "lucene").retrieve(["q"], ["qubit"], 3)
    assert hits[0].docid in {"d2", "d6"} and hits[0].score > 0


def test_bm25_batch_and_empty_query(tiny_index):
    bm25 = BM25FirstStage(tiny_index / "lucene")
    hits = bm25.retrieve(["a", "b"], ["qubit", "inflation"], 2, threads=2)
    assert len(hits) == 2 and hits[1][0].docid in {"d7", "d10"}
    assert bm25.retrieve(["e"], ["   "], 5) == [[]]


def test_dense_uses_the_given_vectors(tiny_index):
    dense = DenseFirstStage(tiny_index / "faiss")
    vector = np.asarray(dense.index.reconstruct(4))[None]  # document d5's own embedding
    (hits,) = dense.retrieve(["q"], ["ignored"], 3, query_vectors=vector)
    assert hits[0].docid == "d5" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        dense.retrieve(["q"], ["text"], 3)


def test_run_file_truncates_to_k():
    stage = RunFileFirstStage({"q": [("a", 3.0), ("b", 2.0), ("c", 1.0)]})
    assert [c.docid for c in stage.retrieve(["q", "x"], ["", ""], 2)[0]] == ["a", "b"]
    assert stage.retrieve(["x"], [""], 2) == [[]]
