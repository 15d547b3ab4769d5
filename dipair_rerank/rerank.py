"""DiPairReranker: encode the query once, gather the candidates' cached blocks, run the head once.

No document is encoded here: every document representation comes from the index's prefix cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dipair_rerank._memory import HeapGuard
from dipair_rerank.cache import PrefixCache
from dipair_rerank.errors import DiPairError
from dipair_rerank.evaluate.latency import StageTimer
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.model import DiPairModel, Prefix, load_model

logger = logging.getLogger(__name__)

QUERY_BACKENDS = ("auto", "onnx", "onnx-int8", "torch")

SMALL_HEAD_CALL = 512
"""Head calls over at most this many (query, document) pairs run on one torch thread. Why: torch's OpenMP
workers spin-wait for each other, so when another process holds one of the cores a 2-thread call waits for a
descheduled worker (measured: 220 ms instead of 19 ms), while one query's head is too small to gain from a
second thread. Batches above this size use every thread the re-ranker was given."""


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            torch.set_num_threads(previous)


class RankedHit(NamedTuple):
    """A re-ranked document, duck-compatible with Pyserini's hits (``.docid``, ``.score``)."""

    docid: str
    score: float


def hit_docid(hit: Any) -> str:
    """docid of a Pyserini hit (``.docid``), a ``(docid, score)`` pair, or a plain docid string."""
    if isinstance(hit, str):
        return hit
    docid = getattr(hit, "docid", None)
    if docid is not None:
        return str(docid)
    if isinstance(hit, (tuple, list)) and hit:
        return str(hit[0])
    raise TypeError(f"cannot read a docid from {hit!r}: pass hits with .docid, (docid, score) pairs or docids")


