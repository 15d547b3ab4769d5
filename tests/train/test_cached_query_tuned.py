"""Partial end-to-end training: the query tower's top layers train over cached lower-layer states; the frozen
layers and the document tower (hence every cache) do not move; the trained layers ship as a delta; resume works."""

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel, tiny_encoder_config
from dipair_rerank.model.modeling import WEIGHTS_NAME
from dipair_rerank.train.cached import (
    CachedStage1Config,
    query_feature_layer,
    query_vectors,
    split_validation,
    train_stage1_cached,
)
from dipair_rerank.train.features import extract_features
from tests.conftest import TINY_DOCS, tiny_config
from tests.train.test_cached import _examples


def _stores(model, tmp_path, examples):
    layer = query_feature_layer(model)
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query",
                               keep=model.config.query_max_length, layer=layer, progress=False)
    docs = extract_features(model, [t for _, t in TINY_DOCS], tmp_path / "d", side="doc", keep=6, progress=False)
    return queries, docs


def shallow_config(**overrides):
    """A 3-layer tower whose query side leaves out frozen layer 1 (as the default model leaves out 2 and 3)."""
    return tiny_config(encoder_config=tiny_encoder_config(num_hidden_layers=3), query_tuned_layers=1,
                       query_skipped_layers=[1], **overrides)


@pytest.mark.parametrize("config", [tiny_config(query_tuned_layers=1), shallow_config()], ids=["full", "shallow"])
def test_layer_input_features_reproduce_the_query_tower(tmp_path, config):
    model = DiPairModel(config)
    assert query_feature_layer(model) == 1 and len(model.encoders) == 2
    examples = _examples()
    queries, _ = _stores(model, tmp_path, examples)
    texts = [e.query for e in examples]
    with torch.no_grad():
        vectors, mask = query_vectors(model, queries, queries.rows(texts), torch.device("cpu"))
        reference = model.encode_queries(model.tokenize(texts, max_length=model.config.query_max_length))
    assert torch.equal(mask, reference.mask)
    assert torch.allclose(vectors, reference.vectors, atol=2e-2)  # fp16-stored hidden states


def train_two_epochs(model, tmp_path, stores):
    """Two cached stage-1 epochs of a tiny tuned model; (weights before, last checkpoint's weights, and what
    resuming needs: train, val, queries, docs, config)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = _examples()
    train, val = split_validation(examples, 0.25, 0)
    queries, docs = stores(model, tmp_path, examples)
    config = CachedStage1Config(epochs=2, lr=1e-2, encoder_lr=1e-2, queries_per_step=2, patience=5,
                                warmup_steps=1, progress=False)
    summary = train_stage1_cached(model, train, val, queries, docs, dict(TINY_DOCS), config, tmp_path / "out")
    assert [r["epoch"] for r in summary["history"]] == [0, 1, 2]
    last = torch.load(tmp_path / "out" / "stage1-cached.pt", weights_only=True)["model"]
    return before, last, (train, val, queries, docs, config)


def test_only_the_tuned_layers_train_and_ship_as_a_delta(tmp_path):
    model = DiPairModel(tiny_config(query_tuned_layers=1))
    before, last, (train, val, queries, docs, config) = train_two_epochs(model, tmp_path, _stores)
    tuned = model.tuned_layer_prefixes()
    assert tuned == ("encoders.0.encoder.layer.1.",)
    for name, value in before.items():
        if name.startswith("encoders.") and not name.startswith(tuned):
            assert torch.equal(value, model.state_dict()[name]), f"{name} is frozen but changed"
    changed = [n for n in last if n.startswith(tuned) and not torch.equal(last[n], before[n])]
    assert changed, "the tuned query layer did not train"

    saved = model.save_pretrained(tmp_path / "model", save_encoder=False)
    from safetensors import safe_open

    with safe_open(str(saved / WEIGHTS_NAME), framework="pt") as handle:
        encoder_keys = [k for k in handle.keys() if k.startswith("encoders.")]
    assert encoder_keys and all(k.startswith(tuned) for k in encoder_keys)  # only the delta is stored
    loaded = DiPairModel.from_pretrained(saved)
    assert loaded.fingerprint() == model.fingerprint()
    with torch.no_grad():
        q = ["quantum qubits"] * 3
        d = [t for _, t in TINY_DOCS[:3]]
        assert torch.allclose(loaded(q, d), model.eval()(q, d), atol=1e-6)

    longer = CachedStage1Config(**{**config.__dict__, "epochs": 3})
    resumed = train_stage1_cached(DiPairModel(tiny_config(query_tuned_layers=1)), train, val, queries, docs,
                                  dict(TINY_DOCS), longer, tmp_path / "out")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2, 3]  # epochs 1-2 not repeated


def test_a_shallow_tower_trains_on_its_own_states_and_refuses_another_towers(tmp_path):
    model = DiPairModel(shallow_config())
    before, last, (train, val, queries, docs, config) = train_two_epochs(model, tmp_path, _stores)
    assert any(not torch.equal(last[n], before[n]) for n in last if n.startswith(model.tuned_layer_prefixes()))
    other = DiPairModel(shallow_config(seed=1))  # other frozen layers below the tuned one
    with pytest.raises(DiPairError, match="another query tower's states"):
        train_stage1_cached(other, train, val, queries, docs, dict(TINY_DOCS), config, tmp_path / "other")


def test_frozen_features_are_refused_for_a_tuned_model(tmp_path):
    model = DiPairModel(tiny_config(query_tuned_layers=1))
    examples = _examples()
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, [t for _, t in TINY_DOCS], tmp_path / "d", side="doc", keep=6, progress=False)
    with pytest.raises(DiPairError, match="query features hold layer None"):
        train_stage1_cached(model, examples, [], queries, docs, dict(TINY_DOCS),
                            CachedStage1Config(epochs=1, progress=False))
