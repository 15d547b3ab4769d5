import numpy as np
import pytest

from dipair_rerank.first_stage import DenseFirstStage


def test_dense_uses_the_given_vectors(tiny_index):
    dense = DenseFirstStage(tiny_index / "faiss")
    vector = np.asarray(dense.index.reconstruct(4))[None]  # document d5's own embedding
    (hits,) = dense.retrieve(["q"], ["ignored"], 3, query_vectors=vector)
    assert hits[0].docid == "d5" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        dense.retrieve(["q"], ["text"], 3)
