from types import SimpleNamespace

import pytest
import torch

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.rerank import DiPairReranker, length_groups
from tests.conftest import TINY_DOCS, tiny_config

TEXT = dict(TINY_DOCS)


def test_cache_is_exact(tiny_index, tiny_model):
    """Re-ranking from the cache gives the scores of scoring each pair from raw text (no cache)."""
    reranker = DiPairReranker.from_index(tiny_index, query_backend="onnx")  # fp32 (auto is int8)
    docids = [d for d, _ in TINY_DOCS]
    ranked = reranker.rerank("quantum qubits and pets", [(d, 0.0) for d in docids])
    with torch.inference_mode():
        reference = {d: float(tiny_model(["quantum qubits and pets"], [TEXT[d]])) for d in docids}
    assert len(ranked) == len(docids)
    for hit in ranked:
        assert hit.score == pytest.approx(reference[hit.docid], abs=1e-4)
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)


def test_accepts_pyserini_like_hits_pairs_and_docids(tiny_index):
    reranker = DiPairReranker.from_index(tiny_index)
    as_objects = reranker.rerank("plants", [SimpleNamespace(docid=d, score=1.0) for d in ("d5", "d8", "d1")])
    as_pairs = reranker.rerank("plants", [("d5", 1.0), ("d8", 1.0), ("d1", 1.0)])
    as_ids = reranker.rerank("plants", ["d5", "d8", "d1"], k=2)
    assert as_objects == as_pairs and as_ids == as_pairs[:2]
    assert reranker.rerank("plants", []) == []


def test_batch_equals_one_at_a_time(tiny_index):
    reranker = DiPairReranker.from_index(tiny_index)
    queries = ["plants", "quantum qubits", "inflation"]
    hits = [["d5", "d8"], ["d2", "d6", "d11", "d1"], []]
    batched = reranker.rerank_batch(queries, hits)
    for query, candidates, got in zip(queries, hits, batched):
        single = reranker.rerank(query, candidates)
        assert [h.docid for h in got] == [h.docid for h in single]
        assert [h.score for h in got] == pytest.approx([h.score for h in single], abs=1e-5)


def test_search_time_never_runs_the_document_encoder(tiny_index, monkeypatch):
    reranker = DiPairReranker.from_index(tiny_index)

    def forbidden(*args, **kwargs):
        raise AssertionError("document encoder ran at query time")

    monkeypatch.setattr(reranker.model, "encode_documents", forbidden)
    if not reranker.model.config.shared_encoder:
        monkeypatch.setattr(reranker.model.doc_encoder, "forward", forbidden)
    assert len(reranker.rerank("pets", ["d1", "d3", "d9"])) == 3


def test_unknown_docid_is_an_error(tiny_index):
    with pytest.raises(DiPairError, match="not in the index: nope"):
        DiPairReranker.from_index(tiny_index).rerank("pets", ["d1", "nope"])


def test_refuses_a_cache_built_by_another_model(tiny_index):
    other = DiPairModel(tiny_config(seed=7))
    with pytest.raises(DiPairError, match="was built by model .* not by the requested model"):
        DiPairReranker.from_index(tiny_index, model=other)


def test_an_index_built_with_an_earlier_default_model_asks_to_be_rebuilt(tiny_index, tmp_path):
    import json
    import shutil

    copy = tmp_path / "old-default"
    shutil.copytree(tiny_index, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "model": "default"}))
    with pytest.raises(DiPairError, match="built with an earlier default model .* rebuild it"):
        DiPairReranker.from_index(copy)


def test_timer_records_each_stage(tiny_index):
    reranker = DiPairReranker.from_index(tiny_index)
    reranker.rerank("pets", ["d1", "d3"])
    assert set(reranker.timer.summary()) >= {"query_encoding", "gather", "head", "rerank"}


def test_onnx_query_backend_matches_torch(tiny_index):
    torch_backend = DiPairReranker.from_index(tiny_index, query_backend="torch")
    onnx_backend = DiPairReranker.from_index(tiny_index, query_backend="onnx")
    for query in ("pets", "quantum qubits and entangled particles in a lab"):  # shorter and longer than m
        expected = torch_backend.rerank(query, ["d1", "d2", "d3", "d6"])
        got = onnx_backend.rerank(query, ["d1", "d2", "d3", "d6"])
        assert [h.docid for h in got] == [h.docid for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)


