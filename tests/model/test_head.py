"""The head (``model/head.py``): an untrained head adds nothing to the bi-encoder cosine, and the inference shortcuts
(position 0 only in the last layer, a one-layer head's query share computed once per query) give the full layers'
numbers."""

import pytest
import torch

from dipair_rerank.model import DiPairModel
from tests.conftest import tiny_config

QUERIES = ["quantum qubits", "pets"]
DOCS = ["A qubit is the basic unit of quantum information.", "Cats and dogs are the most common household pets."]


def test_untrained_score_is_scaled_cosine_of_pooled_slots(tiny_model):
    """The zero-initialised head adds nothing: a fresh model ranks like its projected bi-encoder."""
    with torch.inference_mode():
        q = tiny_model.encode_queries(tiny_model.tokenize(QUERIES, max_length=16))
        d = tiny_model.encode_documents(tiny_model.tokenize(DOCS, max_length=32))
        scores = tiny_model.score_prefixes(q.vectors, q.mask, d.vectors, d.mask)
        cosine = torch.nn.functional.cosine_similarity(q.vectors[:, -1], d.vectors[:, -1], dim=-1)
    assert torch.allclose(scores, cosine, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_first_token_head_path_equals_the_full_head(layers):
    """The inference path that computes only position 0 in the last layer gives the full layers' numbers."""
    model = DiPairModel(tiny_config(head_layers=layers))
    torch.nn.init.normal_(model.score_out.weight, std=0.5)  # make the head's output count
    tokens = torch.randn(5, model.config.query_slots + model.config.doc_slots, model.config.proj_dim)
    padding = torch.zeros(5, tokens.shape[1], dtype=torch.bool)
    padding[:, 2:4] = True
    padding[1, 6:9] = True
    with torch.inference_mode():
        fast = model._head_first_token(tokens, padding)
        full = model.head(tokens, src_key_padding_mask=padding)[:, 0]
    assert torch.allclose(fast, full, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_shared_query_scoring_equals_the_full_head_on_aligned_pairs(layers):
    """Scoring Q queries against B documents by ``query_index`` gives the plain full head's scores per pair."""
    model = DiPairModel(tiny_config(head_layers=layers))
    torch.nn.init.normal_(model.score_out.weight, std=0.5)
    config, width = model.config, model.config.proj_dim
    q_vectors = torch.randn(3, config.query_slots, width)
    d_vectors = torch.randn(7, config.doc_slots, width)
    q_mask = torch.ones(3, config.query_slots, dtype=torch.bool)
    q_mask[1, 2:4] = False
    d_mask = torch.ones(7, config.doc_slots, dtype=torch.bool)
    d_mask[2, 1:3] = False
    query_index = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    with torch.inference_mode():
        shared = model.score_prefixes(q_vectors, q_mask, d_vectors, d_mask, query_index=query_index)
        single = model.score_prefixes(q_vectors[:1], q_mask[:1], d_vectors, d_mask)
        tokens = torch.cat([q_vectors[query_index], d_vectors], dim=1) + model.position.weight + model.segment(
            torch.cat([torch.zeros(config.query_slots), torch.ones(config.doc_slots)]).long())
        padding = ~torch.cat([q_mask[query_index], d_mask], dim=1)
        first = model.head(tokens, src_key_padding_mask=padding)[:, 0]
        full = model.score_out(model.head_norm(first)).squeeze(-1) + model.similarity_scale * torch.cosine_similarity(
            q_vectors[query_index, -1], d_vectors[:, -1], dim=-1)
        full_first_query = model.score_prefixes(q_vectors[[0] * 7], q_mask[[0] * 7], d_vectors, d_mask)
    assert torch.allclose(shared, full, atol=1e-5)
    assert torch.allclose(single, full_first_query, atol=1e-5)
