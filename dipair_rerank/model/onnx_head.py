"""The head (``DiPairModel.score_prefixes``) on ONNX Runtime.

One query's head is ~60 small tensor ops over 100 candidates; PyTorch spends much of that call in per-op
dispatch, ONNX Runtime about a third less (docs/design-decisions.md), with scores equal to 1e-5. Its
threads spin only within a call (``onnx_query.inference_session``), so a shared CPU does not stall it. The graph is
exported once per model (keyed by its fingerprint) beside the query branch's, and once per document dtype: the
fp16 cache's blocks go in as they are stored and are widened inside the graph (ONNX Runtime's cast is vectorised
and writes into its reused arena; numpy's was the larger part of a batch's gather, docs/design-decisions.md).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
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


TASK_PAIRS = 128
"""A large call is cut, at query boundaries, into tasks of at least this many pairs (one query's at depth 100)."""


def query_tasks(query_index: np.ndarray, least: int) -> list[tuple[int, int]] | None:
    """``(first pair, end pair)`` ranges of whole queries with at least ``least`` pairs each (the last may have
    fewer), or None when the pairs are not grouped by query in order."""
    starts = np.flatnonzero(np.diff(query_index)) + 1  # where each query's pairs begin, after the first's
    if (query_index[starts] < query_index[starts - 1]).any():
        return None
    tasks, first = [], 0
    for start in starts.tolist():
        if start - first >= least:
            tasks.append((first, start))
            first = start
    return [*tasks, (first, len(query_index))]


class OnnxHead:
    """Drop-in for ``DiPairModel.score_prefixes`` at inference (``query_index`` required; document blocks in
    float32 or float16).

    Args:
        model: the DiPair model (its head is exported on first use).
        threads: threads for calls over more than ``small_call`` pairs; smaller calls run on one thread (one
            query's head is too small to gain from a second one). A large call whose pairs come grouped by query
            runs as tasks of whole queries, each on one thread, ``threads`` at a time: the graph's ~60 small
            operators then run without a barrier between threads after each, and a thread slowed by another
            process holding its core leaves its tasks to the other (docs/design-decisions.md). Other large
            calls run on an ONNX Runtime session of ``threads`` intra-op threads.
    """

    def __init__(self, model: DiPairModel, *, threads: int = 1, small_call: int = 512):
        self.small_call = small_call
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dipair-head") if threads > 1 else None
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
        large = len(query_index) > self.small_call
        arrays = (q_vectors.float(), q_mask, d_vectors, d_mask, query_index.long())
        feeds = {name: np.ascontiguousarray(array.numpy()) for name, array in zip(INPUTS, arrays)}
        tasks = query_tasks(feeds["query_index"], TASK_PAIRS) if large and self._pool is not None else None
        if tasks is None or len(tasks) < 2:
            return torch.from_numpy(self._sessions[d_vectors.dtype, large].run(None, feeds)[0])
        session = self._sessions[d_vectors.dtype, False]

        def run(pairs: tuple[int, int]) -> np.ndarray:
            start, stop = pairs
            index = feeds["query_index"][start:stop]
            first, end = int(index[0]), int(index[-1]) + 1
            part = {"q_vectors": feeds["q_vectors"][first:end], "q_mask": feeds["q_mask"][first:end],
                    "d_vectors": feeds["d_vectors"][start:stop], "d_mask": feeds["d_mask"][start:stop],
                    "query_index": index - first}
            return session.run(None, part)[0]

        return torch.from_numpy(np.concatenate(list(self._pool.map(run, tasks))))
