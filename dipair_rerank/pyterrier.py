"""PyTerrier: DiPair as a re-ranking ``pt.Transformer``, composed with ``>>`` after any first stage.

    import pyterrier as pt
    from dipair_rerank.pyterrier import DiPairReRanker
    pipeline = (bm25 % 100) >> DiPairReRanker("indexes/dl19")
    pt.Experiment([bm25, pipeline], topics, qrels, [pt.measures.nDCG @ 10, "mrt"])

Needs ``pip install 'dipair-rerank[pyterrier]'``. Importing PyTerrier 1.x neither starts Java nor downloads
anything, and nothing here uses Terrier itself: the candidates come from the frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # an optional backend: say how to get it
    raise ImportError("dipair_rerank.pyterrier needs PyTerrier: pip install 'dipair-rerank[pyterrier]'") from exc

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.rerank import DiPairReranker

logger = logging.getLogger(__name__)


class FrameError(DiPairError, pt.validate.InputValidationError):
    """A frame without the columns this transformer needs: one line for people, and PyTerrier's own validation
    error for ``pt.inspect``/``pt.Experiment``, which learn a transformer's inputs by catching it."""

    def __str__(self) -> str:
        return self.args[0]


class DiPairReRanker(pt.Transformer):
    """Re-score and re-rank a PyTerrier result frame (``qid, query, docno[, score, rank, text]``) with DiPair.

    All of a frame's queries go through one query-encoder call and one head call, as ``rerank_batch`` does;
    ``pt.Experiment(..., batch_size=B)`` bounds a frame's size when memory matters. The output keeps every
    input column, replaces ``score`` and ``rank``, and is sorted by query (in input order), then rank; equal
    scores are ordered by docno, as DiPairReranker and Pyserini order them.

    Args:
        index: an index folder (opened with the model recorded in it) or an open DiPairReranker.
        allow_text: docnos that are not in the index's prefix cache are encoded on the fly from the frame's
            ``text`` column; without it they are an error (the cache is what makes re-ranking cheap).
        model / threads / query_backend: as for ``DiPairReranker.from_index`` when ``index`` is a folder.
    """

    def __init__(self, index: str | Path | DiPairReranker, *, allow_text: bool = False,
                 model: DiPairModel | str | Path | None = None, threads: int | None = None,
                 query_backend: str = "auto"):
        if isinstance(index, DiPairReranker):
            self.reranker = index
            self.index_dir = index.cache.folder.parent  # the cache lives in <index>/dipair
        else:
            self.index_dir = Path(index)
            self.reranker = DiPairReranker.from_index(index, model=model, threads=threads,
                                                      query_backend=query_backend)
        self.allow_text = allow_text

    def __repr__(self) -> str:
        return f"DiPairReRanker({str(self.index_dir)!r}, allow_text={self.allow_text})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """``inp`` re-scored (``score``) and re-ranked (``rank``, from ``pt.model.FIRST_RANK``) per query."""
        self._check_columns(inp, ["query"])
        frame = inp.drop(columns=["score", "rank"], errors="ignore").reset_index(drop=True)
        if frame.empty:
            return pt.model.add_ranks(frame.assign(score=pd.Series(dtype="float64")))
        query_of_row = pd.factorize(frame["qid"])[0]
        order = np.argsort(query_of_row, kind="stable")  # rows grouped by query, each query's rows in input order
        counts = np.bincount(query_of_row)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        queries = frame["query"].to_numpy()[order[bounds[:-1]]].astype(str).tolist()
        docnos = frame["docno"].to_numpy().astype(str)
        scores = self._score(frame, docnos, queries, [order[start:end] for start, end in zip(bounds, bounds[1:])])
        frame["score"] = scores
        # best first within each query, ties by docno; add_ranks then numbers the rows in this order
        return pt.model.add_ranks(frame.iloc[np.lexsort((docnos, -scores, query_of_row))].reset_index(drop=True))

    def _check_columns(self, inp: pd.DataFrame, extra: list[str]) -> None:
        """PyTerrier's own result-frame check, its error reworded as one line that names the missing columns."""
        try:
            pt.validate.result_frame(inp, extra_columns=extra)
        except pt.validate.InputValidationError as exc:
            needed = ["qid", "docno", *extra]
            raise FrameError(f"{self!r} needs a result frame with columns {', '.join(needed)}; this one lacks "
                             f"{', '.join(c for c in needed if c not in inp.columns)} (it has: "
                             f"{', '.join(map(str, inp.columns)) or 'no columns'})", exc.modes) from None

    def _score(self, frame: pd.DataFrame, docnos: np.ndarray, queries: list[str], rows_per_query: list[np.ndarray]
               ) -> np.ndarray:
        """Scores of ``frame``'s rows: cached docnos through one gather and one head call for all queries; with
        ``allow_text``, uncached ones from their text through the document branch and a second head call."""
        reranker = self.reranker
        cached = reranker.cache.rows(docnos.tolist(), strict=False) >= 0
        if not cached.all():
            self._check_uncached(frame, docnos[~cached], ~cached)
        scores = np.empty(len(frame), dtype="float64")
        if cached.any():
            spans = [rows[cached[rows]] for rows in rows_per_query]
            encoded = reranker.encode_queries(queries)
            first_stage = None  # the frame's scores feed a model's first-stage channel
            if "score" in frame.columns:
                first_stage = [frame["score"].to_numpy(dtype="float64")[span] for span in spans]
            for span, row in zip(spans, reranker.score_encoded(encoded, [docnos[span].tolist() for span in spans],
                                                               first_stage)):
                scores[span] = row
        if not cached.all():
            texts = frame["text"].to_numpy()
            spans = [rows[~cached[rows]] for rows in rows_per_query]
            with_text = [i for i, span in enumerate(spans) if len(span)]
            for i, row in zip(with_text, reranker.score_texts([queries[i] for i in with_text],
                                                              [texts[spans[i]].tolist() for i in with_text])):
                scores[spans[i]] = row
        return scores

    def _check_uncached(self, frame: pd.DataFrame, missing: np.ndarray, uncached: np.ndarray) -> None:
        """Docnos outside the cache are an error unless ``allow_text`` and each has a text (checked before any
        scoring, so a bad frame costs nothing)."""
        if not self.allow_text:
            names = list(dict.fromkeys(missing.tolist()))
            raise DiPairError(f"{len(names)} docno(s) not in the index at {self.index_dir}: {', '.join(names[:3])} "
                              f"(DiPairReRanker(..., allow_text=True) scores them from the frame's 'text' column)")
        self._check_columns(frame, ["query", "text"])
        absent = [d for d, t in zip(missing, frame["text"].to_numpy()[uncached]) if not isinstance(t, str)]
        if absent:
            raise DiPairError(f"{len(absent)} docno(s) neither in the index nor with a text: {', '.join(absent[:3])}")
        logger.debug("%d docno(s) not in the index: encoding them from their text", len(missing))
