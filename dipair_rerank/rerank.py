"""DiPairReranker: encode the query once, gather the candidates' cached blocks, run the head once.

No indexed document is encoded here: every indexed document's representation comes from the index's prefix cache.
Plain texts (``rerank_texts``) go through the document branch on the fly, as the indexer would encode them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from dipair_rerank._memory import HeapGuard
from dipair_rerank.cache import PrefixCache
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.model import DiPairModel, Prefix, load_model
from dipair_rerank.model.channels import FIRST_STAGE, LEXICAL
from dipair_rerank.model.default import DEFAULT_MODEL
from dipair_rerank.model.lexical import lexical_dots
from dipair_rerank.model.tokens import padded_batch, query_token_ids
from dipair_rerank.texts import RankedText, check_texts, rank_texts, text_inputs
from dipair_rerank.timing import StageTimer

logger = logging.getLogger(__name__)

QUERY_BACKENDS = ("auto", "onnx", "onnx-int8", "torch")

SMALL_HEAD_CALL = 512
"""Head calls over at most this many (query, document) pairs run on one thread (torch's or ONNX Runtime's).
Why: torch's OpenMP workers spin-wait for each other, so when another process holds one of the cores a 2-thread
call waits for a descheduled worker (measured: 220 ms instead of 19 ms), while one query's head is too small to
gain from a second thread. Batches above this size use every thread the re-ranker was given."""


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


QUERY_GROUP_RATIO = 1.5
"""A batch of queries is encoded in groups of similar token length, the longest in a group at most 1.5x the
shortest, each padded only to its own longest. Why: encoding cost grows with padded tokens, and DL19's queries run
from 6 to 15 tokens; 16 of them took 97 ms padded to the longest, 59 ms in two groups (one call's overhead is far
smaller than the padding it saves). Where the encoder runs groups side by side on one thread each
(``OnnxQueryEncoder.encode_many``), the groups are of equal length instead: no padding, and the calls overlap."""


WARM_UP_BATCH = 16  # queries in warm_up's batch: a service's batches at concurrency 16 hold ~10 (eval/bench_serve.py)


class RankedHit(NamedTuple):
    """A re-ranked document, duck-compatible with Pyserini's hits (``.docid``, ``.score``)."""

    docid: str
    score: float