class DiPairReranker:
    """Re-rank candidates with a DiPair model and the index's prefix cache.

    Args:
        model: the model whose document branch built ``cache`` (checked by fingerprint).
        cache: the index's prefix cache.
        threads: torch (and ONNX Runtime) intra-op threads (None leaves torch's setting).
        timer: where per-stage timings go (a fresh StageTimer by default).
        query_backend: "onnx" (ONNX Runtime, fastest for single queries), "onnx-int8" (its dynamically
            quantised copy), "torch", or "auto" (onnx when installed).
    """

    def __init__(self, model: DiPairModel, cache: PrefixCache, *, threads: int | None = None,
                 timer: StageTimer | None = None, query_backend: str = "auto"):
        if model.fingerprint() != cache.model_fingerprint:
            raise DiPairError(
                f"the cache at {cache.folder} was built by model {cache.model_fingerprint[:12]}, not by the "
                f"requested model {model.fingerprint()[:12]}; re-index with this model or omit --model"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()
        self.model = model.eval()
        self.cache = cache
        self.timer = timer or StageTimer()
        self._heap = HeapGuard()  # flat RSS over many variable-size batches (see _memory.py)
        slots = torch.arange(model.config.doc_slots)
        self._is_prefix_slot = slots < model.config.doc_prefix
        self._encode_queries = self._query_encoder(query_backend, self.threads)

    def _query_encoder(self, backend: str, threads: int):
        from dipair_rerank.model.onnx_query import OnnxQueryEncoder, onnx_available

        if backend not in QUERY_BACKENDS:
            raise DiPairError(f"unknown query backend {backend!r} (choose {', '.join(QUERY_BACKENDS)})")
        if backend == "torch" or (backend == "auto" and not onnx_available()):
            return self.model.encode_queries
        if not onnx_available():
            raise DiPairError("query backend 'onnx' needs the onnx and onnxruntime packages (pip install onnx onnxruntime)")
        return OnnxQueryEncoder(self.model, threads=threads, int8=backend == "onnx-int8")

    @classmethod
    def from_index(cls, index_dir: str | Path, *, model: DiPairModel | str | Path | None = None,
                   threads: int | None = None, query_backend: str = "auto") -> "DiPairReranker":
        """The re-ranker for ``index_dir``, with the model recorded in its manifest unless ``model`` is given."""
        layout = IndexLayout(Path(index_dir))
        manifest = layout.manifest()
        if not isinstance(model, DiPairModel):
            recorded = manifest["model"]
            if (layout.root / recorded).is_dir():  # a model saved inside the index
                recorded = layout.root / recorded
            model = load_model(model if model is not None else recorded)
        return cls(model, PrefixCache(layout.cache), threads=threads, query_backend=query_backend)

    # ----- the three stages -----------------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str]) -> Prefix:
        with torch.inference_mode(), self.timer.time("query_encoding", len(queries)):
            batch = self.model.tokenize(queries, max_length=self.model.config.query_max_length)
            return self._encode_queries(batch)

    def _gather(self, docids: Sequence[str], queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.timer.time("gather", queries):
            blocks, lengths = self.cache.gather(self.cache.rows(docids))
            vectors = torch.from_numpy(blocks).float()  # a copy: the cache reuses its buffer
            lengths_t = torch.from_numpy(lengths.astype(np.int64))
            mask = (torch.arange(self.model.config.doc_slots) < lengths_t.unsqueeze(1)) | ~self._is_prefix_slot
            return vectors, mask

    def _head(self, queries: Prefix, counts: list[int], d_vectors: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        pairs = d_vectors.shape[0]
        with torch.inference_mode(), self.timer.time("head", len(counts)), \
                torch_threads(1 if pairs <= SMALL_HEAD_CALL else self.threads):
            if len(counts) == 1:
                q_vectors, q_mask = queries.vectors, queries.mask
            else:
                repeat = torch.tensor(counts)
                q_vectors = queries.vectors.repeat_interleave(repeat, dim=0)
                q_mask = queries.mask.repeat_interleave(repeat, dim=0)
            return self.model.score_prefixes(q_vectors, q_mask, d_vectors, d_mask)

    def warm_up(self, depth: int = 100) -> None:
        """Run one throw-away query (first calls allocate and, for ONNX, optimise), then clear the timer."""
        rows = min(depth, len(self.cache))
        lookup = self.cache.docids
        docids = [bytes(lookup.sorted[i]).decode("utf-8") for i in range(rows)]
        self.rerank("warm up", docids)
        self.rerank_batch(["warm up", "again"], [docids[:2], docids[:1]])
        self.timer = StageTimer()

    # ----- public API -----------------------------------------------------------------------------------------
    def rerank_encoded(self, queries: Prefix, hits_per_query: Sequence[Sequence[Any]]) -> list[list[RankedHit]]:
        """Re-rank each query's hits given already-encoded queries (one gather and one head call in all)."""
        docids_per_query = [[hit_docid(hit) for hit in hits] for hits in hits_per_query]
        counts = [len(docids) for docids in docids_per_query]
        if sum(counts) == 0:
            return [[] for _ in counts]
        flat = [docid for docids in docids_per_query for docid in docids]
        d_vectors, d_mask = self._gather(flat, len(counts))
        keep = [i for i, count in enumerate(counts) if count]
        if len(keep) < len(counts):
            queries = Prefix(queries.vectors[keep], queries.mask[keep], queries.pooled[keep])
        scores = self._head(queries, [counts[i] for i in keep], d_vectors, d_mask).tolist()
        del d_vectors, d_mask
        self._heap.check()
        results: list[list[RankedHit]] = []
        offset = 0
        for docids in docids_per_query:
            pairs = zip(docids, scores[offset : offset + len(docids)])
            results.append(sorted((RankedHit(d, s) for d, s in pairs), key=lambda h: (-h.score, h.docid)))
            offset += len(docids)
        return results

    def rerank(self, query: str, hits: Iterable[Any], k: int | None = None) -> list[RankedHit]:
        """Re-rank ``hits`` (Pyserini hits, ``(docid, score)`` pairs or docids) for ``query``; best first."""
        hits = list(hits)
        if not hits:
            return []
        ranked = self.rerank_encoded(self.encode_queries([query]), [hits])[0]
        return ranked[:k] if k is not None else ranked

    def rerank_batch(self, queries: Sequence[str], hits_per_query: Sequence[Iterable[Any]]) -> list[list[RankedHit]]:
        """Re-rank several queries' hits with one query-encoder call and one head call."""
        return self.rerank_encoded(self.encode_queries(queries), [list(h) for h in hits_per_query])
