"""The head (``DiPairModel.score_prefixes``) on ONNX Runtime.

One query's head is ~60 small tensor ops over 100 candidates; PyTorch spends much of that call in per-op
dispatch, ONNX Runtime about a third less (``eval/bench_head.py``), with scores equal to 1e-5. Its
threads spin only within a call (``onnx_query.inference_session``), so a shared CPU does not stall it. The graph is
exported once per model (keyed by its fingerprint) beside the query branch's, and once per document dtype: the
fp16 cache's blocks go in as they are stored and are widened inside the graph (ONNX Runtime's cast is vectorised
and writes into its reused arena; numpy's was the larger part of a batch's gather: eval/RESULTS.md, seventh part).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dipair_rerank.model.modeling import DiPairModel
from dipair_rerank.model.onnx_query import cache_dir, export_graph, inference_session

logger = logging.getLogger(__name__)

INPUTS = ["q_vectors", "q_mask", "d_vectors", "d_mask", "query_index"]
GRAPH_VERSION = 3  # part of the exported file's name: a graph exported by older code is not reused


class _Head(torch.nn.Module):
    def __init__(self, model: DiPairModel):
        super().__init__()
        self.model = model

    def forward(self, q_vectors, q_mask, d_vectors, d_mask, query_index):
        return self.model.score_prefixes(q_vectors, q_mask, d_vectors, d_mask, query_index)


def head_exports(model: DiPairModel) -> bool:
    """Whether the head can be exported: one layer (the default shape). Deeper heads run their first layers as
    torch's fused encoder-layer kernel at inference, which has no ONNX form; they stay on torch."""
    return len(model.head.layers) == 1


def export_head(model: DiPairModel, path: Path, documents: torch.dtype = torch.float32) -> Path:
    """Write the head as ONNX (any number of queries and pairs; document blocks of dtype ``documents``),
    atomically.

    Traced with two queries: ``score_prefixes`` has a shortcut for a single query whose shape test the tracer
    would freeze; the general path gives the same numbers for one query as for many."""
    width, q_slots, d_slots = model.config.proj_dim, model.query_block_slots, model.doc_block_slots
    example = (torch.randn(2, q_slots, width), torch.ones(2, q_slots, dtype=torch.bool),
               torch.randn(3, d_slots, width).to(documents), torch.ones(3, d_slots, dtype=torch.bool),
               torch.tensor([0, 1, 1]))
    queries, pairs = {0: "queries"}, {0: "pairs"}
    return export_graph(_Head(model.eval()), example, path, inputs=INPUTS, outputs=["scores"],
                        dynamic_axes={"q_vectors": queries, "q_mask": queries, "d_vectors": pairs, "d_mask": pairs,
                                      "query_index": pairs, "scores": pairs})


class OnnxHead:
    """Drop-in for ``DiPairModel.score_prefixes`` at inference (``query_index`` required; document blocks in
    float32 or float16).

    Args:
        model: the DiPair model (its head is exported on first use).
        threads: ONNX Runtime intra-op threads for calls over more than ``small_call`` pairs; smaller calls run
            on one thread (one query's head is too small to gain from a second one).
    """

    def __init__(self, model: DiPairModel, *, threads: int = 1, small_call: int = 512):
        self.small_call = small_call
        # (document dtype, large call) -> session; all made here, none in the middle of a query
        self._sessions = {}
        for documents in (torch.float32, torch.float16):
            kind = "" if documents == torch.float32 else "-float16"
            path = cache_dir() / "onnx" / f"head-v{GRAPH_VERSION}-{model.fingerprint()[:20]}{kind}.onnx"
            if not path.is_file():
                logger.info("exporting the head to %s", path)
                export_head(model, path, documents)
            small = inference_session(path, 1)
            self._sessions[documents, False] = small
            self._sessions[documents, True] = inference_session(path, threads) if threads > 1 else small

    def __call__(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, d_vectors: torch.Tensor, d_mask: torch.Tensor,
                 query_index: torch.Tensor) -> torch.Tensor:
        if d_vectors.dtype != torch.float16:
            d_vectors = d_vectors.float()
        session = self._sessions[d_vectors.dtype, len(query_index) > self.small_call]
        arrays = (q_vectors.float(), q_mask, d_vectors, d_mask, query_index.long())
        feeds = {name: np.ascontiguousarray(array.numpy()) for name, array in zip(INPUTS, arrays)}
        return torch.from_numpy(session.run(None, feeds)[0])
