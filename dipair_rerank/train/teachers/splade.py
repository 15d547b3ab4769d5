"""SPLADE scorer for the fusion teacher (the encoder itself, shared with the lexical channel, is
``model/lexical.py``): learned sparse term weights from an MLM head.

A text's vector is ``max over tokens of log(1 + relu(MLM logits))`` (padding masked), one weight per vocabulary
term; a pair's score is the dot product of the query's and the document's vectors. Why it teaches: SPLADE is
trained on MS MARCO and matches (expanded) terms, the signal the MiniLM bi-encoder lacks, so the two fuse well
(0.5 MiniLM + 0.5 SPLADE-tiny gives 0.70 nDCG@10 on DL19, each alone at most 0.675; eval/README.md).

Vectors are cached per text (sha256 of the text) in ``<cache_dir>/splade-<model hash>.npz`` as a CSR matrix, so
each query and document is encoded once and every pair's score is reused across runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run, sort_hits
from dipair_rerank.model.lexical import SpladeEncoder
from dipair_rerank.train.teachers.text_cache import text_hash

logger = logging.getLogger(__name__)


class SparseCache:
    """SPLADE vectors of one model by text hash: ``splade-<hash>.npz`` (keys, CSR indptr/indices/data, vocab)."""

    def __init__(self, cache_dir: Path | None, identity: str, vocab_size: int):
        self.vocab_size = vocab_size
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.path = None if cache_dir is None else Path(cache_dir) / f"splade-{identity}.npz"
        if self.path is not None and self.path.is_file():
            with np.load(self.path) as data:
                indptr, indices, values = data["indptr"], data["indices"], data["data"]
                for i, key in enumerate(data["keys"]):
                    self.rows[str(key)] = (indices[indptr[i] : indptr[i + 1]], values[indptr[i] : indptr[i + 1]])

    def save(self) -> None:
        if self.path is None or not self.rows:
            return
        keys = list(self.rows)
        lengths = np.fromiter((len(self.rows[k][0]) for k in keys), dtype=np.int64, count=len(keys))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), indptr=indptr,
                 indices=np.concatenate([self.rows[k][0] for k in keys]).astype(np.int32),
                 data=np.concatenate([self.rows[k][1] for k in keys]).astype(np.float32))
        tmp.replace(self.path)

    def matrix(self, keys: Sequence[str]):
        """CSR matrix [len(keys), vocab] of the cached vectors."""
        from scipy.sparse import csr_matrix

        lengths = [len(self.rows[k][0]) for k in keys]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([self.rows[k][0] for k in keys]) if keys else np.zeros(0, np.int32)
        data = np.concatenate([self.rows[k][1] for k in keys]) if keys else np.zeros(0, np.float32)
        return csr_matrix((data, indices, indptr), shape=(len(keys), self.vocab_size))


def splade_vectors(encoder: SpladeEncoder, texts: Sequence[str], *, cache_dir: Path | None,
                   chunk: int = 1024, progress: bool = True):
    """CSR matrix of the SPLADE vectors of ``texts``, encoding only those not cached (longest first)."""
    cache = SparseCache(cache_dir, encoder.identity, encoder.vocab_size)
    keys = [text_hash(t) for t in texts]
    text_of = dict(zip(keys, texts))
    todo = sorted(dict.fromkeys(k for k in keys if k not in cache.rows), key=lambda k: -len(text_of[k]))
    with tqdm(total=len(todo), desc="splade", unit="text", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            for key, row in zip(part, encoder.encode([text_of[k] for k in part]), strict=True):
                cache.rows[key] = row
            cache.save()
            bar.update(len(part))
    return cache.matrix(keys)


def splade_scores(
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    *,
    model: str,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Run:
    """SPLADE dot product for every candidate pair, best first per query."""
    encoder = SpladeEncoder(model, device=device)
    qids = [q for q in candidates if q in topics]
    docids = list(dict.fromkeys(d for q in qids for d, _ in candidates[q]))
    queries = splade_vectors(encoder, [topics[q] for q in qids], cache_dir=cache_dir, progress=progress)
    docs = splade_vectors(encoder, [doc_text[d] for d in docids], cache_dir=cache_dir, progress=progress)
    row = {d: i for i, d in enumerate(docids)}
    run: Run = {}
    for qi, qid in enumerate(qids):
        rows = [row[d] for d, _ in candidates[qid]]
        scores = np.asarray((docs[rows] @ queries[qi].T).todense()).ravel()
        run[qid] = sort_hits(zip((d for d, _ in candidates[qid]), scores.astype(float).tolist()))
    return run


__all__ = ["SparseCache", "SpladeEncoder", "splade_scores", "splade_vectors"]
