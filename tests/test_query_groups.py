"""A batch of queries is encoded in groups of similar length (or of equal length, side by side on one-thread
sessions): same scores as one query at a time, in order."""

import pytest
import torch

from dipair_rerank.rerank import DiPairReranker, length_groups


def test_length_groups():
    assert length_groups([3, 4, 3], 1.5) == [[0, 1, 2]]  # one group keeps the input order
    assert length_groups([10, 3, 4, 15, 6], 1.5) == [[1, 2], [4], [0, 3]]
    assert length_groups([5], 1.5) == [[0]] and length_groups([], 1.5) == []


@pytest.mark.parametrize(("backend", "batch_threads"), [("torch", None), ("onnx", 1), ("onnx", 2)])
def test_grouped_batch_equals_one_at_a_time(tiny_index, backend, batch_threads):
    reranker = DiPairReranker.from_index(tiny_index, query_backend=backend, batch_threads=batch_threads)
    assert getattr(reranker._encode_queries, "runs_tasks", False) == (batch_threads == 2)
    queries = ["cats and dogs and other household pets kept at home today", "qubits", "interest rate decisions",
               "plants", "entangled quantum particles in a laboratory experiment"]
    batched = reranker.encode_queries(queries)
    for i, query in enumerate(queries):
        single = reranker.encode_queries([query])
        assert torch.allclose(batched.vectors[i], single.vectors[0], atol=1e-4)
        assert torch.equal(batched.mask[i], single.mask[0])
        assert torch.allclose(batched.pooled[i], single.pooled[0], atol=1e-4)