@pytest.fixture(scope="module")
def one_layer_index(tiny_files, tmp_path_factory):
    """The tiny corpus indexed with a one-layer-head model (the default shape: its head runs on ONNX Runtime)."""
    from dipair_rerank.indexer import IndexOptions, build_index

    root = tmp_path_factory.mktemp("one-layer")
    model_dir = DiPairModel(tiny_config(head_layers=1, seed=5)).save_pretrained(root / "model")
    build_index(tiny_files["corpus"], root / "index", model=model_dir,
                options=IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False))
    return root / "index"


def test_onnx_head_reranks_as_the_torch_head(one_layer_index):
    torch_backend = DiPairReranker.from_index(one_layer_index, query_backend="torch")
    onnx_backend = DiPairReranker.from_index(one_layer_index, query_backend="onnx")
    assert onnx_backend._onnx_head is not None and torch_backend._onnx_head is None
    docids = [d for d, _ in TINY_DOCS]
    queries = ["pets", "quantum qubits and entangled particles in a lab"]
    expected = torch_backend.rerank_batch(queries, [docids, docids[:5]])
    got = onnx_backend.rerank_batch(queries, [docids, docids[:5]])
    for want, have in zip(expected, got):
        assert [h.docid for h in have] == [h.docid for h in want]
        assert [h.score for h in have] == pytest.approx([h.score for h in want], abs=1e-4)


def test_exporting_the_query_branch_leaves_the_model_in_eval_mode(tiny_model, tmp_path):
    from dipair_rerank.model.onnx_query import export_query_branch

    tiny_model.eval()
    export_query_branch(tiny_model, tmp_path / "query.onnx")
    assert not tiny_model.training and not any(m.training for m in tiny_model.modules())


def test_query_graph_is_fused_with_the_traced_graphs_outputs(tiny_model, tmp_path):
    import numpy as np
    import onnx

    from dipair_rerank.model.onnx_query import export_query_branch, inference_session

    fused = export_query_branch(tiny_model, tmp_path / "fused.onnx")
    traced = export_query_branch(tiny_model, tmp_path / "traced.onnx", fuse=False)
    assert "Attention" in {node.op_type for node in onnx.load(str(fused)).graph.node}
    assert "Attention" not in {node.op_type for node in onnx.load(str(traced)).graph.node}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx", "traced.onnx"]  # no temporary left
    ids = np.array([[101, 2054, 2003, 1037, 23924, 2102, 102], [101, 4013, 102, 0, 0, 0, 0]])
    feed = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    for got, want in zip(inference_session(fused, 1).run(None, feed), inference_session(traced, 1).run(None, feed)):
        assert got == pytest.approx(want, abs=1e-4)
    assert not tiny_model.query_encoder.config._attn_implementation == "eager"  # restored after tracing


def test_a_query_graph_the_optimiser_fails_on_is_kept_as_traced(tiny_model, tmp_path, monkeypatch):
    import onnx
    import onnxruntime.transformers.optimizer as optimizer

    from dipair_rerank.model.onnx_query import export_query_branch

    def broken(*args, **kwargs):
        raise ValueError("unknown pattern")

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    path = export_query_branch(tiny_model, tmp_path / "query.onnx")
    assert "Attention" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert [p.name for p in tmp_path.iterdir()] == ["query.onnx"]


def test_int8_query_backend_runs_a_quantised_graph_close_to_fp32(tiny_index):
    import onnx

    fp32 = DiPairReranker.from_index(tiny_index, query_backend="onnx")
    int8 = DiPairReranker.from_index(tiny_index, query_backend="onnx-int8")
    graph = onnx.load(str(int8._encode_queries.path)).graph
    assert "MatMulNBits" in {node.op_type for node in graph.node}
    assert DiPairReranker.from_index(tiny_index)._encode_queries.path == int8._encode_queries.path  # the default
    docids = [d for d, _ in TINY_DOCS]
    expected = {h.docid: h.score for h in fp32.rerank("quantum qubits", docids)}
    got = {h.docid: h.score for h in int8.rerank("quantum qubits", docids)}
    assert got.keys() == expected.keys()
    spread = max(expected.values()) - min(expected.values())
    assert max(abs(got[d] - expected[d]) for d in got) < 0.05 * spread  # quantised: close, not equal


def test_unknown_query_backend(tiny_index):
    with pytest.raises(DiPairError, match="unknown query backend"):
        DiPairReranker.from_index(tiny_index, query_backend="tpu")


