"""``full_width_residual``: the similarity residual is the exact bi-encoder cosine (full-width pooled vectors, carried
as extra block rows), the same through the encoders, the stored features, the ONNX head and the prefix cache."""

import pytest
import torch
import torch.nn.functional as F

from dipair_rerank.indexer import IndexOptions, build_index
from dipair_rerank.model import DiPairModel
from dipair_rerank.model.onnx_head import OnnxHead
from dipair_rerank.rerank import DiPairReranker
from dipair_rerank.train.features import extract_features, project_features
from tests.conftest import TINY_DOCS, tiny_config

TEXTS = [t for _, t in TINY_DOCS]


def _model(**overrides) -> DiPairModel:
    # d_p = 12 and a 32-wide encoder: the pooled vector needs 3 rows, the last one zero-padded
    return DiPairModel(tiny_config(proj_dim=12, full_width_residual=True, head_layers=1, **overrides)).eval()


def _encoded(model: DiPairModel, query: str):
    with torch.inference_mode():
        queries = model.encode_queries(model.tokenize([query], max_length=model.config.query_max_length))
        docs = model.encode_documents(model.tokenize(TEXTS, max_length=model.config.doc_max_length))
    return queries, docs


def test_blocks_carry_the_pooled_vector_in_extra_rows():
    model = _model()
    queries, docs = _encoded(model, "quantum qubits")
    assert model.residual_rows == 3
    assert docs.vectors.shape == (len(TEXTS), model.config.doc_slots + 3, 12)
    assert queries.vectors.shape == (1, model.config.query_slots + 3, 12)
    rows = docs.vectors[:, model.config.doc_slots :].flatten(1)
    assert torch.allclose(rows[:, :32], docs.pooled, atol=1e-3) and not rows[:, 32:].any()  # fp16-rounded rows
    assert DiPairModel(tiny_config()).residual_rows == 0


def test_an_untrained_head_scores_the_bi_encoder_cosine():
    model = _model()
    queries, docs = _encoded(model, "quantum qubits")
    with torch.inference_mode():
        scores = model.score_prefixes(queries.vectors, queries.mask, docs.vectors, docs.mask)
    cosine = F.cosine_similarity(queries.pooled, docs.pooled, dim=-1)  # the bi-encoder's own score
    assert scores.numpy() == pytest.approx((model.similarity_scale.detach().item() * cosine).numpy(), abs=1e-3)


def test_the_option_changes_the_fingerprint_only_when_on():
    plain = DiPairModel(tiny_config(proj_dim=12))
    off = DiPairModel(tiny_config(proj_dim=12, full_width_residual=False))
    assert plain.fingerprint() == off.fingerprint() != _model().fingerprint()


def test_stored_features_reproduce_the_blocks(tmp_path):
    model = _model()
    store = extract_features(model, TEXTS, tmp_path / "doc", side="doc", keep=8, progress=False)
    rows = store.rows(TEXTS)
    with torch.no_grad():
        vectors, mask = project_features(model, "doc", torch.from_numpy(store.prefix[rows]),
                                         torch.from_numpy(store.mask[rows]), torch.from_numpy(store.pooled[rows]),
                                         model.config.doc_prefix)
    _, docs = _encoded(model, "x")
    assert torch.equal(mask, docs.mask) and torch.allclose(vectors, docs.vectors, atol=2e-2)


def test_the_onnx_head_scores_as_torch():
    model = _model(seed=3)
    torch.nn.init.normal_(model.score_out.weight)  # a head that is not zero
    queries, docs = _encoded(model, "pet cats and dogs")
    with torch.inference_mode():
        expected = model.score_prefixes(queries.vectors, queries.mask, docs.vectors, docs.mask)
    scored = OnnxHead(model, threads=1)(queries.vectors, queries.mask, docs.vectors, docs.mask,
                                        torch.zeros(len(TEXTS), dtype=torch.long))
    assert scored.numpy() == pytest.approx(expected.numpy(), abs=1e-5)


def test_the_cache_scores_as_plain_texts(tmp_path, tiny_files):
    model = _model()
    torch.nn.init.normal_(model.score_out.weight)
    folder = model.save_pretrained(tmp_path / "model")
    index = tmp_path / "index"
    build_index(tiny_files["corpus"], index, model=folder,
                options=IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False))
    for backend in ("torch", "onnx"):
        reranker = DiPairReranker.from_index(index, query_backend=backend)
        docids = [d for d, _ in TINY_DOCS]
        cached = {hit.docid: hit.score for hit in reranker.rerank("quantum qubits", docids)}
        for ranked in reranker.rerank_texts("quantum qubits", TEXTS):
            assert ranked.score == pytest.approx(cached[docids[ranked.index]], rel=1e-3, abs=1e-3)
