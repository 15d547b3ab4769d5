"""Channels: first-stage score, stored lexical (SPLADE) terms and pooled cosine, z-scored per query and added to the
head's score with trained weights; stored at index time, read back, refused when missing, computed for texts."""

import numpy as np
import pytest
import torch

from dipair_rerank.cache import PrefixCache
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.indexer import IndexOptions, build_index
from dipair_rerank.model import DiPairModel
from dipair_rerank.model.channels import channel_inputs, zscore_groups
from dipair_rerank.rerank import DiPairReranker
from tests.conftest import TINY_DOCS, tiny_config

CHANNELS = ["first_stage", "lexical", "cosine"]
WEIGHTS = [0.7, 1.3, -0.4]
DOCIDS = [d for d, _ in TINY_DOCS]
TEXTS = [t for _, t in TINY_DOCS]


@pytest.fixture(scope="module")
def channel_model_dir(tiny_splade, tmp_path_factory):
    model = DiPairModel(tiny_config(channels=CHANNELS, lexical_model=str(tiny_splade), full_width_residual=True))
    with torch.no_grad():
        model.channel_weights.copy_(torch.tensor(WEIGHTS))
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "channels", save_encoder=False)


@pytest.fixture(scope="module")
def channel_index(channel_model_dir, tiny_files, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("indexes") / "channels"
    build_index(tiny_files["corpus"], index_dir, model=channel_model_dir,
                options=IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False))
    return index_dir


@pytest.fixture(scope="module")
def reranker(channel_index):
    return DiPairReranker.from_index(channel_index, query_backend="torch")


def test_zscores_per_query_with_missing_and_constant_groups():
    values = np.array([1.0, 2.0, 3.0, 5.0, 5.0, np.nan, 7.0, 4.0])
    z = zscore_groups(values, [3, 2, 2, 1])
    assert z[:3] == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)
    assert (z[3:] == 0).all()  # equal values, a missing value, a lone candidate: 0 (the query's mean)
    assert channel_inputs(["first_stage", "lexical"], [3], {"first_stage": values[:3], "lexical": None}).shape == (3, 2)


def test_saved_model_keeps_its_lexical_model_in_fp16_and_its_fingerprint(channel_model_dir):
    model = DiPairModel.from_pretrained(channel_model_dir)
    assert model.config.lexical_model == "lexical" and (channel_model_dir / "lexical" / "config.json").is_file()
    assert model.lexical.model.dtype == torch.float32
    assert model.channel_weights.tolist() == pytest.approx(WEIGHTS)
    assert model.fingerprint() == DiPairModel.from_pretrained(channel_model_dir).fingerprint()


def test_lexical_terms_are_stored_and_read_back_as_dot_products(reranker, channel_index):
    cache = PrefixCache(IndexLayout(channel_index).cache)
    assert cache.has_lexical and cache.meta["lexical_bytes_per_doc"] > 0
    model = reranker.model
    query = model.lexical.query_states(["quantum qubits"])
    dense = model.lexical.dense(["quantum qubits"])
    some = np.array([5, 17, 2000, 30000])
    assert query.weights(some) == pytest.approx(dense[:, some], abs=1e-5)  # the asked terms only, same numbers
    rows = cache.rows(DOCIDS)
    stored = cache.lexical_dots(rows, np.zeros(len(rows), np.int64), query)
    expected = [float(model.lexical.dense([text])[0] @ dense[0]) for text in TEXTS]
    assert stored == pytest.approx(expected, rel=2e-2, abs=1e-2)  # fp16 weights in the index
    assert cache.verify() == []