def length_groups(lengths: Sequence[int], ratio: float) -> list[list[int]]:
    """Positions grouped by length, shortest first, each group's longest at most ``ratio`` x its shortest; a single
    group keeps the input order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(groups[0])] if len(groups) == 1 else groups


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


def hit_scores(hits: Sequence[Any]) -> list[float] | None:
    """The first-stage scores of hits (``.score`` or a pair's second item), or None when any hit has none
    (plain docids): the first-stage channel is then left out for that query."""
    scores = []
    for hit in hits:
        score = getattr(hit, "score", None)
        if score is None and isinstance(hit, (tuple, list)) and len(hit) > 1:
            score = hit[1]
        if score is None or isinstance(hit, str):
            return None
        scores.append(float(score))
    return scores


class DiPairReranker:
    """Re-rank candidates with a DiPair model and the index's prefix cache.

    Args:
        model: the model whose document branch built ``cache`` (checked by fingerprint).
        cache: the index's prefix cache.
        threads: torch (and ONNX Runtime) intra-op threads (None leaves torch's setting).
        batch_threads: threads of calls over several queries' candidates (default ``threads``). A service with
            several worker processes gives each its share of the cores for batches, while a lone request, most
            likely alone on the machine, may use them all (``serve --workers``).
        timer: where per-stage timings go (a fresh StageTimer by default).
        query_backend: where the query-time graphs run: "onnx" (ONNX Runtime fp32, for the query branch and the
            head), "onnx-int8" (the same with the query branch's weights in int8 blocks, ~20% faster per query,
            rankings within Kendall tau 0.99 of fp32), "torch", or "auto" (onnx-int8 when its quantiser is
            installed, else onnx when ONNX Runtime is, else torch).
        heap_slack_mb: how far the C heap may grow past its working size before it is trimmed (``_memory.py``;
            None: $DIPAIR_HEAP_SLACK_MB or 64). A long-running service sets it lower for a tighter RSS band.
    """

    def __init__(self, model: DiPairModel, cache: PrefixCache, *, threads: int | None = None,
                 batch_threads: int | None = None, timer: StageTimer | None = None, query_backend: str = "auto",
                 heap_slack_mb: float | None = None):
        if LEXICAL in model.config.channels and not cache.has_lexical:
            raise DiPairError(f"the cache at {cache.folder} stores no lexical terms, which this model's lexical "
                              "channel reads; rebuild the index with this model ('dipair-rerank index --model ...')")
        if model.fingerprint() != cache.model_fingerprint:
            raise DiPairError(
                f"the cache at {cache.folder} was built by model {cache.model_fingerprint[:12]}, not by the "
                f"requested model {model.fingerprint()[:12]}; re-index with this model or omit --model"
            )
        self.threads = threads or torch.get_num_threads()
        self.batch_threads = batch_threads or self.threads
        if threads is not None or batch_threads is not None:
            torch.set_num_threads(self.batch_threads)  # torch runs the big calls: texts' document branch
        self.model = model.eval()
        self.cache = cache
        self.timer = timer or StageTimer()
        self._heap = HeapGuard(heap_slack_mb)  # flat RSS over many variable-size batches (see _memory.py)
        self._encode_queries, self._onnx_head, self._lexical_queries = self._query_graphs(query_backend)
        # encodes a batch while the caller searches (encode_queries_beside); only where batches run as tasks
        self._beside = (ThreadPoolExecutor(1, thread_name_prefix="dipair-encode")
                        if getattr(self._encode_queries, "runs_tasks", False) else None)
        self._lexical_side = (ThreadPoolExecutor(1, thread_name_prefix="dipair-lexical")
                              if self._lexical_queries is not None and self.threads > 1 else None)
        # a view of the parameter, not a copy: the scores follow the model's weights
        self._channel_weights = model.channel_weights.detach().numpy() if model.channel_weights is not None else None
        self._query_token_ids = query_token_ids(model.tokenizer, model.config.query_max_length)
        self._pad_id = model.tokenizer.pad_token_id or 0

    def close(self) -> None:
        """End the side threads (a service replacing this re-ranker on reload); the model and the cache's maps go
        with the last reference."""
        for pool in (self._beside, self._lexical_side):
            if pool is not None:
                pool.shutdown(wait=True)

    def _query_graphs(self, backend: str):
        """(query encoder, ONNX head or None for torch's, lexical query encoder or None) for ``backend``."""
        from dipair_rerank.model.onnx_head import OnnxHead, head_exports
        from dipair_rerank.model.onnx_query import OnnxQueryEncoder, int8_available, onnx_available

        if backend not in QUERY_BACKENDS:
            raise DiPairError(f"unknown query backend {backend!r} (choose {', '.join(QUERY_BACKENDS)})")
        if backend == "auto":
            backend = "torch" if not onnx_available() else "onnx-int8" if int8_available() else "onnx"
        lexical = self.model.lexical
        if backend == "torch":
            return self.model.encode_queries, None, None if lexical is None else lexical.query_states
        if not onnx_available():
            raise DiPairError("query backend 'onnx' needs the onnx and onnxruntime packages (pip install onnx onnxruntime)")
        head = None
        if head_exports(self.model):  # calls over more than SMALL_HEAD_CALL pairs are batches
            head = OnnxHead(self.model, threads=self.batch_threads, small_call=SMALL_HEAD_CALL)
        if lexical is not None:
            from dipair_rerank.model.onnx_lexical import OnnxLexicalQuery

            lexical = OnnxLexicalQuery(lexical)
        return OnnxQueryEncoder(self.model, threads=self.threads, batch_threads=self.batch_threads,
                                int8=backend == "onnx-int8"), head, lexical

    @classmethod
    def from_index(cls, index_dir: str | Path, *, model: DiPairModel | str | Path | None = None,
                   threads: int | None = None, batch_threads: int | None = None, query_backend: str = "auto",
                   heap_slack_mb: float | None = None) -> DiPairReranker:
        """The re-ranker for ``index_dir``, with the model recorded in its manifest unless ``model`` is given."""
        layout = IndexLayout(Path(index_dir))
        manifest = layout.manifest()
        if not isinstance(model, DiPairModel):
            recorded = manifest["model"]
            if (layout.root / recorded).is_dir():  # a model saved inside the index
                recorded = layout.root / recorded
            model = load_model(model if model is not None else recorded)
            cache_model = manifest.get("model_fingerprint")
            if recorded == DEFAULT_MODEL and cache_model and cache_model != model.fingerprint():
                raise DiPairError(f"{index_dir} was built with an earlier default model ({cache_model[:12]}); "
                                  f"rebuild it with 'dipair-rerank index' to use this version's default model")
        return cls(model, PrefixCache(layout.cache), threads=threads, batch_threads=batch_threads,
                   query_backend=query_backend, heap_slack_mb=heap_slack_mb)

    # ----- the three stages -----------------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str]) -> Prefix:
        """Kept query vectors, in order; a batch is encoded in groups of similar length (QUERY_GROUP_RATIO), or of
        equal length where the encoder runs groups side by side (``OnnxQueryEncoder.encode_many``)."""
        with torch.inference_mode(), self.timer.time("query_encoding", len(queries)):
            ids = self._query_token_ids(list(queries))
            tasks = getattr(self._encode_queries, "runs_tasks", False)
            groups = length_groups([len(row) for row in ids], 1.0 if tasks else QUERY_GROUP_RATIO)
            batches = [padded_batch([ids[i] for i in group], self._pad_id) for group in groups]
            parts = self._encode_queries.encode_many(batches) if tasks else list(map(self._encode_queries, batches))
            if len(parts) == 1:
                encoded = parts[0]
            else:
                order = torch.tensor([i for group in groups for i in group]).argsort()
                encoded = Prefix(*(torch.cat(field)[order] for field in list(zip(*parts))[:3]))
            if self._lexical_queries is not None:
                encoded = encoded._replace(lexical=self._lexical_queries(list(queries)))
            return encoded

    def encode_queries_beside(self, queries: Sequence[str]) -> Future[Prefix]:
        """``encode_queries`` on a side thread, for a caller with work of its own meanwhile: a first stage's batch
        search, whose hits Python then reads on one core while the other would idle (docs/design-decisions.md).
        Only batches whose encoder runs tasks (several batch threads) go beside; otherwise, as for a lone query,
        this encodes now and returns the finished result."""
        if self._beside is not None and len(queries) > 1:
            return self._beside.submit(self.encode_queries, list(queries))
        done: Future[Prefix] = Future()
        done.set_result(self.encode_queries(queries))
        return done

    def _gather(self, docids: Sequence[str], queries: Prefix, counts: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | Future | None]:
        """The candidates' cached blocks and masks, and their lexical dot products with their queries (None for a
        model without a lexical channel). For a call whose head runs on one thread, the dot products are computed
        on a side thread while the head runs (a Future): the second core is otherwise idle then. They start after
        the blocks are gathered: reading stored terms is numpy calls that hold the GIL, which would slow this
        thread's gather, while the head runs outside it (docs/design-decisions.md)."""
        with self.timer.time("gather", len(counts)):
            rows = self.cache.rows(docids)
            blocks, lengths = self.cache.gather(rows)
            d_vectors, d_mask = self.model.document_blocks(blocks, lengths, widen=self._onnx_head is None)
            lexical = None
            if queries.lexical is not None:
                args = (rows, np.repeat(np.arange(len(counts)), counts), queries.lexical)
                if self._lexical_side is not None and len(rows) <= SMALL_HEAD_CALL:
                    lexical = self._lexical_side.submit(self.cache.lexical_dots, *args)
                else:
                    lexical = self.cache.lexical_dots(*args)
            return d_vectors, d_mask, lexical

    def _head(self, queries: Prefix, counts: list[int], d_vectors: torch.Tensor, d_mask: torch.Tensor, *,
              first_stage: np.ndarray | None, lexical: np.ndarray | Future | None) -> list[float]:
        """The head's scores plus the model's channels (both timed as the "head" stage)."""
        pairs = d_vectors.shape[0]
        query_index = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
        with self.timer.time("head", len(counts)):
            if self._onnx_head is not None:
                scores = self._onnx_head(queries.vectors, queries.mask, d_vectors, d_mask, query_index)
            else:
                with torch.inference_mode(), torch_threads(1 if pairs <= SMALL_HEAD_CALL else self.batch_threads):
                    scores = self.model.score_prefixes(queries.vectors, queries.mask, d_vectors, d_mask, query_index)
            if isinstance(lexical, Future):  # computed beside the head
                lexical = lexical.result()
            z = self.model.channel_z(counts, queries, d_vectors, first_stage=first_stage, lexical=lexical)
            if z is None:
                return scores.tolist()
            return (scores.numpy().astype(np.float64) + z @ self._channel_weights).tolist()

    def warm_up(self, depth: int = 100) -> None:
        """Run one throw-away query (first calls allocate and, for ONNX, optimise), clear the timer, and take every
        object alive now out of the garbage collector's full passes (``gc.freeze``, after one last collection).

        Why the freeze: torch, transformers, ONNX and the JVM bridge leave ~0.5M tracked objects, and a full pass
        over them took ~0.3 s; batches of re-ranked hits trigger one every few hundred queries (a run over many
        topics, a busy service). Frozen, such a pass reads only what was made since (docs/design-decisions.md)."""
        rows = min(depth, len(self.cache))
        lookup = self.cache.docids
        docids = [bytes(lookup.sorted[i]).decode("utf-8") for i in range(rows)]
        self.rerank("warm up", docids)
        self.rerank_batch(["warm up", "again"], [docids[:2], docids[:1]])
        # a batch as a busy service runs them: the batch sessions' first call allocates their working memory
        self.rerank_batch([f"warm up {i}" for i in range(WARM_UP_BATCH)], [docids] * WARM_UP_BATCH)
        self.timer = StageTimer()
        gc.collect()
        gc.freeze()

    # ----- public API -----------------------------------------------------------------------------------------
    def _score(self, queries: Prefix, counts: list[int], d_vectors: torch.Tensor, d_mask: torch.Tensor, *,
               first_stage: np.ndarray | None = None, lexical: np.ndarray | None = None) -> list[list[float]]:
        """One head call over every query's blocks (this call holds the only reference to them, so their memory
        is free when the heap is checked), plus the model's channels; scores split back per query."""
        keep = [i for i, count in enumerate(counts) if count]
        if len(keep) < len(counts):
            queries = Prefix(queries.vectors[keep], queries.mask[keep], queries.pooled[keep],
                             None if queries.lexical is None else queries.lexical[keep])
        kept_counts = [counts[i] for i in keep]
        scores = self._head(queries, kept_counts, d_vectors, d_mask, first_stage=first_stage, lexical=lexical)
        del d_vectors, d_mask
        self._heap.check()
        offsets = np.cumsum([0, *counts]).tolist()
        return [scores[start:end] for start, end in zip(offsets, offsets[1:])]

    def score_encoded(self, queries: Prefix, docids_per_query: Sequence[Sequence[str]],
                      first_stage: Sequence[Sequence[float] | None] | None = None) -> list[list[float]]:
        """Each query's scores for its docids, in the order given (one gather and one head call in all);
        ``first_stage``: the candidates' own scores per query, for a model with that channel (a query's None, or
        None for all, leaves the channel out for those queries)."""
        counts = [len(docids) for docids in docids_per_query]
        if sum(counts) == 0:
            return [[] for _ in counts]
        flat = [docid for docids in docids_per_query for docid in docids]
        self._heap.mark()
        d_vectors, d_mask, lexical = self._gather(flat, queries, counts)
        return self._score(queries, counts, d_vectors, d_mask, lexical=lexical,
                           first_stage=self._first_stage(first_stage, counts))

    def _first_stage(self, scores: Sequence[Sequence[float] | None] | None, counts: list[int]) -> np.ndarray | None:
        """The first-stage channel's raw values (NaN for queries without scores), or None when unused."""
        if FIRST_STAGE not in self.model.config.channels or scores is None:
            return None
        return np.concatenate([np.asarray(row, np.float64) if row is not None else np.full(count, np.nan)
                               for row, count in zip(scores, counts, strict=True)]) if counts else None

    def score_texts(self, queries: Sequence[str], texts_per_query: Sequence[Sequence[str]], *,
                    batch_size: int = 32) -> list[list[float]]:
        """Each query's scores for its plain texts, in the order given: one query-encoder call, one pass of the
        document branch over all the texts (length-sorted batches of ``batch_size``) and one head call."""
        texts_per_query = [check_texts(texts) for texts in texts_per_query]
        self._heap.mark()
        encoded = self.encode_queries(queries)
        flat = [text for texts in texts_per_query for text in texts]
        counts = [len(texts) for texts in texts_per_query]
        with torch.inference_mode(), self.timer.time("document_encoding", len(queries)):
            d_vectors, d_mask, terms = text_inputs(self.model, flat, batch_size=batch_size)
            lexical = None if terms is None else lexical_dots(encoded.lexical, counts, terms)
        return self._score(encoded, counts, d_vectors, d_mask, lexical=lexical)

    def rerank_encoded(self, queries: Prefix, hits_per_query: Sequence[Sequence[Any]]) -> list[list[RankedHit]]:
        """Re-rank each query's hits given already-encoded queries (one gather and one head call in all)."""
        docids_per_query = [[hit_docid(hit) for hit in hits] for hits in hits_per_query]
        first_stage = None
        if FIRST_STAGE in self.model.config.channels:
            first_stage = [hit_scores(hits) for hits in hits_per_query]
        scores = self.score_encoded(queries, docids_per_query, first_stage)
        return [[RankedHit(docid, -negated) for negated, docid in sorted(zip(map(float.__neg__, row), docids))]
                for docids, row in zip(docids_per_query, scores)]  # best first, ties by docid; plain tuples sort in C

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

    def rerank_texts(self, query: str, texts: Iterable[str], k: int | None = None, *, batch_size: int = 32
                     ) -> list[RankedText]:
        """Rank plain ``texts`` that are in no index (a RAG retriever's candidates), best first, as
        ``[RankedText(index, score, text)]``: the document branch encodes them here, exactly as the indexer
        would, so a text scores as it does from an fp16 cache."""
        texts = check_texts(texts)
        return rank_texts(texts, self.score_texts([query], [texts], batch_size=batch_size)[0], k)
