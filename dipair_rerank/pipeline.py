"""DiPairSearcher: a first stage followed by DiPair re-ranking, with Pyserini's ``search``/``batch_search``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run
from dipair_rerank.timing import StageTimer
from dipair_rerank.errors import DiPairError
from dipair_rerank.first_stage import BM25FirstStage, DenseFirstStage, FirstStage, RunFileFirstStage
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.model import DiPairModel
from dipair_rerank.rerank import DiPairReranker, RankedHit

logger = logging.getLogger(__name__)

FIRST_STAGES = ("bm25", "dense", "run")


def open_first_stage(layout: IndexLayout, name: str, candidates: Run | str | Path | None = None) -> FirstStage:
    if candidates is not None:
        return RunFileFirstStage(candidates)
    if name == "bm25":
        return BM25FirstStage(layout.lucene)
    if name == "dense":
        if not layout.has_dense():
            raise DiPairError(f"{layout.root} has no dense index; rebuild it with 'dipair-rerank index --dense'")
        return DenseFirstStage(layout.faiss)
    if name == "run":
        raise DiPairError("first stage 'run' needs --candidates RUNFILE")
    raise DiPairError(f"unknown first stage {name!r} (choose from {', '.join(FIRST_STAGES)})")


class DiPairSearcher:
    """Retrieve ``depth`` candidates with a first stage, re-rank them with DiPair.

    Args:
        reranker: the DiPair re-ranker over the same index.
        first_stage: BM25, dense, or a run file's candidates.
        depth: candidates re-ranked per query; the rest of the first stage's list (up to ``k``) follows them.
    """

    def __init__(self, reranker: DiPairReranker, first_stage: FirstStage, *, depth: int = 100):
        if depth < 1:
            raise DiPairError(f"depth must be at least 1, got {depth}")
        self.reranker = reranker
        self.first_stage = first_stage
        self.depth = depth
        self._short = (0, depth)  # (queries with fewer than depth candidates, fewest seen): logged by batch_search
        if isinstance(first_stage, RunFileFirstStage):  # fail before searching, not halfway through
            docids = sorted({docid for hits in first_stage.run.values() for docid, _ in hits})
            rows = reranker.cache.rows(docids, strict=False)
            if (rows < 0).any():
                missing = [docids[i] for i in (rows < 0).nonzero()[0][:3]]
                raise DiPairError(f"the candidates name {int((rows < 0).sum())} docid(s) not in the index: "
                                  f"{', '.join(missing)}")

    @classmethod
    def from_index(
        cls,
        index_dir: str | Path,
        *,
        first_stage: str = "bm25",
        depth: int = 100,
        model: DiPairModel | str | Path | None = None,
        candidates: Run | str | Path | None = None,
        threads: int | None = None,
        query_backend: str = "auto",
    ) -> "DiPairSearcher":
        """Open ``index_dir`` (e.g. ``indexes/scifact``) with the model recorded in it (or ``model``)."""
        layout = IndexLayout(Path(index_dir))
        reranker = DiPairReranker.from_index(index_dir, model=model, threads=threads, query_backend=query_backend)
        return cls(reranker, open_first_stage(layout, first_stage, candidates), depth=depth)

    @property
    def timer(self) -> StageTimer:
        return self.reranker.timer

    def _search_batch(self, queries: list[str], qids: list[str], k: int, threads: int, depth: int | None = None
                      ) -> list[list[RankedHit]]:
        depth = self.depth if depth is None else depth
        timer = self.reranker.timer
        encoding = self.reranker.encode_queries_beside(queries)  # a batch's is under way while the first stage runs
        dense = isinstance(self.first_stage, DenseFirstStage)  # it searches with the encoded queries
        vectors = encoding.result().pooled.numpy() if dense else None
        with timer.time("first_stage", len(queries)):
            candidates = self.first_stage.retrieve(qids, queries, max(k, depth), query_vectors=vectors, threads=threads)
        encoded = encoding.result()
        short = [len(hits) for hits in candidates if len(hits) < depth]
        self._short = (self._short[0] + len(short), min([self._short[1], *short]))
        heads = [hits[:depth] for hits in candidates]
        reranked = self.reranker.rerank_encoded(encoded, heads)
        results = []
        for top, hits in zip(reranked, candidates):
            tail = [RankedHit(h.docid, h.score) for h in hits[depth:]]
            results.append(_append_tail(top, tail)[:k])
        return results

    def search(self, q: str, k: int = 10, *, qid: str = "q") -> list[RankedHit]:
        """Top ``k`` for one query (``qid`` names it for run-file first stages)."""
        return self._search_batch([q], [qid], k, threads=1)[0]

    def search_many(self, queries: list[str], k: int = 10, *, depth: int | None = None, threads: int = 1
                    ) -> list[list[RankedHit]]:
        """Top ``k`` for each query in one batch (one first-stage, encoder and head call); ``depth`` overrides
        the searcher's for this call (a service's per-request depth). Not for run-file first stages (no qids)."""
        if depth is not None and depth < 1:
            raise DiPairError(f"depth must be at least 1, got {depth}")
        qids = [f"q{i}" for i in range(len(queries))]
        return self._search_batch(list(queries), qids, k, threads, depth)

    def batch_search(
        self, queries: list[str], qids: list[str], k: int = 10, threads: int = 1, *, batch_size: int = 64,
        progress: bool = False,
    ) -> dict[str, list[RankedHit]]:
        """Pyserini's ``batch_search``: qid -> top ``k``. Queries go through the re-ranker ``batch_size`` at a time."""
        if len(queries) != len(qids):
            raise DiPairError(f"{len(queries)} queries but {len(qids)} qids")
        results: dict[str, list[RankedHit]] = {}
        self._short = (0, self.depth)
        with tqdm(total=len(qids), desc="search", unit="query", disable=not progress) as bar:
            for start in range(0, len(qids), batch_size):
                chunk_q, chunk_ids = queries[start : start + batch_size], qids[start : start + batch_size]
                for qid, hits in zip(chunk_ids, self._search_batch(chunk_q, chunk_ids, k, threads)):
                    results[qid] = hits
                bar.update(len(chunk_ids))
        if self._short[0]:  # not an error: re-rank what the first stage found, but say so once
            logger.warning("%d of %d queries had fewer than depth=%d candidates (as few as %d); re-ranked those "
                           "they had", self._short[0], len(qids), self.depth, self._short[1])
        return results


def _append_tail(top: list[RankedHit], tail: list[RankedHit]) -> list[RankedHit]:
    """Keep first-stage hits beyond ``depth`` below every re-ranked hit (scores shifted under the minimum),
    so the run stays sorted by score as TREC tools expect."""
    if not tail or not top:
        return top + tail
    floor = min(hit.score for hit in top)
    shift = floor - max(hit.score for hit in tail) - 1.0
    return top + [RankedHit(hit.docid, hit.score + shift) for hit in tail]


def as_run(results: dict[str, list[Any]]) -> Run:
    return {qid: [(hit.docid, hit.score) for hit in hits] for qid, hits in results.items()}
