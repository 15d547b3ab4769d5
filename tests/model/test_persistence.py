"""Fingerprint, saving and loading (``model/persistence.py``): a saved model loads as the same model, fingerprints are
reproducible and stable, and ``--model`` names that are not models fail clearly."""

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel, load_model
from tests.conftest import tiny_config

QUERIES = ["quantum qubits", "pets"]
DOCS = ["A qubit is the basic unit of quantum information.", "Cats and dogs are the most common household pets."]


def test_save_load_round_trip_keeps_fingerprint_and_scores(tiny_model, tmp_path):
    path = tiny_model.save_pretrained(tmp_path / "m")
    loaded = DiPairModel.from_pretrained(path)
    assert loaded.fingerprint() == tiny_model.fingerprint()
    with torch.inference_mode():
        assert torch.allclose(loaded(QUERIES, DOCS), tiny_model(QUERIES, DOCS), atol=1e-6)


def test_fresh_models_with_same_seed_share_a_fingerprint():
    assert DiPairModel(tiny_config()).fingerprint() == DiPairModel(tiny_config()).fingerprint()
    assert DiPairModel(tiny_config(seed=1)).fingerprint() != DiPairModel(tiny_config()).fingerprint()


def test_separate_towers(tmp_path):
    model = DiPairModel(tiny_config(shared_encoder=False))
    assert model.query_encoder is not model.doc_encoder
    loaded = DiPairModel.from_pretrained(model.save_pretrained(tmp_path / "two"))
    assert loaded.fingerprint() == model.fingerprint()


def test_load_model_rejects_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(DiPairError, match="neither a DiPair model folder nor a Hugging Face model folder"):
        load_model(tmp_path)


def test_the_shipped_model_keeps_the_fingerprint_it_was_saved_with():
    """Indexes record the fingerprint; a new config field must not silently invalidate every existing cache."""
    from safetensors import safe_open

    from dipair_rerank.model.default import SHIPPED_DIR
    from dipair_rerank.model.persistence import WEIGHTS_NAME

    with safe_open(str(SHIPPED_DIR / WEIGHTS_NAME), framework="pt") as handle:
        assert load_model(None).fingerprint() == handle.metadata()["fingerprint"]


def test_eval_keeps_the_fingerprint_and_leaving_training_drops_it():
    """Opening an index hashes the model once (eval() of an eval model keeps the hash); weights changed while
    training give a new fingerprint once training ends."""
    model = DiPairModel(tiny_config()).eval()
    first = model.fingerprint()
    assert model.eval()._fingerprint == first
    model.train()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert model.eval().fingerprint() != first
