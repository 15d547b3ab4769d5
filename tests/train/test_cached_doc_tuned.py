"""A trained document top layer (``doc_tuned_layer``): it starts as the frozen layer, trains over cached inputs
of the top layer at the kept positions only (keys and values frozen), ships as a delta, and resumes."""

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.model.modeling import WEIGHTS_NAME, top_layer_at_prefix
from dipair_rerank.train.cached import CachedStage1Config, doc_feature_layer, doc_vectors, train_stage1_cached
from dipair_rerank.train.features import extract_features
from tests.conftest import TINY_DOCS, tiny_config
from tests.train.test_cached import _examples
from tests.train.test_cached_query_tuned import train_two_epochs

DOC_TEXTS = [t for _, t in TINY_DOCS]


def _stores(model, tmp_path, examples):
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, DOC_TEXTS, tmp_path / "d", side="doc", keep=model.config.doc_max_length,
                            layer=doc_feature_layer(model), progress=False)
    return queries, docs


def test_top_layer_at_prefix_equals_the_full_layer_sliced():
    model = DiPairModel(tiny_config())
    batch = model.tokenize(DOC_TEXTS[:4], max_length=32)
    encoder = model.doc_encoder
    with torch.no_grad():
        outputs = encoder(**batch, output_hidden_states=True)
        kept = top_layer_at_prefix(encoder.encoder.layer[-1], outputs.hidden_states[-2], batch["attention_mask"], 5)
    real = batch["attention_mask"][:, :5].bool()
    assert torch.allclose(kept[real], outputs.last_hidden_state[:, :5][real], atol=1e-5)


def test_an_untrained_document_layer_is_the_frozen_tower():
    frozen, tuned = DiPairModel(tiny_config()), DiPairModel(tiny_config(doc_tuned_layer=True))
    assert doc_feature_layer(tuned) == 1 and doc_feature_layer(frozen) is None
    batch = tuned.tokenize(DOC_TEXTS, max_length=32)
    with torch.no_grad():
        a, b = frozen.encode_documents(batch), tuned.encode_documents(batch)
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.vectors, b.vectors, atol=1e-5)
    assert torch.equal(a.pooled, b.pooled)  # the pooled vector is the frozen tower's


def test_layer_input_features_reproduce_the_document_branch(tmp_path):
    model = DiPairModel(tiny_config(doc_tuned_layer=True))
    with torch.no_grad():
        model.doc_top_layer.output.dense.weight.mul_(3.0)  # make the copy differ from the frozen layer
    _, docs = _stores(model, tmp_path, _examples())
    with torch.no_grad():
        vectors, mask = doc_vectors(model, docs, docs.rows(DOC_TEXTS), torch.device("cpu"))
        sliced, _ = doc_vectors(model, docs, docs.rows(DOC_TEXTS), torch.device("cpu"), slice_size=3)
        reference = model.encode_documents(model.tokenize(DOC_TEXTS, max_length=model.config.doc_max_length))
    assert torch.equal(mask, reference.mask)
    assert torch.allclose(vectors, reference.vectors, atol=3e-2)  # fp16-stored hidden states
    assert torch.allclose(sliced, vectors, atol=1e-5)  # slices trimmed to their own longest document


def test_only_the_document_layer_trains_keys_and_values_frozen_and_ships_as_a_delta(tmp_path):
    model = DiPairModel(tiny_config(doc_tuned_layer=True))
    before, last, (train, val, queries, docs, config) = train_two_epochs(model, tmp_path, _stores)
    for name, value in before.items():
        if name.startswith("encoders."):
            assert torch.equal(value, model.state_dict()[name]), f"{name} is frozen but changed"
    for name in ("doc_top_layer.attention.self.key.weight", "doc_top_layer.attention.self.value.weight"):
        assert torch.equal(last[name], before[name]), f"{name} must stay frozen"
    for name in ("doc_top_layer.attention.self.query.weight", "doc_top_layer.intermediate.dense.weight"):
        assert not torch.equal(last[name], before[name]), f"{name} did not train"

    saved = model.save_pretrained(tmp_path / "model", save_encoder=False)
    from safetensors import safe_open

    with safe_open(str(saved / WEIGHTS_NAME), framework="pt") as handle:
        layer_keys = [k for k in handle.keys() if k.startswith("doc_top_layer.")]
        assert not [k for k in handle.keys() if k.startswith("encoders.")]
        assert layer_keys and all(handle.get_tensor(k).dtype == torch.float16 for k in layer_keys)
    loaded = DiPairModel.from_pretrained(saved)
    assert loaded.fingerprint() == model.fingerprint()
    with torch.no_grad():
        q = ["quantum qubits"] * 3
        assert torch.allclose(loaded(q, DOC_TEXTS[:3]), model.eval()(q, DOC_TEXTS[:3]), atol=1e-6)

    longer = CachedStage1Config(**{**config.__dict__, "epochs": 3})
    resumed = train_stage1_cached(DiPairModel(tiny_config(doc_tuned_layer=True)), train, val, queries, docs,
                                  dict(TINY_DOCS), longer, tmp_path / "out")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2, 3]  # epochs 1-2 not repeated


def test_output_features_are_refused_for_a_document_layer_model(tmp_path):
    model = DiPairModel(tiny_config(doc_tuned_layer=True))
    examples = _examples()
    queries = extract_features(model, [e.query for e in examples], tmp_path / "q", side="query", keep=4,
                               progress=False)
    docs = extract_features(model, DOC_TEXTS, tmp_path / "d", side="doc", keep=6, progress=False)
    with pytest.raises(DiPairError, match="document features hold layer None"):
        train_stage1_cached(model, examples, [], queries, docs, dict(TINY_DOCS),
                            CachedStage1Config(epochs=1, progress=False))