def test_reranks_real_pyserini_hits(tiny_index):
    from dipair_rerank import ensure_jvm

    ensure_jvm()
    from pyserini.search.lucene import LuceneSearcher

    hits = LuceneSearcher(str((tiny_index / "lucene").resolve())).search("quantum qubit", k=5)
    ranked = DiPairReranker.from_index(tiny_index).rerank("quantum qubit", hits)
    assert sorted(h.docid for h in ranked) == sorted(h.docid for h in hits) and len(ranked) >= 2


def test_small_head_calls_run_on_one_thread_and_restore_the_setting(tiny_index, monkeypatch):
    import dipair_rerank.rerank as rerank_module

    reranker = DiPairReranker.from_index(tiny_index, threads=2, query_backend="torch")
    seen = []
    original = reranker.model.score_prefixes

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(reranker.model, "score_prefixes", spy)
    docids = [d for d, _ in TINY_DOCS]
    reranker.rerank("quantum qubits", docids)
    monkeypatch.setattr(rerank_module, "SMALL_HEAD_CALL", 4)  # now a large call: every thread
    reranker.rerank("quantum qubits", docids)
    assert seen == [1, 2] and torch.get_num_threads() == 2


def test_query_token_ids_equal_the_transformers_tokenizer(tiny_model):
    """The re-ranker tokenises queries with a copy of the Rust tokenizer: the same ids, truncation included, and the
    model's own tokenizer keeps its settings."""
    from dipair_rerank.rerank import padded_batch, query_token_ids

    tokenizer, limit = tiny_model.tokenizer, tiny_model.config.query_max_length
    queries = ["quantum qubits", "", "Überraschung! naïve café — 42 %", " ".join(["very long query"] * 40)]
    ids = query_token_ids(tokenizer, limit)(queries)
    assert ids == tokenizer(queries, truncation=True, max_length=limit)["input_ids"] and len(ids[-1]) == limit
    reference = tokenizer(queries, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    batch = padded_batch(ids, tokenizer.pad_token_id)
    assert all(torch.equal(batch[key], reference[key]) for key in ("input_ids", "attention_mask"))
    assert tokenizer(queries[-1:])["input_ids"][0] != ids[-1]  # untruncated by default, as before


def test_batches_run_on_their_own_thread_count_with_the_same_scores(tiny_index):
    shared = DiPairReranker.from_index(tiny_index, threads=2, query_backend="onnx")
    split = DiPairReranker.from_index(tiny_index, threads=2, batch_threads=1, query_backend="onnx")
    encoder = split._encode_queries
    assert shared._encode_queries.batch_session is shared._encode_queries.session
    assert encoder.batch_session is not encoder.session
    assert encoder.session.get_session_options().intra_op_num_threads == 2
    assert encoder.batch_session.get_session_options().intra_op_num_threads == 1
    queries, docids = ["quantum qubits", "pet cats and dogs"], [["d1", "d2", "d6"], ["d1", "d3"]]
    for one, other in ((shared.rerank_batch(queries, docids), split.rerank_batch(queries, docids)),
                       ([shared.rerank(queries[0], docids[0])], [split.rerank(queries[0], docids[0])])):
        assert [[h.score for h in hits] for hits in one] == [pytest.approx([h.score for h in hits], abs=1e-5)
                                                            for hits in other]


def test_a_batch_is_encoded_beside_the_caller_and_a_lone_query_at_once(tiny_index):
    import threading

    reranker = DiPairReranker.from_index(tiny_index, threads=2, query_backend="onnx")
    threads: list[str] = []
    encode = reranker.encode_queries

    def recording(queries):
        threads.append(threading.current_thread().name)
        return encode(queries)

    reranker.encode_queries = recording
    batch = ["quantum qubits", "pet cats and dogs", "photosynthesis in plants"]
    assert torch.equal(reranker.encode_queries_beside(batch).result().vectors, encode(batch).vectors)
    lone = reranker.encode_queries_beside(["quantum qubits"])
    assert lone.done() and threads[0].startswith("dipair-encode") and threads[1] == threading.current_thread().name
    one_thread = DiPairReranker.from_index(tiny_index, threads=2, batch_threads=1, query_backend="onnx")
    assert one_thread._beside is None and one_thread.encode_queries_beside(batch).done()


# A batch of queries is encoded in groups of similar length (or of equal length, side by side on one-thread
# sessions): same scores as one query at a time, in order.

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
