"""The shipped default model: small, trained (non-zero head output layer), loaded when no model is named."""

from dipair_rerank.model import load_model
from dipair_rerank.model.default import SHIPPED_DIR


def test_shipped_model_is_small_and_the_default():
    files = [p for p in SHIPPED_DIR.rglob("*") if p.is_file()]
    assert (SHIPPED_DIR / "dipair_config.json").is_file()
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    model = load_model(None)
    assert model.config.query_prefix == 8 and model.config.doc_prefix == 8 and model.config.proj_dim == 128
    assert float(model.score_out.weight.detach().abs().sum()) > 0  # trained, not the zero-initialised head
    assert float(model.similarity_scale.detach()) > 1.0  # calibrated to the teacher's score spread


def test_shipped_query_tower_is_a_delta_over_the_packaged_encoder():
    """The tuned query layers differ from the packaged MiniLM; everything else, the document tower included,
    is the packaged MiniLM, so the shipped model needs no encoder weights of its own."""
    import torch

    model = load_model(None)
    tuned = model.tuned_layer_prefixes()
    assert model.config.query_tuned_layers == len(tuned) > 0
    query, doc = model.query_encoder.state_dict(), model.doc_encoder.state_dict()
    moved = [name for name in query if not torch.equal(query[name], doc[name])]
    assert moved and all(f"encoders.0.{name}".startswith(tuned) for name in moved)


def test_shipped_model_carries_its_channels_and_lexical_model():
    """The channels' weights are trained and the lexical model ships inside the folder (nothing to fetch)."""
    model = load_model(None)
    assert model.config.channels == ["first_stage", "lexical", "cosine"]
    assert float(model.channel_weights.detach().abs().min()) > 0
    assert model.lexical is not None and str(SHIPPED_DIR) in str(model.lexical.path)
