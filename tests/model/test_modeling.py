"""The towers and blocks (``model/modeling.py``): pairs score from raw text, masks make padding irrelevant, document
vectors are fp16-exact (so the fp16 cache is lossless), and the head's parameters leave the encoders out."""

import torch

QUERIES = ["quantum qubits", "pets"]
DOCS = ["A qubit is the basic unit of quantum information.", "Cats and dogs are the most common household pets."]


def test_scores_pairs_from_text(tiny_model):
    with torch.inference_mode():
        scores = tiny_model(QUERIES, DOCS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_padding_does_not_change_a_score(tiny_model):
    """A document scored alone and beside a much longer one gets the same score (masks work)."""
    with torch.inference_mode():
        alone = tiny_model(["q"], ["short doc"])
        padded = tiny_model(["q", "q"], ["short doc", "a much longer document " * 5])
    assert torch.allclose(alone, padded[:1], atol=1e-5)


def test_document_vectors_are_fp16_exact(tiny_model):
    with torch.inference_mode():
        prefix = tiny_model.encode_documents(tiny_model.tokenize(DOCS, max_length=32))
    assert torch.equal(prefix.vectors, prefix.vectors.half().float())
    assert prefix.vectors.shape == (2, tiny_model.config.doc_slots, tiny_model.config.proj_dim)


def test_head_parameters_exclude_encoders(tiny_model):
    head = {id(p) for p in tiny_model.head_parameters()}
    assert not any(id(p) in head for p in tiny_model.encoders.parameters())
    assert head