def test_score_is_head_plus_weighted_channel_zscores(reranker):
    query, scores = "pet cats and dogs", np.linspace(9.0, 1.0, len(DOCIDS))
    hits = list(zip(DOCIDS, scores.tolist()))
    full = dict(reranker.rerank(query, hits))
    model = reranker.model
    saved = model.channel_weights.detach().clone()
    try:
        with torch.no_grad():
            model.channel_weights.zero_()
        head = dict(reranker.rerank(query, hits))
        encoded = reranker.encode_queries([query])
        lexical = reranker.cache.lexical_dots(reranker.cache.rows(DOCIDS), np.zeros(len(DOCIDS), np.int64),
                                              encoded.lexical)
        d_vectors, _ = model.document_blocks(*reranker.cache.gather(reranker.cache.rows(DOCIDS)))
        cosine = model.pooled_cosines(encoded.pooled, np.zeros(len(DOCIDS), np.int64), d_vectors)
    finally:
        with torch.no_grad():
            model.channel_weights.copy_(saved)
    z = channel_inputs(CHANNELS, [len(DOCIDS)], {"first_stage": scores, "lexical": lexical, "cosine": cosine})
    for i, docid in enumerate(DOCIDS):
        assert full[docid] == pytest.approx(head[docid] + float(z[i] @ np.array(WEIGHTS)), abs=1e-4)


def test_candidates_without_first_stage_scores_leave_that_channel_out(reranker):
    query, scores = "interest rates", np.linspace(1.0, 5.0, len(DOCIDS))
    with_scores = dict(reranker.rerank(query, list(zip(DOCIDS, scores.tolist()))))
    without = dict(reranker.rerank(query, DOCIDS))
    z = zscore_groups(scores, [len(DOCIDS)])
    for i, docid in enumerate(DOCIDS):
        assert with_scores[docid] - without[docid] == pytest.approx(WEIGHTS[0] * z[i], abs=1e-4)


def test_texts_get_the_lexical_channel_on_the_fly(reranker, channel_model_dir):
    query = "plants light"
    cached = dict(reranker.rerank(query, DOCIDS))
    ranked = reranker.rerank_texts(query, TEXTS)
    for r in ranked:
        assert r.score == pytest.approx(cached[DOCIDS[r.index]], rel=1e-2, abs=1e-2)  # fp16 cache vs fp32 texts
    alone = DiPairModel.from_pretrained(channel_model_dir).rank(query, TEXTS)
    assert [r.score for r in alone] == pytest.approx([r.score for r in ranked], abs=1e-4)


def test_an_index_without_lexical_terms_is_refused_in_one_line(channel_model_dir, tiny_index):
    with pytest.raises(DiPairError, match="stores no lexical terms.*rebuild the index") as caught:
        DiPairReranker.from_index(tiny_index, model=channel_model_dir, query_backend="torch")
    assert "\n" not in str(caught.value)


def test_onnx_lexical_queries_equal_torch(reranker):
    from dipair_rerank.model.onnx_lexical import OnnxLexicalQuery

    queries = ["quantum qubits", "a longer query about plants and light", "x"]
    terms = np.arange(0, 30522, 7)
    expected = reranker.model.lexical.query_states(queries).weights(terms)
    got = OnnxLexicalQuery(reranker.model.lexical)(queries)
    assert got.weights(terms) == pytest.approx(expected, abs=1e-4)
    assert got[[2, 0]].weights(terms) == pytest.approx(expected[[2, 0]], abs=1e-4)


def test_onnx_backend_gives_the_torch_scores(channel_index, reranker):
    onnx = DiPairReranker.from_index(channel_index, query_backend="onnx")
    hits = list(zip(DOCIDS, np.linspace(3.0, 1.0, len(DOCIDS)).tolist()))
    expected = dict(reranker.rerank("quantum qubits", hits))
    for docid, score in onnx.rerank("quantum qubits", hits):
        assert score == pytest.approx(expected[docid], abs=1e-3)


def test_channel_models_need_their_inputs():
    with pytest.raises(DiPairError, match="channels"):
        DiPairModel(tiny_config(channels=["bm25"]))
    with pytest.raises(DiPairError, match="lexical_model"):
        DiPairModel(tiny_config(channels=["lexical"]))
    with pytest.raises(DiPairError, match="full_width_residual"):
        DiPairModel(tiny_config(channels=["cosine"]))
