"""The lexical channel's encoder: SPLADE term weights (``max over tokens of log(1 + relu(MLM logits))``).

Why SPLADE and not term weights read off our own document tower: an MS MARCO-trained SPLADE-tiny (2 layers, 128
wide) matches expanded terms, the signal the MiniLM towers lack; a document's vector is computed once at index
time and stored as (term id, weight) pairs, ~125 terms per MS MARCO passage (~0.5 KB), and a query's vector is a
two-layer encoding of ~10 tokens. A pair's lexical score is the dot product of the two vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from dipair_rerank.errors import DiPairError

TermWeights = tuple[np.ndarray, np.ndarray]
"""One text's non-zero terms: (term ids, weights)."""


class SpladeEncoder:
    """A BERT MLM checkpoint read as SPLADE (``AutoModelForMaskedLM`` + its tokenizer).

    Args:
        path: model folder or HF id (e.g. the fetched ``splade-tiny``, or a DiPair model's ``lexical/``).
        max_length: tokens read per text.
        tokens_per_batch: batch budget in tokens: MLM logits are [tokens, vocab] floats (~120 MB per 1000 tokens);
            smaller batches keep them nearer the cache (DL19 passages on one thread: 16 ms each at 512 tokens,
            22 ms at 2048).
    """

    def __init__(self, path: str | Path, *, max_length: int = 256, tokens_per_batch: int = 512,
                 device: str = "cpu"):
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForMaskedLM.from_pretrained(path).float().to(device).eval()
        except Exception as exc:  # a bad path or id: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DiPairError(f"cannot load SPLADE model {path!r}: {first}") from exc
        self.path = path
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self.device = device
        self.vocab_size = int(self.model.config.vocab_size)
        predictions = getattr(getattr(self.model, "cls", None), "predictions", None)
        if predictions is None:
            raise DiPairError(f"cannot load SPLADE model {path!r}: it needs a BERT-style MLM head (cls.predictions)")
        self._head_transform = predictions.transform  # dense, activation, layer norm before the vocabulary

    @cached_property
    def identity(self) -> str:
        """Hash of the weights and reading options: names vector caches and enters a DiPair fingerprint."""
        digest = hashlib.sha256(f"{self.max_length}".encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:12]

    def _maxima(self, encoded: Sequence[Sequence[int]]):
        """Yield (positions, vectors [B, vocab]) in batches, longest texts first."""
        import torch

        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        with torch.inference_mode():
            start = 0
            while start < len(order):
                batch = max(1, self.tokens_per_batch // max(1, len(encoded[order[start]])))
                chosen = order[start : start + batch]
                start += batch
                tokens = self.tokenizer.pad({"input_ids": [encoded[i] for i in chosen]},
                                            return_tensors="pt").to(self.device)
                hidden = self.model.base_model(**tokens).last_hidden_state
                real = tokens["attention_mask"].bool()
                logits = self.model.get_output_embeddings()(self._head_transform(hidden[real]))
                lengths = real.sum(1).tolist()
                maxima = torch.stack([part.amax(0) for part in logits.split(lengths)])
                yield chosen, torch.log1p(torch.relu(maxima)).float().cpu().numpy()

    def encode(self, texts: Sequence[str]) -> list[TermWeights]:
        """(int32 term ids, float32 weights) of each text's non-zero SPLADE terms.

        Only real tokens go through the MLM head (the [tokens, vocab] logits are the whole cost), and since
        log(1 + relu(.)) is monotonic the max over tokens is taken on the raw logits first.
        """
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        rows: list[TermWeights] = [None] * len(texts)  # type: ignore[list-item]
        for chosen, vectors in self._maxima(encoded):
            for index, row in zip(chosen, vectors, strict=True):
                nonzero = np.flatnonzero(row)
                rows[index] = (nonzero.astype(np.int32), row[nonzero].astype(np.float32))
        return rows

    def dense(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [len(texts), vocab] float32: the query side, dotted with stored document terms."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = np.zeros((len(texts), self.vocab_size), np.float32)
        for chosen, vectors in self._maxima(encoded):
            out[chosen] = vectors
        return out

    @cached_property
    def vocabulary_projection(self) -> tuple[np.ndarray, np.ndarray]:
        """The MLM head's last step as float32 arrays: weights [vocab, hidden] and bias [vocab]."""
        decoder = self.model.get_output_embeddings()
        bias = decoder.bias if decoder.bias is not None else self.model.cls.predictions.bias
        return (decoder.weight.detach().float().numpy().copy(), bias.detach().float().numpy().copy())

    def query_states(self, texts: Sequence[str]) -> LexicalQueries:
        """The queries' token states before the vocabulary projection (torch and numpy; ``OnnxLexicalQuery`` is
        the fast path), from which ``LexicalQueries`` gives term weights."""
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        with torch.inference_mode():
            states = self._head_transform(self.model.base_model(**batch).last_hidden_state).float().numpy()
        return LexicalQueries(states, batch["attention_mask"].numpy(), numpy_projection(*self.vocabulary_projection))

    def save_pretrained(self, folder: str | Path) -> None:
        """The weights in fp16 (half the bytes; term weights move by ~1e-3) with the tokenizer."""
        self.model.half().save_pretrained(folder)
        self.model.float()
        self.tokenizer.save_pretrained(folder)


Projection = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(states [queries, tokens, hidden], mask [queries, tokens], terms [n]) -> term weights [queries, n]."""


def numpy_projection(weight: np.ndarray, bias: np.ndarray) -> Projection:
    """The vocabulary projection for the asked terms: log(1 + relu(max over real tokens of the logits))."""

    def project(states: np.ndarray, mask: np.ndarray, terms: np.ndarray) -> np.ndarray:
        logits = states @ weight[terms].T + bias[terms]  # [queries, tokens, n]
        logits[~mask] = -np.inf
        return np.log1p(np.maximum(logits.max(1), 0.0)).astype(np.float32)

    return project


class LexicalQueries:
    """Queries' SPLADE weights, computed for the terms asked for only.

    Why: a query's vector needs the vocabulary projection of each of its tokens — [tokens, 30,522] logits, most of
    the query side's cost — yet a dot product with stored documents reads only the terms those documents hold (a
    few thousand for 100 candidates). The weights of exactly those terms are the same numbers at a fraction of the
    arithmetic.

    Args:
        states: the queries' token states before the vocabulary projection [queries, tokens, hidden].
        mask: real tokens [queries, tokens].
        project: the vocabulary projection (``numpy_projection``, or an ONNX Runtime graph on one thread).
    """

    def __init__(self, states: np.ndarray, mask: np.ndarray, project: Projection):
        self.states = states
        self.mask = mask.astype(bool)
        self.project = project

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, keep) -> LexicalQueries:
        """The queries at positions ``keep`` (a list or index array)."""
        keep = np.asarray(keep, dtype=np.int64)
        return LexicalQueries(self.states[keep], self.mask[keep], self.project)

    def weights(self, terms: np.ndarray) -> np.ndarray:
        """Term weights [queries, len(terms)]."""
        return self.project(self.states, self.mask, np.asarray(terms, dtype=np.int64))


def stored_terms(rows: Sequence[TermWeights]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays of ``rows`` as the index stores them: offsets int64 [N + 1], term ids uint16, weights fp16."""
    lengths = np.fromiter((len(terms) for terms, _ in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    terms = np.concatenate([t for t, _ in rows]).astype(np.uint16) if rows else np.zeros(0, np.uint16)
    weights = np.concatenate([w for _, w in rows]).astype(np.float16) if rows else np.zeros(0, np.float16)
    return offsets, terms, weights


def sparse_dots(queries: LexicalQueries, owner: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
                terms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Dot products [k] of queries (``owner`` [k]: each row's query) with k stored rows given by their (start,
    end) ``bounds`` over ``terms``/``weights``: one vectorised gather, no per-document Python loop, and the
    queries' weights computed for the terms these rows hold only."""
    starts, ends = bounds
    if len(queries) > 1:  # each query's weights for its own candidates' terms only, not the batch's union
        out = np.empty(len(starts), np.float32)
        for query in np.unique(owner):
            mine = np.flatnonzero(owner == query)
            out[mine] = sparse_dots(queries[[query]], np.zeros(len(mine), np.int64), (starts[mine], ends[mine]),
                                    terms, weights)
        return out
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(starts), np.float32)
    row_of = np.repeat(np.arange(len(starts)), counts)
    positions = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
    ids = terms[positions].astype(np.int64)
    present = np.zeros(int(ids.max()) + 1, bool)  # term ids are small: a mask beats np.unique's sort
    present[ids] = True
    needed = np.flatnonzero(present)
    column = (np.cumsum(present) - 1)[ids]
    query_weights = queries.weights(needed)
    products = query_weights[owner[row_of], column] * weights[positions].astype(np.float32)
    return np.bincount(row_of, weights=products, minlength=len(starts)).astype(np.float32)


def lexical_dots(queries: LexicalQueries, counts: Sequence[int], terms: Sequence[TermWeights]) -> np.ndarray:
    """Lexical dot products [sum(counts)] of texts' terms with their queries (texts grouped by query, in order)."""
    offsets, ids, weights = stored_terms(terms)
    owner = np.repeat(np.arange(len(counts)), counts)
    return sparse_dots(queries, owner, (offsets[:-1], offsets[1:]), ids, weights)


__all__ = ["LexicalQueries", "SpladeEncoder", "TermWeights", "lexical_dots", "numpy_projection", "sparse_dots",
           "stored_terms"]
