"""The one-layer head on ONNX Runtime gives the torch head's scores, for one query and for many, in one call or in
tasks of whole queries; deeper heads stay on torch."""

import numpy as np
import pytest
import torch

from dipair_rerank.model import DiPairModel
from dipair_rerank.model.onnx_head import OnnxHead, export_head, head_exports, query_tasks
from tests.conftest import tiny_config


def _blocks(model: DiPairModel, queries: int, pairs: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    q_vectors = torch.randn(queries, config.query_slots, config.proj_dim, generator=generator)
    d_vectors = torch.randn(pairs, config.doc_slots, config.proj_dim, generator=generator)
    q_mask = torch.ones(queries, config.query_slots, dtype=torch.bool)
    q_mask[:, 2:-1] = torch.rand(queries, config.query_slots - 3, generator=generator) > 0.4  # some short queries
    d_mask = torch.ones(pairs, config.doc_slots, dtype=torch.bool)
    d_mask[:, 1:-1] = torch.rand(pairs, config.doc_slots - 2, generator=generator) > 0.4
    query_index = torch.randint(queries, (pairs,), generator=generator).sort().values
    return q_vectors, q_mask, d_vectors, d_mask, query_index


@pytest.mark.parametrize("queries", [1, 5])
def test_onnx_head_scores_equal_the_torch_head(queries):
    model = DiPairModel(tiny_config(head_layers=1, seed=3)).eval()
    blocks = _blocks(model, queries, pairs=40)
    onnx_head = OnnxHead(model, threads=2, small_call=16)  # 40 pairs: the two-thread session
    with torch.inference_mode():
        expected = model.score_prefixes(*blocks)
    assert onnx_head(*blocks).numpy() == pytest.approx(expected.numpy(), abs=1e-5)
    assert OnnxHead(model, threads=1)(*blocks).numpy() == pytest.approx(expected.numpy(), abs=1e-5)


def test_exporting_the_head_leaves_the_model_in_eval_mode(tmp_path):
    model = DiPairModel(tiny_config(head_layers=1)).eval()
    export_head(model, tmp_path / "head.onnx")
    assert (tmp_path / "head.onnx").is_file() and not list(tmp_path.glob(".*tmp"))
    assert not any(module.training for module in model.modules())


def test_only_one_layer_heads_are_exported():
    assert head_exports(DiPairModel(tiny_config(head_layers=1)))
    assert not head_exports(DiPairModel(tiny_config(head_layers=2)))


def test_fp16_document_blocks_are_widened_in_the_graph():
    """The fp16 cache's blocks go in as stored: the same scores as their float32 copies."""
    model = DiPairModel(tiny_config(head_layers=1, seed=4)).eval()
    q_vectors, q_mask, d_vectors, d_mask, query_index = _blocks(model, 3, pairs=30)
    head = OnnxHead(model, threads=2, small_call=16)
    stored = d_vectors.half()
    with torch.inference_mode():
        expected = model.score_prefixes(q_vectors, q_mask, stored.float(), d_mask, query_index)
    for call in (head, OnnxHead(model, threads=1)):  # the two-thread session and the one-thread one
        scores = call(q_vectors, q_mask, stored, d_mask, query_index)
        assert scores.numpy() == pytest.approx(expected.numpy(), abs=1e-5)


def test_query_tasks_cut_at_query_boundaries_with_at_least_the_least_pairs():
    index = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 4])  # query 2 has no pairs
    assert query_tasks(index, 3) == [(0, 3), (3, 9), (9, 10)]
    assert query_tasks(index, 100) == [(0, 10)]
    assert query_tasks(np.array([0, 1, 0]), 1) is None  # not grouped in order: one call instead


@pytest.mark.parametrize("order", ["grouped", "shuffled"])
def test_a_large_call_in_tasks_of_whole_queries_gives_the_torch_heads_scores(order):
    """12 queries, 600 pairs (over small_call): in tasks of >= 128 pairs on the pool when grouped by query (one
    query without pairs), on the two-thread session when not."""
    model = DiPairModel(tiny_config(head_layers=1, seed=5)).eval()
    q_vectors, q_mask, d_vectors, d_mask, query_index = _blocks(model, 12, pairs=600, seed=1)
    query_index[query_index == 4] = 5
    if order == "shuffled":
        query_index = query_index[torch.randperm(600, generator=torch.Generator().manual_seed(2))]
    head = OnnxHead(model, threads=2, small_call=512)
    assert (query_tasks(query_index.numpy(), 128) is None) == (order == "shuffled")
    scores = head(q_vectors, q_mask, d_vectors.half().float(), d_mask, query_index)
    with torch.inference_mode():
        expected = model.score_prefixes(q_vectors, q_mask, d_vectors.half().float(), d_mask, query_index)
    assert scores.numpy() == pytest.approx(expected.numpy(), abs=1e-5)
