"""Batch encoding of documents through the DiPair document branch: at index time, and for plain texts that are
in no index (``texts.py``), so both produce the same rows.

Texts are tokenized once, sorted by length and batched, so padding is minimal; results come back in input
order. The same forward pass yields the mean-pooled vectors used for the optional dense index; a model with a
lexical channel also gives each text's SPLADE terms.

The model is an argument and ``dipair_rerank.model`` is imported for annotations only: ``DiPairModel.rank`` runs
this code (through ``texts.py``), so the model package depends on this module, not the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from dipair_rerank.model import DiPairModel
    from dipair_rerank.model.lexical import TermWeights


class EncodedDocuments(NamedTuple):
    vectors: np.ndarray  # [N, slots, d_p] float16: the cache rows
    lengths: np.ndarray  # [N] uint16: kept prefix tokens that are real (not padding)
    pooled: np.ndarray  # [N, hidden] float32, L2-normalised: the bi-encoder embedding
    truncated: int = 0  # texts longer than doc_max_length tokens (cut there; 0 when the tokenizer cannot tell)
    lexical: list[TermWeights] | None = None  # the lexical channel's (term ids, weights), for models that have it


def encode_documents(
    model: DiPairModel, texts: Sequence[str], *, batch_size: int = 32, progress=None
) -> EncodedDocuments:
    """Run the document branch over ``texts``; ``progress`` (a tqdm) is advanced per document."""
    config = model.config
    tokenized = model.tokenizer(list(texts), truncation=True, max_length=config.doc_max_length)
    input_ids = tokenized["input_ids"]
    encodings = getattr(tokenized, "encodings", None) or []  # fast tokenizers keep what truncation cut off
    truncated = sum(1 for encoding in encodings if encoding.overflowing)
    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    count = len(texts)
    vectors = np.empty((count, model.doc_block_slots, config.proj_dim), dtype=np.float16)
    lengths = np.empty(count, dtype=np.uint16)
    pooled = np.empty((count, model.hidden_size), dtype=np.float32)
    lexical: list[TermWeights] | None = [None] * count if model.lexical is not None else None  # type: ignore[list-item]
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            rows = order[start : start + batch_size]
            batch = model.tokenizer.pad(
                {"input_ids": [input_ids[i] for i in rows], "attention_mask": [[1] * len(input_ids[i]) for i in rows]},
                return_tensors="pt",
            )
            prefix = model.encode_documents(batch)
            vectors[rows] = prefix.vectors.to(torch.float16).numpy()
            lengths[rows] = prefix.mask[:, : config.doc_prefix].sum(1).numpy()
            pooled[rows] = prefix.pooled.numpy()
            if lexical is not None:  # in the same batches, so the progress bar counts both
                for row, terms in zip(rows, model.lexical.encode([texts[i] for i in rows]), strict=True):
                    lexical[row] = terms
            if progress is not None:
                progress.update(len(rows))
    return EncodedDocuments(vectors, lengths, pooled, truncated, lexical)
